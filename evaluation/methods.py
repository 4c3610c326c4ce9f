"""A method = a feature source + something fitted on normal clips that gives each clip one anomaly score.

Scores are higher for more anomalous clips. Patch-level methods mean-pool their patch scores per clip, as the paper
does over a 10 s window.
"""
from __future__ import annotations

import abc
import pathlib
import tempfile

import numpy as np

from evaluation.features import FeatureSource


class Method(abc.ABC):
    name: str
    source: FeatureSource

    @abc.abstractmethod
    def fit(self, train: list[np.ndarray], seed: int) -> None:
        """Learn normal from the training clips' features (a list of per-clip arrays)."""

    @abc.abstractmethod
    def clip_scores(self, clips: list[np.ndarray]) -> np.ndarray:
        """One anomaly score per clip."""


class DetectorMethod(Method):
    """A CNN backbone's patch features + a humwatch detector, fitted and scored exactly as on the board:
    calibration.detectors.fit_detector, saved to .npz, loaded back through agent.scorers.load_detector."""

    def __init__(self, source: FeatureSource, kind: str) -> None:
        self.source, self.kind = source, kind
        self.name = f"{source.name} + {kind}"
        self._detector = None

    def fit(self, train: list[np.ndarray], seed: int) -> None:
        from agent.scorers import load_detector
        from calibration.detectors import fit_detector

        fitted = fit_detector(self.kind, np.concatenate(train), self.source.extractor_sha256, random_state=seed)
        with tempfile.TemporaryDirectory(prefix="humwatch-eval-") as tmp:
            path = pathlib.Path(tmp) / "detector.npz"
            fitted.save(path)
            self._detector = load_detector(path, self.source.extractor_sha256)

    def clip_scores(self, clips: list[np.ndarray]) -> np.ndarray:
        return np.array([self._detector.score(c).mean() for c in clips])
