"""The board install (pyproject's plain dependencies) names no workstation library; the extras do."""
import pathlib

import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_board_install_pulls_no_workstation_library():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    board = " ".join(project["dependencies"]).lower()
    assert not any(name in board for name in ("scikit-learn", "tensorflow", "torch", "matplotlib", "librosa"))
    assert "scikit-learn" in " ".join(project["optional-dependencies"]["calibrate"])
    assert any(d.startswith("tensorflow") for d in project["optional-dependencies"]["convert"])
