"""Turns batches of 64x64 viridis patch images into CNN feature vectors with a converted TFLite model.

A model is `<name>.tflite` plus its sidecar `<name>.tflite.json` written by `humwatch convert`. The sidecar
records the front end the model was made for; a model made for a different signal contract is refused, because
its features would silently mean something else. Beside them, `<name>.tflite.known.npz` holds known answers that
every extractor checks when it opens (agent.model.known_answers): a runtime computing other features is refused.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from humwatch.agent import contract
from humwatch.agent.durable import file_sha256
from humwatch.agent.errors import ModelError
from humwatch.agent.model.known_answers import check_known_answers
from humwatch.agent.model.runtime import load_interpreter, runtime_name
from humwatch.agent.npz import read_json_object

SIDECAR_SUFFIX = ".json"


def sidecar_path(model_path: str | Path) -> Path:
    """Where the sidecar of `model_path` lives: next to it, with `.json` appended."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


def read_sidecar(model_path: str | Path) -> dict:
    """The sidecar dict of a model, checked against this humwatch's signal contract."""
    path = sidecar_path(model_path)
    info = read_json_object(path, "sidecar missing; convert the model with `humwatch convert`")
    if not isinstance(info.get("frontend"), dict):
        raise ModelError(f"{path}: sidecar has no 'frontend' section")
    try:
        contract.FrontEndParams.from_dict(info["frontend"])
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None
    if not isinstance(info.get("feature_dim"), int):
        raise ModelError(f"{path}: sidecar field 'feature_dim' missing or not an integer")
    return info


MAX_BATCH = 8
"""Images per invoke: bounds the interpreter's tensor arena (and XNNPack's reshape) however long the recording.
The arena grows with the batch (SqueezeNet 1.1 int8: about 72 MiB resident at 64 images, 13 MiB at 8) while the
time per image stays the same (benchmarks/RESULTS.md, "Calibration memory"); it stays allocated as long as the
extractor lives, through a whole calibration."""


class Extractor:
    """A frozen feature extractor: `.embed(images uint8 (n,64,64,3)) -> float32 (n, feature_dim)`."""

    def __init__(self, model_path: str | Path, num_threads: int = 1, check: bool = True):
        """`check`: run the known answers first (RuntimeMismatchError beyond tolerance); only `humwatch convert`
        opens models before their known answers exist."""
        self.path = Path(model_path)
        self.info = read_sidecar(self.path)
        self.interpreter = load_interpreter(self.path, num_threads)
        self.sha256 = file_sha256(self.path)
        self.feature_dim = int(self.info["feature_dim"])
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        if tuple(self._input["shape"][1:]) != contract.IMAGE_SHAPE:
            raise ModelError(f"{self.path}: model input {list(self._input['shape'])} is not "
                             f"(n, {', '.join(map(str, contract.IMAGE_SHAPE))})")
        if tuple(self._output["shape"][1:]) != (self.feature_dim,):
            raise ModelError(f"{self.path}: model output {list(self._output['shape'])} does not match "
                             f"feature_dim {self.feature_dim} in its sidecar")
        self._batch = int(self._input["shape"][0])
        self.known_answer_difference: float | None = None
        if check:
            self.check_known_answers()

    def check_known_answers(self) -> float | None:
        """Run the model's known answers (RuntimeMismatchError beyond tolerance); the relative difference, or None
        for a model without them."""
        self.known_answer_difference = check_known_answers(
            self.path, str(self.info.get("precision", "")), self.feature_dim, self.embed, runtime_name())
        return self.known_answer_difference

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Features of a batch of viridis images; rows match the images' order."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != contract.IMAGE_SHAPE:
            raise ValueError(f"images must be uint8 (n, {', '.join(map(str, contract.IMAGE_SHAPE))}), "
                             f"got {images.dtype} {images.shape}")
        if len(images) > MAX_BATCH:
            return np.concatenate([self.embed(images[i:i + MAX_BATCH]) for i in range(0, len(images), MAX_BATCH)])
        n = len(images)
        if n == 0:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        if n != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], [n, *contract.IMAGE_SHAPE])
            self.interpreter.allocate_tensors()
            self._batch = n
        self.interpreter.set_tensor(self._input["index"], _to_input(images, self._input))
        self.interpreter.invoke()
        return _dequantise(self.interpreter.get_tensor(self._output["index"]), self._output)


def _to_input(images: np.ndarray, detail: dict) -> np.ndarray:
    """uint8 pixel values 0..255 in the input tensor's type, quantised by its (scale, zero point) when it has one."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if dtype.kind == "f":
        return images.astype(dtype)
    if scale == 0.0 or (scale == 1.0 and zero_point == 0 and dtype == np.uint8):
        return images.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    q = np.round(images.astype(np.float32) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantise(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or scale == 0.0:
        return values.astype(np.float32)
    features = values.astype(np.float32)
    features -= zero_point  # in place: one float32 array for the whole dequantisation
    features *= scale
    return features
