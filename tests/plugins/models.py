"""Real converted feature extractors for tests: SqueezeNet 1.1 from the shared ImageNet weights, converted once.

The conversion runs through the `humwatch convert` command itself (float32 and int8, quantised on the shared
DCASE training clips), into one temporary folder per test run; every test reuses the two files.
"""
from __future__ import annotations

import importlib.util
import pathlib
import platform

import pytest

FIXTURE_PATCHES = 100  # 80 calibrate the int8 model, 20 check it; enough for a stable range, and fast


@pytest.fixture(scope="session")
def calibration_audio(shared_dir) -> pathlib.Path:
    """The clips the test models are quantised on; every other shared clip is held out from quantisation."""
    return shared_dir / "audio" / "dcase2020-id00" / "train"


@pytest.fixture(scope="session")
def converted_squeezenet(tmp_path_factory, shared_dir, calibration_audio) -> dict[str, pathlib.Path]:
    from humwatch.cli import main

    if importlib.util.find_spec("tensorflow") is None:  # a board install (no TensorFlow wheel for this machine)
        pytest.skip(f"converting models needs TensorFlow, not installed on this {platform.machine()} machine: "
                    "a workstation part")

    out = tmp_path_factory.mktemp("models")
    code = main(["convert", "--arch", "squeezenet1_1", "--weights",
                 str(shared_dir / "weights" / "squeezenet1_1-imagenet.npz"), "--audio", str(calibration_audio),
                 "--patches", str(FIXTURE_PATCHES), "--out", str(out)])
    assert code == 0, "humwatch convert failed; see the log above"
    return {p: out / f"squeezenet1_1-{p}.tflite" for p in ("float32", "int8")}


@pytest.fixture(scope="session")
def squeezenet_int8(converted_squeezenet) -> pathlib.Path:
    return converted_squeezenet["int8"]


@pytest.fixture(scope="session")
def squeezenet_float(converted_squeezenet) -> pathlib.Path:
    return converted_squeezenet["float32"]
