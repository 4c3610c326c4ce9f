"""The project installed as a user gets it (`pip install .`, not editable), once per test run."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def installed_package() -> pathlib.Path:
    """A site-packages folder holding only the installed project (no dependencies), readable by every user."""
    target = pathlib.Path(tempfile.mkdtemp(prefix="humwatch-installed-"))
    target.chmod(0o755)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(ROOT)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"pip install . failed:\n{done.stdout}{done.stderr}")
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield target
    shutil.rmtree(target, ignore_errors=True)
