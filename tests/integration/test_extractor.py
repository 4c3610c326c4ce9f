"""The board-side feature extractor on real converted models, under both TFLite runtimes."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from humwatch.agent import contract
from humwatch.agent.durable import file_sha256
from humwatch.agent.errors import ModelError
from humwatch.agent.model.extractor import Extractor, sidecar_path
from humwatch.agent.model.runtime import load_interpreter, runtime_name
from humwatch.agent.signal.audio import read_wav
from humwatch.agent.signal.frontend import clip_patches
from humwatch.convert.verify import row_cosines

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def images(shared_dir):
    return clip_patches(read_wav(shared_dir / "audio" / "dcase2020-id00" / "test" / "anomaly_id_00_00000000.wav")).images


def copy_model(model, directory: pathlib.Path) -> pathlib.Path:
    target = directory / model.name
    shutil.copy(model, target)
    shutil.copy(sidecar_path(model), sidecar_path(target))
    return target


@pytest.mark.parametrize("precision", ["int8", "float32"])
def test_embed_gives_one_feature_row_per_image_whatever_the_batch(precision, squeezenet_int8, squeezenet_float,
                                                                  images):
    model = squeezenet_int8 if precision == "int8" else squeezenet_float
    extractor = Extractor(model)
    assert extractor.feature_dim == 2048
    assert extractor.sha256 == file_sha256(model)
    assert extractor.info["precision"] == precision
    whole = extractor.embed(images)
    assert whole.dtype == np.float32 and whole.shape == (len(images), 2048)
    assert np.isfinite(whole).all() and whole.std() > 0
    one_by_one = np.concatenate([extractor.embed(images[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(one_by_one, whole[:3], rtol=1e-5, atol=1e-5 * np.abs(whole).max())
    assert extractor.embed(images[:0]).shape == (0, 2048)
    assert not np.allclose(whole[0], whole[-1])  # different patches, different features


def test_embed_refuses_images_that_are_not_uint8_patches(squeezenet_int8, images):
    extractor = Extractor(squeezenet_int8)
    with pytest.raises(ValueError, match=r"images must be uint8 \(n, 64, 64, 3\), got float32"):
        extractor.embed(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"got uint8 \(64, 64, 3\)"):
        extractor.embed(images[0])


def test_model_without_sidecar_is_refused(squeezenet_int8, tmp_path):
    model = copy_model(squeezenet_int8, tmp_path)
    sidecar_path(model).unlink()
    with pytest.raises(ModelError, match=r"squeezenet1_1-int8.tflite.json: sidecar missing"):
        Extractor(model)


@pytest.mark.parametrize("field, value", [("n_mels", 128), ("hop_length", 512), ("version", contract.FRONTEND_VERSION + 1)])
def test_model_made_for_another_front_end_is_refused(field, value, squeezenet_int8, tmp_path):
    model = copy_model(squeezenet_int8, tmp_path)
    info = json.loads(sidecar_path(model).read_text())
    info["frontend"][field] = value
    sidecar_path(model).write_text(json.dumps(info))
    with pytest.raises(ModelError, match=rf"tflite.json: front-end parameters do not match .*{field}={value}"):
        Extractor(model)


def test_damaged_model_is_refused_naming_the_file(squeezenet_int8, tmp_path):
    model = copy_model(squeezenet_int8, tmp_path)
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(ModelError, match=rf"^{model}: not a usable TFLite model"):
        Extractor(model)
    with pytest.raises(ModelError, match=r"missing.tflite: model file not found"):
        load_interpreter(tmp_path / "missing.tflite")


def test_no_runtime_installed_is_one_clear_error(squeezenet_int8, monkeypatch):
    assert runtime_name() == "ai_edge_litert"  # the documented first choice, installed here
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(ModelError, match=r"^no TFLite runtime installed: pip install ai-edge-litert"):
        load_interpreter(squeezenet_int8)


# --- tflite_runtime, in its own environment with numpy < 2 -----------------------------------------------------

EMBED_SCRIPT = """
import sys, numpy as np
from humwatch.agent.model.extractor import Extractor
from humwatch.agent.model.runtime import runtime_name
images = np.load(sys.argv[1])
for i, model in enumerate(sys.argv[3:]):
    np.save(f"{sys.argv[2]}/{i}.npy", Extractor(model, num_threads=2).embed(images))
print(runtime_name(), np.__version__)
"""


@pytest.fixture(scope="module")
def tflite_runtime_python(tmp_path_factory) -> pathlib.Path:
    """A virtual environment with only tflite-runtime and numpy < 2, as an older board has."""
    venv = tmp_path_factory.mktemp("tflite-runtime-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "tflite-runtime", "numpy<2"],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    return python


def test_tflite_runtime_with_numpy_1_gives_the_same_features(tflite_runtime_python, installed_package, squeezenet_int8,
                                                             squeezenet_float, images, tmp_path):
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "PYTHONPATH": str(installed_package)}
    done = subprocess.run([str(tflite_runtime_python), "-c", EMBED_SCRIPT, str(tmp_path / "images.npy"),
                           str(tmp_path), str(squeezenet_int8), str(squeezenet_float)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    name, numpy_version = done.stdout.split()[-2:]
    assert name == "tflite_runtime" and numpy_version.startswith("1.")
    int8, float32 = np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy")
    assert int8.shape == float32.shape == (len(images), 2048)
    assert row_cosines(float32, Extractor(squeezenet_float).embed(images)).min() >= 0.9999
    # int8 kernels may round a step differently across runtime versions; the features stay int8-faithful.
    assert row_cosines(int8, Extractor(squeezenet_int8).embed(images)).min() >= 0.99
    assert np.median(row_cosines(int8, float32)) >= 0.98



def test_litert_delegate_banner_is_silenced(squeezenet_int8):
    """LiteRT prints `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.` straight to fd 2 from C++ (whatever
    TF_CPP_MIN_LOG_LEVEL says); loading a model through humwatch prints nothing."""
    script = "import sys; from humwatch.agent.model.extractor import Extractor; Extractor(sys.argv[1]); print('ok')"
    done = subprocess.run([sys.executable, "-c", script, str(squeezenet_int8)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout == "ok\n" and done.stderr == "", done.stderr
    bare = "import sys; from ai_edge_litert.interpreter import Interpreter; Interpreter(sys.argv[1]).allocate_tensors()"
    done = subprocess.run([sys.executable, "-c", bare, str(squeezenet_int8)], capture_output=True, text=True,
                          timeout=120)
    assert "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in done.stderr  # what is being silenced
