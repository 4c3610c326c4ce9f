"""What `pip install .` puts on a machine: one `humwatch` package whose imports obey the layer contract."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_only_humwatch_is_installed(installed_package):
    packages = {p.name for p in installed_package.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin"}
    assert packages == {"humwatch"}
    code = "import humwatch, humwatch.agent.service.run; print(humwatch.__version__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=installed_package, capture_output=True, text=True,
                          env={"PYTHONPATH": str(installed_package)})
    assert done.returncode == 0, done.stderr


def test_imports_obey_the_layer_contract(installed_package):
    """pyproject's [tool.importlinter] contracts: convert and evaluation over calibration over the agent; inside the
    agent, service over transport over model over signal; no workstation library on the board."""
    done = subprocess.run([str(pathlib.Path(sys.executable).parent / "lint-imports"), "--no-cache",
                           str(ROOT / "pyproject.toml")], cwd=installed_package, capture_output=True, text=True,
                          env={"PYTHONPATH": str(installed_package), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_board_code_type_checks(installed_package):
    """mypy on humwatch.agent as installed, with pyproject's [tool.mypy] settings (its overrides name the modules
    still left out)."""
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--python-executable", sys.executable, "--cache-dir", "/dev/null"],
                          cwd=installed_package, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
