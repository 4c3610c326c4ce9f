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
