

"""The systemd unit as `humwatch install-service` writes it: systemd accepts it, and its sandbox scores well."""

from __future__ import annotations

import pathlib
import platform
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


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
from agent.signal.audio import read_wav
from agent.model.extractor import Extractor
from agent.signal.frontend import clip_patches
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
    from humwatch.agent.model.extractor import Extractor
    from humwatch.agent.signal.audio import read_wav
    from humwatch.agent.signal.frontend import clip_patches

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
