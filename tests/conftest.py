"""Shared fixtures live in tests/plugins/, one module per real part (models, broker, audio device)."""
import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"

pytest_plugins = [
    "tests.plugins.models",
    "tests.plugins.broker",
    "tests.plugins.sound",
]


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared material is missing at {SHARED}")
    return SHARED


@pytest.fixture
def program(tmp_path) -> pathlib.Path:
    """An executable standing in for the installed humwatch program (only its path ends up in a unit)."""
    path = tmp_path / "opt" / "bin" / "humwatch"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path
