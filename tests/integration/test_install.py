"""`install-service` run for real by an unprivileged user."""
import os
import shutil
import subprocess
import sys

import pytest


def test_live_install_without_root_is_refused(program, installed_package):
    """Runs the real command as an unprivileged user; as root, that user is nobody through setpriv."""
    argv = ["-m", "humwatch", "install-service", "--executable", str(program)]
    if os.geteuid() == 0:
        # The system Python: a virtualenv's interpreter may sit under /root, which nobody cannot enter.
        if not (shutil.which("setpriv") and os.access("/usr/bin/python3", os.X_OK)):
            pytest.skip("dropping to user nobody needs setpriv (util-linux) and /usr/bin/python3")
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3"]
        command = ["env", f"PYTHONPATH={installed_package}", *as_nobody, *argv]
    else:
        command = [sys.executable, *argv]
    done = subprocess.run(command, cwd=installed_package, capture_output=True, text=True)
    assert done.returncode == 2
    assert "needs root: run it with sudo" in done.stderr
    assert done.stdout == ""  # refused before any step
