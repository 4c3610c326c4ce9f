"""Exports a Keras backbone to TFLite (float32, and full int8 quantised on representative images) with its sidecar.

Keras 3 models go through a SavedModel written by `keras.export.ExportArchive` with an explicit input signature:
the float model takes uint8 images and casts them as its first op; the int8 model is quantised from a float32
signature and given a uint8 input by the converter (scale 1, zero point 0: the images unchanged).
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from humwatch.agent import contract
from humwatch.agent.durable import write_atomic
from humwatch.agent.model.extractor import sidecar_path

log = logging.getLogger(__name__)


def _saved_model(model, input_dtype: str, directory: str) -> str:
    """Write `model` as a SavedModel whose one endpoint takes a batch of `input_dtype` inputs."""
    import keras
    import tensorflow as tf

    spec_ = tf.TensorSpec((None, *model.input_shape[1:]), tf.as_dtype(input_dtype), name="images")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda images: model(tf.cast(images, tf.float32)), input_signature=[spec_])
    archive.write_out(directory, verbose=False)
    return directory


def export_float(model, input_dtype: str = "uint8") -> bytes:
    """float32 TFLite flatbuffer of `model`; its input takes `input_dtype` values (cast to float first)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        converter = tf.lite.TFLiteConverter.from_saved_model(_saved_model(model, input_dtype, tmp))
        return converter.convert()


def export_int8(model, representative: np.ndarray, progress_every: int = 50) -> bytes:
    """Full-integer TFLite flatbuffer: int8 weights and activations, uint8 input, int8 output.

    `representative` holds model inputs (pixel values 0..255 in the model's input shape); the quantiser runs
    each through the float graph to learn every tensor's range.
    """
    import tensorflow as tf

    def batches():
        for i, image in enumerate(representative, 1):
            if i % progress_every == 0 or i == len(representative):
                log.info("  quantising: %d/%d representative inputs", i, len(representative))
            yield [np.asarray(image, np.float32)[None]]

    with tempfile.TemporaryDirectory() as tmp:
        converter = tf.lite.TFLiteConverter.from_saved_model(_saved_model(model, "float32", tmp))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = batches
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8
        return converter.convert()


def humwatch_version() -> str:
    try:
        return metadata.version("humwatch")
    except metadata.PackageNotFoundError:  # running from a checkout that was never pip-installed
        return "unknown"


def tensor_details(content: bytes) -> dict:
    """The input and output tensors of a flatbuffer as plain JSON-able dicts."""
    from ai_edge_litert.interpreter import Interpreter  # tensorflow's own interpreter is being retired

    interpreter = Interpreter(model_content=content)

    def describe(detail: dict) -> dict:
        scale, zero_point = detail["quantization"]
        return {"dtype": np.dtype(detail["dtype"]).name, "shape": [int(s) for s in detail["shape_signature"]],
                "scale": float(scale), "zero_point": int(zero_point)}

    return {"input": describe(interpreter.get_input_details()[0]),
            "output": describe(interpreter.get_output_details()[0])}


def sidecar(content: bytes, *, architecture: str, precision: str, weights: dict, feature_dim: int,
            calibration: dict | None = None) -> dict:
    """What the board needs to know about a converted model, and what it must agree with."""
    import tensorflow as tf

    return {
        "schema_version": contract.SCHEMA_VERSION,
        "kind": "humwatch-feature-extractor",
        "architecture": architecture,
        "precision": precision,
        "feature_dim": feature_dim,
        "weights": weights,
        "frontend": {"version": contract.FRONTEND_VERSION, **contract.signal_contract()},
        **tensor_details(content),
        "quantisation": calibration,
        "humwatch_version": humwatch_version(),
        "tensorflow_version": tf.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_extractor(path: Path, content: bytes, info: dict) -> Path:
    """Write the model and then its sidecar, each atomically (a reader never sees a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, content, mode=0o644)  # 0644: the agent may run as another user
    write_atomic(sidecar_path(path), (json.dumps(info, indent=2) + "\n").encode(), mode=0o644)
    return path
