"""Checks a conversion before anyone relies on it: TFLite equals Keras, and int8 features follow float ones."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from humwatch.agent.errors import ModelError
from humwatch.agent.model.extractor import Extractor

log = logging.getLogger(__name__)

MIN_INT8_COSINE = 0.98  # median over held-out patches; the paper's detectors see features, not logits
MAX_FLOAT_RELATIVE_ERROR = 1e-3  # float TFLite vs Keras, relative to the largest feature


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b` (1.0 where both rows are zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)


def float_matches_keras(model, float_path: Path, images: np.ndarray) -> float:
    """Largest |TFLite - Keras| feature difference relative to the largest Keras feature; ModelError if too big."""
    want = np.asarray(model(images.astype(np.float32)))
    got = Extractor(float_path, check=False).embed(images)
    error = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    log.info("float32 TFLite vs Keras on %d patches: max relative error %.2e", len(images), error)
    if error > MAX_FLOAT_RELATIVE_ERROR:
        raise ModelError(f"{float_path.name}: features differ from the Keras model by {error:.2e} "
                         f"(relative, limit {MAX_FLOAT_RELATIVE_ERROR:g}); nothing was written")
    return error


def int8_matches_float(int8_path: Path, float_path: Path, images: np.ndarray) -> float:
    """Median cosine of int8 vs float features over `images`; ModelError if below MIN_INT8_COSINE."""
    cosines = row_cosines(Extractor(int8_path, check=False).embed(images),
                          Extractor(float_path, check=False).embed(images))
    median = float(np.median(cosines))
    log.info("int8 vs float32 features on %d held-out patches: median cosine %.4f (min %.4f)",
             len(images), median, float(cosines.min()))
    if median < MIN_INT8_COSINE:
        raise ModelError(f"{int8_path.name}: int8 features follow float only to median cosine {median:.4f} "
                         f"(< {MIN_INT8_COSINE}); quantise on more or more typical audio (--audio); nothing was "
                         "written")
    return median
