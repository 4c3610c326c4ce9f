"""humwatch convert: exact torchvision architectures, real ImageNet logits, int8 fidelity, weights handling.

The reference forward pass below is plain numpy in float64, NCHW, with torch's semantics written out (unfolded
batch norm, max-pools padded with -inf, ceil mode, adaptive average pooling, bilinear resize with half-pixel
centres); test_numpy_reference_ops_match_torch ties those ops to torch itself when torch is installed.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from humwatch.agent import contract
from humwatch.agent.durable import file_sha256
from humwatch.agent.errors import ModelError
from humwatch.agent.model.extractor import Extractor
from humwatch.agent.model.runtime import load_interpreter
from humwatch.agent.signal.audio import read_wav
from humwatch.agent.signal.frontend import clip_patches
from humwatch.convert import backbones, representative, tflite, weights
from humwatch.convert.verify import row_cosines

REFERENCE_CASES = (0, 1, 2)
CHINA_CLASSES = {"stupa", "monastery", "church", "bell cote"}


# --- the independent numpy reference ---------------------------------------------------------------------------

def np_conv(x, w, b=None, stride=1, pad=0):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    cols = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    out = np.tensordot(cols, w.astype(np.float64), axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    return out if b is None else out + b[None, :, None, None]


def np_batch_norm(x, sd, key):
    scale = sd[f"{key}.weight"] / np.sqrt(sd[f"{key}.running_var"].astype(np.float64) + 1e-5)
    return (x - sd[f"{key}.running_mean"][None, :, None, None]) * scale[None, :, None, None] \
        + sd[f"{key}.bias"][None, :, None, None]


def np_max_pool(x, k=3, s=2, pad=0, ceil=False):
    size = x.shape[2]
    out = (size + 2 * pad - k + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + pad:
        out -= 1
    extra = max((out - 1) * s + k - size - 2 * pad, 0)
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad + extra), (pad, pad + extra)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return windows.max(axis=(4, 5))


def np_adaptive_avg_pool(x, out):
    size = x.shape[2]
    bins = [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]
    return np.stack([np.stack([x[:, :, r0:r1, c0:c1].mean(axis=(2, 3)) for c0, c1 in bins], -1)
                     for r0, r1 in bins], -2)


def np_resize_bilinear(x, size):
    """torch F.interpolate(mode="bilinear", align_corners=False) of NCHW `x`."""
    def axis_weights(n_in):
        src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0
    r0, r1, rl = axis_weights(x.shape[2])
    c0, c1, cl = axis_weights(x.shape[3])
    rows = x[:, :, r0] * (1 - rl)[:, None] + x[:, :, r1] * rl[:, None]
    return rows[..., c0] * (1 - cl) + rows[..., c1] * cl


def np_preprocess(images):
    x = np_resize_bilinear(images.astype(np.float64).transpose(0, 3, 1, 2), contract.MODEL_IMAGE_SIZE) / 255.0
    mean = np.asarray(contract.IMAGENET_MEAN)[None, :, None, None]
    return (x - mean) / np.asarray(contract.IMAGENET_STD)[None, :, None, None]


def np_resnet_features(images, sd, blocks):
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    x = relu(np_batch_norm(np_conv(np_preprocess(images), sd["conv1.weight"], stride=2, pad=3), sd, "bn1"))
    x = np_max_pool(x, pad=1)
    for stage, n in enumerate(blocks, start=1):
        for block in range(n):
            key, stride = f"layer{stage}.{block}", (2 if stage > 1 and block == 0 else 1)
            y = relu(np_batch_norm(np_conv(x, sd[f"{key}.conv1.weight"], stride=stride, pad=1), sd, f"{key}.bn1"))
            y = np_batch_norm(np_conv(y, sd[f"{key}.conv2.weight"], pad=1), sd, f"{key}.bn2")
            if f"{key}.downsample.0.weight" in sd:
                x = np_batch_norm(np_conv(x, sd[f"{key}.downsample.0.weight"], stride=stride), sd,
                                  f"{key}.downsample.1")
            x = relu(y + x)
    return x.mean(axis=(2, 3))


def np_squeezenet_features(images, sd, version):
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    conv = lambda t, key, pad=0: relu(np_conv(t, sd[f"{key}.weight"], sd[f"{key}.bias"], pad=pad))  # noqa: E731
    x = relu(np_conv(np_preprocess(images), sd["features.0.weight"], sd["features.0.bias"], stride=2))
    pools = (2, 6, 11) if version == "1_0" else (2, 5, 8)
    for index in range(2, 13):
        if index in pools:
            x = np_max_pool(x, ceil=True)
        else:
            s = conv(x, f"features.{index}.squeeze")
            x = np.concatenate([conv(s, f"features.{index}.expand1x1"),
                                conv(s, f"features.{index}.expand3x3", pad=1)], axis=1)
    return np_adaptive_avg_pool(x, 2).reshape(len(x), -1)


def test_numpy_reference_ops_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    for size in (13, 27, 54, 55, 111, 112):
        x = rng.normal(size=(1, 4, size, size))
        t = torch.from_numpy(x)
        np.testing.assert_allclose(np_max_pool(x, ceil=True), F.max_pool2d(t, 3, 2, ceil_mode=True).numpy())
        np.testing.assert_allclose(np_max_pool(x, pad=1), F.max_pool2d(t, 3, 2, padding=1).numpy())
        np.testing.assert_allclose(np_adaptive_avg_pool(x, 2), F.adaptive_avg_pool2d(t, 2).numpy(), atol=1e-12)
    x = rng.uniform(0, 255, size=(1, 3, 64, 64))
    want = F.interpolate(torch.from_numpy(x), size=(224, 224), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(np_resize_bilinear(x, 224), want, atol=1e-9)
    w, b = rng.normal(size=(8, 4, 3, 3)), rng.normal(size=8)
    x = rng.normal(size=(1, 4, 17, 17))
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=2, padding=1).numpy()
    np.testing.assert_allclose(np_conv(x, w, b, stride=2, pad=1), want, atol=1e-9)


# --- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def squeezenet_state(shared_dir):
    return weights.load_state_dict(shared_dir / "weights" / "squeezenet1_1-imagenet.npz")


@pytest.fixture(scope="module")
def class_names(shared_dir):
    return json.loads((shared_dir / "weights" / "imagenet_classes.json").read_text())


@pytest.fixture(scope="module")
def reference_cases(shared_dir):
    root = shared_dir / "weights" / "squeezenet1_1-reference"
    return [(np.load(root / str(i) / "input_0.npy"), np.load(root / str(i) / "output_0.npy")) for i in REFERENCE_CASES]


@pytest.fixture(scope="module")
def held_out_images(shared_dir, calibration_audio):
    """Patches of shared clips the test models were not quantised on: valve array, slider anomaly, four ToyCar clips."""
    audio = shared_dir / "audio"
    toycar = sorted((audio / "dcase2023-toycar" / "test").glob("*.wav"))
    clips = [*sorted((audio / "mimii-valve").rglob("*.wav")), *sorted((audio / "dcase2020-id00" / "test").glob("*.wav")),
             *toycar[:2], *toycar[-2:]]
    assert len(clips) >= 8 and not any(calibration_audio in p.parents for p in clips)
    return np.concatenate([clip_patches(read_wav(p)).images for p in clips])


def run_tflite(path, x):
    interpreter = load_interpreter(path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    scale, zero = inp["quantization"]
    if np.dtype(inp["dtype"]).kind != "f":
        x = np.clip(np.round(x / scale + zero), 0, 255).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"]).astype(np.float32)
    scale, zero = out["quantization"]
    return (y - zero) * scale if scale else y


@pytest.fixture(scope="module")
def logits_models(tmp_path_factory, squeezenet_state, shared_dir, calibration_audio):
    """SqueezeNet 1.1 with its classifier and no preprocessing head (224x224 input), float32 and int8."""
    model = backbones.build_backbone("squeezenet1_1", squeezenet_state, preprocess=False, head="logits")
    out = tmp_path_factory.mktemp("logits")
    (out / "float32.tflite").write_bytes(tflite.export_float(model, input_dtype="float32"))
    # Quantised on Mel patch images enlarged to 224 in 0..255 units, the units the reference inputs are in.
    import tensorflow as tf

    images, _ = representative.representative_images([calibration_audio], 40)
    enlarged = tf.image.resize(images.astype(np.float32), (224, 224)).numpy()
    pins = np.stack([np.zeros_like(enlarged[0]), np.full_like(enlarged[0], 255.0)])
    (out / "int8.tflite").write_bytes(tflite.export_int8(model, np.concatenate([pins, enlarged])))
    return out / "float32.tflite", out / "int8.tflite"


# --- exactness against real ImageNet weights -------------------------------------------------------------------

def test_float_tflite_reproduces_reference_logits(logits_models, reference_cases):
    for x, want in reference_cases:
        got = run_tflite(logits_models[0], x.transpose(0, 2, 3, 1))
        assert np.abs(got - want).max() <= 1e-3
        assert got.argmax() == want.argmax()


def test_int8_top1_equals_float_on_reference_inputs(logits_models, reference_cases):
    for x, _ in reference_cases:
        nhwc = x.transpose(0, 2, 3, 1)
        assert run_tflite(logits_models[1], nhwc).argmax() == run_tflite(logits_models[0], nhwc).argmax()


def test_china_jpg_is_a_temple(logits_models, class_names):
    import tensorflow as tf
    from sklearn.datasets import load_sample_image

    image = tf.image.resize(load_sample_image("china.jpg").astype(np.float32), (224, 224)).numpy() / 255.0
    x = ((image - contract.IMAGENET_MEAN) / contract.IMAGENET_STD).astype(np.float32)[None]
    top5 = {class_names[i] for i in np.argsort(run_tflite(logits_models[0], x)[0])[-5:]}
    assert top5 & CHINA_CLASSES, top5


# --- features: the board's models against the numpy reference -------------------------------------------------

@pytest.fixture(scope="module")
def mel_images(shared_dir):
    return clip_patches(read_wav(shared_dir / "audio" / "mimii-valve" / "valve_id00_n_00000000.wav")).images[:3]


def export_features(model, path, arch):
    content = tflite.export_float(model)
    return tflite.write_extractor(path, content, tflite.sidecar(
        content, architecture=arch, precision="float32", weights={"sha256": "test"},
        feature_dim=backbones.feature_dim(arch)))


def test_squeezenet_fixture_features_match_reference(squeezenet_float, squeezenet_state, mel_images):
    got = Extractor(squeezenet_float).embed(mel_images)
    want = np_squeezenet_features(mel_images, squeezenet_state, "1_1")
    assert got.shape == (3, 2048)
    assert row_cosines(got, want).min() >= 0.9999
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


@pytest.mark.parametrize("arch, seed", [("resnet18", 1), ("resnet34", 2), ("squeezenet1_0", None)])
def test_features_match_numpy_reference(arch, seed, shared_dir, tmp_path, mel_images):
    if seed is None:  # the real SqueezeNet 1.0 weights: its 54 -> 27 pool needs ceil mode's extra column
        state = weights.load_state_dict(shared_dir / "weights" / f"{arch}-imagenet.npz")
    else:
        state = backbones.random_state_dict(arch, seed)
    path = export_features(backbones.build_backbone(arch, state), tmp_path / f"{arch}.tflite", arch)
    got = Extractor(path).embed(mel_images)
    if arch.startswith("resnet"):
        want = np_resnet_features(mel_images, state, backbones.RESNET_BLOCKS[arch])
    else:
        want = np_squeezenet_features(mel_images, state, arch[-3:])
    assert got.shape == (len(mel_images), backbones.feature_dim(arch))
    assert row_cosines(got, want).min() >= 0.9999


# --- int8 fidelity -----------------------------------------------------------------------------------------------

def test_int8_features_follow_float_on_held_out_mel_patches(squeezenet_int8, squeezenet_float, held_out_images):
    cosines = row_cosines(Extractor(squeezenet_int8).embed(held_out_images),
                          Extractor(squeezenet_float).embed(held_out_images))
    assert len(cosines) >= 4 * contract.WINDOW_PATCHES
    assert np.median(cosines) >= 0.98


def test_int8_model_is_full_integer_with_plain_uint8_input(squeezenet_int8, shared_dir):
    info = json.loads(squeezenet_int8.with_name(squeezenet_int8.name + ".json").read_text())
    assert info["architecture"] == "squeezenet1_1" and info["precision"] == "int8"
    assert info["weights"]["sha256"] == file_sha256(shared_dir / "weights" / "squeezenet1_1-imagenet.npz")
    assert info["input"] == {"dtype": "uint8", "shape": [-1, 64, 64, 3], "scale": 1.0, "zero_point": 0}
    assert info["output"]["dtype"] == "int8" and info["feature_dim"] == 2048
    assert info["frontend"] == {"version": contract.FRONTEND_VERSION, **json.loads(json.dumps(contract.signal_contract()))}
    interpreter = load_interpreter(squeezenet_int8)
    float_tensors = [t["name"] for t in interpreter.get_tensor_details()
                     if np.dtype(t["dtype"]) == np.float32]
    assert float_tensors == []
    assert squeezenet_int8.stat().st_size < 0.35 * squeezenet_int8.with_name("squeezenet1_1-float32.tflite").stat().st_size


# --- weights: formats, checks and errors ------------------------------------------------------------------------

def test_state_dict_of_another_architecture_is_refused(shared_dir, squeezenet_state):
    other = weights.load_state_dict(shared_dir / "weights" / "squeezenet1_0-imagenet.npz")
    with pytest.raises(ModelError, match=r"^x.npz: not a torchvision squeezenet1_1 state dict: 12 missing .*"
                                         r"'features.0.bias' has shape \(96,\), expected \(64,\)$"):
        weights.check_state_dict("squeezenet1_1", other, source="x.npz")
    partial = {k: v for k, v in squeezenet_state.items() if k != "classifier.1.bias"}
    with pytest.raises(ModelError, match=r"1 missing \(first 'classifier.1.bias'\)"):
        weights.check_state_dict("squeezenet1_1", partial)


def test_hub_file_names_are_found_in_torch_home(tmp_path, monkeypatch, shared_dir):
    for var in ("HUMWATCH_WEIGHTS",):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HUMWATCH_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "squeezenet1_1-b8a52dc0.pth").write_bytes(b"")
    assert weights.locate_weights("squeezenet1_1") == hub / "squeezenet1_1-b8a52dc0.pth"
    monkeypatch.setenv("HUMWATCH_WEIGHTS", str(shared_dir / "weights"))
    assert weights.locate_weights("squeezenet1_1") == shared_dir / "weights" / "squeezenet1_1-imagenet.npz"


def test_missing_weights_error_says_where_to_get_them(tmp_path, monkeypatch, capsys):
    from humwatch.cli import main

    monkeypatch.delenv("HUMWATCH_WEIGHTS", raising=False)
    monkeypatch.setenv("HUMWATCH_SHARED", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["convert", "--arch", "resnet18", "--weights-dir", str(tmp_path), "--out", str(tmp_path)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("humwatch convert: error: no resnet18 weights found")
    assert "resnet18-f37072fd.pth" in message and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "--download" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert list(tmp_path.glob("*.tflite")) == []


def test_a_model_that_fails_its_check_leaves_the_models_already_there(tmp_path, monkeypatch, calibration_audio):
    from humwatch.convert.cli import convert

    old = tmp_path / "squeezenet1_1-int8.tflite"
    old.write_bytes(b"the model in use")
    monkeypatch.setattr("humwatch.convert.verify.MIN_INT8_COSINE", 1.01)  # no int8 model can pass
    with pytest.raises(ModelError, match=r"^squeezenet1_1-int8.tflite: int8 features follow float only .*nothing "
                                         r"was written$"):
        convert("squeezenet1_1", out_dir=tmp_path, random_seed=0, patches=10, audio=[calibration_audio],
                name="squeezenet1_1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name] and old.read_bytes() == b"the model in use"


def test_random_weights_never_take_the_real_models_name(tmp_path, calibration_audio):
    from humwatch.convert.cli import convert

    paths = convert("squeezenet1_1", out_dir=tmp_path, random_seed=3, patches=10, audio=[calibration_audio])
    assert {p: path.name for p, path in paths.items()} == {"float32": "squeezenet1_1-random3-float32.tflite",
                                                            "int8": "squeezenet1_1-random3-int8.tflite"}
    assert all(path.exists() and path.with_name(path.name + ".json").exists() for path in paths.values())


@pytest.mark.parametrize("options, message", [
    (["--name", "../escape"], "--name '../escape': a file name stem, without '/'"),
    (["--out", "{file}"], "--out {file}: {file} is a file, not a folder"),
    (["--out", "{file}/models"], "--out {file}/models: {file} is a file, not a folder"),
    (["--weights", "{tmp}/absent.npz"], "{tmp}/absent.npz: weights file not found"),
    (["--weights", "{file}"], "{file}: unknown weights format ''"),
    (["--weights", "{tmp}/damaged.npz"], "{tmp}/damaged.npz: not a readable .npz state dict"),
])
def test_bad_options_are_one_line_before_any_work(tmp_path, capsys, options, message):
    from humwatch.cli import main

    (tmp_path / "a-file").write_text("")
    (tmp_path / "damaged.npz").write_bytes(b"PK\x03\x04 cut short")
    names = {"file": tmp_path / "a-file", "tmp": tmp_path}
    options = [o.format(**names) for o in options]
    if "--out" not in options:
        options += ["--out", str(tmp_path / "models")]
    assert main(["convert", *options] if "--weights" in options else ["convert", "--random-weights", "0", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"humwatch convert: error: {message.format(**names)}") and err.count("\n") == 1, err
    assert not (tmp_path / "models").exists() and not list(tmp_path.glob("*.tflite"))


def test_fetch_keeps_only_a_file_with_the_expected_sha256(tmp_path):
    source = tmp_path / "resnet18-f37072fd.pth"
    source.write_bytes(b"not the checkpoint")
    dest = tmp_path / "cache" / source.name
    with pytest.raises(ModelError, match=r"sha256 [0-9a-f]{64}, expected one starting f37072fd"):
        weights.fetch(source.as_uri(), dest, "f37072fd")
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert weights.fetch(source.as_uri(), dest, file_sha256(source)[:8]).read_bytes() == b"not the checkpoint"


def test_fetch_without_network_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"cannot download file:.*missing\.pth .*place that file \(sha256 0+\.\.\.\) at "):
        weights.fetch((tmp_path / "missing.pth").as_uri(), tmp_path / "out.pth", "00000000")
