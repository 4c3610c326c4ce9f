"""The systemd unit as `humwatch install-service` writes it: systemd accepts it, and its sandbox scores well."""
from __future__ import annotations

import pathlib
import platform
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from agent.install import BACKOFF_KEYS, UNIT_NAME, packaged, render_unit, systemd_version

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_EXPOSURE = 3.0

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed (Debian package systemd)")


@pytest.fixture
def unit_file(tmp_path, program) -> pathlib.Path:
    """The template rendered for this machine's systemd, as instance pump1, with a real program path."""
    path = tmp_path / "humwatch@pump1.service"
    path.write_text(render_unit(packaged(UNIT_NAME), program, systemd_version()))
    return path


@needs_systemd_analyze
def test_unit_verifies_without_a_warning(unit_file):
    done = subprocess.run(["systemd-analyze", "verify", str(unit_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""  # an unknown or misspelt key is only a warning: refuse those too


@needs_systemd_analyze
def test_security_exposure_is_at_most_three(unit_file):
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_file)],
                          capture_output=True, text=True)
    if "offline" in done.stderr and done.returncode != 0:
        pytest.skip(f"this systemd-analyze cannot score a unit file offline (needs systemd >= 252): "
                    f"{done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    exposure = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout).group(1))
    assert exposure <= MAX_EXPOSURE, done.stdout


def test_restart_backoff_is_enabled_only_where_systemd_has_it(tmp_path):
    program = pathlib.Path("/opt/humwatch/bin/humwatch")
    old = render_unit(packaged(UNIT_NAME), program, 252)
    new = render_unit(packaged(UNIT_NAME), program, 254)
    unknown = render_unit(packaged(UNIT_NAME), program, None)
    for key in BACKOFF_KEYS:
        assert re.search(rf"^{key}=\S+$", new, re.M)
        assert not re.search(rf"^{key}=", old, re.M) and not re.search(rf"^{key}=", unknown, re.M)
    assert old == unknown


def test_the_unit_in_systemd_dir_is_the_one_installed():
    assert (REPO / "systemd" / UNIT_NAME).read_text() == packaged(UNIT_NAME)



# MemoryDenyWriteExecute=yes is systemd's seccomp filter: mmap() asking for PROT_WRITE|PROT_EXEC and any mprotect()
# or pkey_mprotect() asking for PROT_EXEC fail with EPERM. The child installs that same filter (after no_new_privs,
# as NoNewPrivileges=yes does), loads what the agent loads and runs both converted models on real sound.
MDWE_CHILD = r"""
import ctypes, mmap, platform, struct, sys

MMAP, MPROTECT, PKEY_MPROTECT = {"x86_64": (9, 10, 329), "aarch64": (222, 226, 288)}[platform.machine()]
LD, JEQ, AND, RET = 0x20, 0x15, 0x54, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_ALU|AND|K, BPF_RET|K
ALLOW, DENY = 0x7FFF0000, 0x00050000 | 1    # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
NR, PROT = 0, 32                            # offsets of seccomp_data.nr and of args[2] (its low 32 bits)
W, X = 0x2, 0x4
program = [                                 # (code, jump if true, jump if false, k); jumps skip that many
    (LD, 0, 0, NR),                         # 0
    (JEQ, 3, 0, MMAP),                      # 1 -> 5
    (JEQ, 5, 0, MPROTECT),                  # 2 -> 8
    (JEQ, 4, 0, PKEY_MPROTECT),             # 3 -> 8
    (RET, 0, 0, ALLOW),                     # 4
    (LD, 0, 0, PROT), (AND, 0, 0, W | X),   # 5, 6
    (JEQ, 3, 4, W | X),                     # 7 -> 11 deny, 12 allow
    (LD, 0, 0, PROT), (AND, 0, 0, X),       # 8, 9
    (JEQ, 0, 1, X),                         # 10 -> 11 deny, 12 allow
    (RET, 0, 0, DENY),                      # 11
    (RET, 0, 0, ALLOW),                     # 12
]
code = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
buffer = ctypes.create_string_buffer(code)
fprog = struct.pack("HxxxxxxP", len(program), ctypes.addressof(buffer))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                              # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, FILTER
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("the filter let a writable and executable mapping through")
except PermissionError:
    pass

import numpy as np
import scipy.signal
import paho.mqtt.client
from agent.audio import read_wav
from agent.extractor import Extractor
from agent.frontend import clip_patches
try:
    import pyaudio  # PortAudio, and the ALSA plugins it opens
    pyaudio.PyAudio().terminate()
except ImportError:
    pass
wav, out, *models = sys.argv[1:]
images = clip_patches(read_wav(wav)).images
np.savez(out, *[Extractor(model, num_threads=2).embed(images) for model in models])
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="syscall numbers known for x86_64 and "
                    "aarch64 only")
def test_agent_runs_under_memory_deny_write_execute(tmp_path, shared_dir, squeezenet_int8, squeezenet_float):
    from agent.audio import read_wav
    from agent.extractor import Extractor
    from agent.frontend import clip_patches

    wav = sorted((shared_dir / "audio" / "dcase2020-id00" / "test").glob("*.wav"))[0]
    out = tmp_path / "features.npz"
    done = subprocess.run([sys.executable, "-c", MDWE_CHILD, str(wav), str(out), str(squeezenet_int8),
                           str(squeezenet_float)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    images = clip_patches(read_wav(wav)).images
    with np.load(out) as confined:
        for index, model in enumerate((squeezenet_int8, squeezenet_float)):
            np.testing.assert_allclose(confined[f"arr_{index}"], Extractor(model, num_threads=2).embed(images),
                                       rtol=1e-5, atol=1e-5)
