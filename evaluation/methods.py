"""A method = a feature source + something fitted on normal clips that gives each clip one anomaly score.

Scores are higher for more anomalous clips. Patch-level methods mean-pool their patch scores per clip, as the paper
does over a 10 s window.
"""
from __future__ import annotations

import abc
import pathlib
import tempfile

import numpy as np

from humwatch.evaluation.cache import FeatureCache
from humwatch.evaluation.features import FeatureSource


class Method(abc.ABC):
    """What the protocol runner fits on a split's normal training clips and scores its test clips with."""

    name: str
    source: FeatureSource  # the features the runner computes for every clip up front

    @abc.abstractmethod
    def fit_paths(self, paths: list[pathlib.Path], cache: FeatureCache, seed: int) -> None:
        """Learn normal from the training clips."""

    @abc.abstractmethod
    def score_paths(self, paths: list[pathlib.Path], cache: FeatureCache) -> np.ndarray:
        """One anomaly score per clip."""


class FeatureMethod(Method):
    """A method that needs only its source's per-clip feature arrays."""

    def fit_paths(self, paths: list[pathlib.Path], cache: FeatureCache, seed: int) -> None:
        self.fit(self.source.clips(paths, cache), seed)

    def score_paths(self, paths: list[pathlib.Path], cache: FeatureCache) -> np.ndarray:
        return self.clip_scores(self.source.clips(paths, cache))

    @abc.abstractmethod
    def fit(self, train: list[np.ndarray], seed: int) -> None:
        """Learn normal from the training clips' features (a list of per-clip arrays)."""

    @abc.abstractmethod
    def clip_scores(self, clips: list[np.ndarray]) -> np.ndarray:
        """One anomaly score per clip."""


class PresetMethod(Method):
    """A `humwatch calibrate` preset ("auto", "paper", or any candidate) fitted as calibrate fits it: one training
    clip in four held out for score standardisation and, for "auto", for the synthetic faults that choose the
    pipeline. Clip score = mean of the fused patch scores, as the agent pools a window."""

    def __init__(self, cnn: FeatureSource, db: FeatureSource, params, channel, preset: str) -> None:
        self.source, self.db, self.params, self.channel, self.preset = cnn, db, params, channel, preset
        self.extractor = cnn.extractor  # also embeds the faulted copies of held-out clips
        self.name = f"{cnn.name} + {preset}"
        self.selection = None

    def _features(self, path: pathlib.Path, cache: FeatureCache) -> tuple[np.ndarray, np.ndarray]:
        return cache.get(path, self.db.description, self.db.compute), cache.get(path, self.source.description,
                                                                                self.source.compute)

    def fit_paths(self, paths: list[pathlib.Path], cache: FeatureCache, seed: int) -> None:
        from humwatch.calibration.selection import PRESETS, choose_from_files

        self.selection = choose_from_files(paths, self.extractor.sha256, self.extractor, self.params, self.channel,
                                           clip_features=lambda p: self._features(p, cache),
                                           candidates=PRESETS[self.preset], seed=seed)

    def score_paths(self, paths: list[pathlib.Path], cache: FeatureCache) -> np.ndarray:
        from humwatch.calibration.selection import cached_clip

        return np.array([self.selection.clip_score(cached_clip(p, self.channel, self._features(p, cache)))
                         for p in paths])


class DetectorMethod(FeatureMethod):
    """A CNN backbone's patch features + a humwatch detector, fitted and scored exactly as on the board:
    calibration.detectors.fit_detector, saved to .npz, loaded back through agent.model.scorers.load_detector."""

    def __init__(self, source: FeatureSource, kind: str) -> None:
        self.source, self.kind = source, kind
        self.name = f"{source.name} + {kind}"
        self._detector = None

    def fit(self, train: list[np.ndarray], seed: int) -> None:
        from humwatch.calibration.detectors import fit_detector
        from humwatch.calibration.workstation_scorers import load_workstation_detector

        fitted = fit_detector(self.kind, np.concatenate(train), self.source.extractor_sha256, random_state=seed)
        with tempfile.TemporaryDirectory(prefix="humwatch-eval-") as tmp:
            path = pathlib.Path(tmp) / "detector.npz"
            fitted.save(path)
            self._detector = load_workstation_detector(path, self.source.extractor_sha256)

    def clip_scores(self, clips: list[np.ndarray]) -> np.ndarray:
        return np.array([self._detector.score(c).mean() for c in clips])
