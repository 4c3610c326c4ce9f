"""The board runs `agent/` alone: importing every agent module loads no workstation library, and the board
install (pyproject's plain dependencies) names none."""
import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKSTATION = ("sklearn", "tensorflow", "keras", "torch", "matplotlib", "librosa")


def test_every_agent_module_imports_without_workstation_libraries():
    modules = sorted(f"agent.{p.stem}" for p in (ROOT / "agent").glob("*.py") if p.stem != "__init__")
    code = (f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({WORKSTATION!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]", done.stdout
    assert len(modules) > 20


def test_the_board_install_pulls_no_workstation_library():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    board = " ".join(project["dependencies"]).lower()
    assert not any(name in board for name in ("scikit-learn", "tensorflow", "torch", "matplotlib", "librosa"))
    assert "scikit-learn" in " ".join(project["optional-dependencies"]["calibrate"])
    assert any(d.startswith("tensorflow") for d in project["optional-dependencies"]["convert"])
