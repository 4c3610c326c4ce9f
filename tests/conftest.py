"""Shared fixtures live in tests/plugins/, one module per real part (models, broker, audio device).

Tests are layered by folder: tests/unit (no broker, no ALSA, no TensorFlow; `scripts/test --fast`) and
tests/integration. Each test gets the marker of its folder, so `-m unit` and `-m integration` select the same sets.
"""
import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
LAYERS = ("unit", "integration")

pytest_plugins = [
    "tests.plugins.models",
    "tests.plugins.broker",
    "tests.plugins.sound",
    "tests.plugins.package",
    "tests.plugins.recordings",
    "tests.plugins.datasets",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = next((part for part in pathlib.Path(item.fspath).parts if part in LAYERS), None)
        if layer is None:
            raise pytest.UsageError(f"{item.nodeid}: every test lives in tests/unit or tests/integration")
        item.add_marker(getattr(pytest.mark, layer))


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
