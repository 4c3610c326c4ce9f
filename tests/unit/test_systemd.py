

"""The systemd unit as `humwatch install-service` writes it: systemd accepts it, and its sandbox scores well."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

from humwatch.agent.service.install import BACKOFF_KEYS, UNIT_NAME, packaged, render_unit, systemd_version

REPO = pathlib.Path(__file__).resolve().parents[2]


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
