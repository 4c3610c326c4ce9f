"""Known answers: fixed reference images and the features `humwatch convert` computed for them, stored beside each
model as `<model>.tflite.known.npz`. The agent, `score` and `calibrate` run the images at start and refuse to go on
when this machine's runtime computes something else (a broken runtime, an emulator's wrong CPU, a wrong delegate, a
damaged model): nothing else would notice, since a wrong feature vector still yields a score.

The tolerance is on the largest absolute feature difference relative to the largest expected feature; how it was
measured across runtimes and CPUs is in docs/install.md ("A runtime that proves itself").
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from humwatch.agent import contract
from humwatch.agent.durable import write_atomic
from humwatch.agent.errors import ModelError, RuntimeMismatchError
from humwatch.agent.npz import read_npz

log = logging.getLogger(__name__)

SUFFIX = ".known.npz"
# Largest |feature difference| / largest |expected feature| accepted, per model precision.
TOLERANCE = {"float32": 1e-3, "int8": 0.25}


def known_answers_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + SUFFIX)


def write_known_answers(model_path: str | Path, images: np.ndarray, features: np.ndarray) -> Path:
    """Store the reference images and their expected features beside the model (atomically)."""
    buffer = io.BytesIO()
    np.savez(buffer, images=np.asarray(images, np.uint8), features=np.asarray(features, np.float32))
    return write_atomic(known_answers_path(model_path), buffer.getvalue(), mode=0o644)


def read_known_answers(model_path: str | Path, feature_dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, features) stored beside the model, None when the model has none (converted before known answers
    existed); a damaged or mismatched file is a ModelError naming it."""
    path = known_answers_path(model_path)
    if not path.exists():
        return None
    arrays = read_npz(path, "known-answers")
    images, features = arrays.get("images"), arrays.get("features")
    if images is None or features is None:
        raise ModelError(f"{path}: known-answers file lacks 'images' or 'features'")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != contract.IMAGE_SHAPE or not len(images):
        raise ModelError(f"{path}: 'images' must be uint8 (n, {', '.join(map(str, contract.IMAGE_SHAPE))}), "
                         f"got {images.dtype} {images.shape}")
    if features.shape != (len(images), feature_dim):
        raise ModelError(f"{path}: 'features' has shape {features.shape}, expected ({len(images)}, {feature_dim})")
    return images, features.astype(np.float32)


def relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference relative to the largest expected magnitude (the features' own scale)."""
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    return float(np.max(np.abs(np.asarray(got, np.float64) - expected))) / scale


def check_known_answers(model_path: str | Path, precision: str, feature_dim: int,
                        embed: Callable[[np.ndarray], np.ndarray], runtime: str = "") -> float | None:
    """Run the stored reference images through `embed` and compare with the stored features. Returns the relative
    difference (None when the model has no known answers); raises RuntimeMismatchError beyond the tolerance."""
    stored = read_known_answers(model_path, feature_dim)
    if stored is None:
        log.warning("%s: no known answers beside the model (%s); convert it again so that the runtime can be checked",
                    model_path, known_answers_path(model_path).name)
        return None
    images, expected = stored
    difference = relative_difference(embed(images), expected)
    tolerance = TOLERANCE.get(precision, TOLERANCE["int8"])
    if not np.isfinite(difference) or difference > tolerance:
        raise RuntimeMismatchError(
            f"{model_path}: the TFLite runtime{f' ({runtime})' if runtime else ''} computes features that differ "
            f"from the model's known answers by {difference:.3g} of their scale (tolerance {tolerance:g}); refusing "
            "to score with a broken runtime, a mis-emulated CPU or a damaged model")
    log.debug("%s: known answers matched (difference %.2g of scale, tolerance %g)", model_path, difference, tolerance)
    return difference
