"""A method = a feature source + something fitted on normal clips that gives each clip one anomaly score.

Scores are higher for more anomalous clips. Patch-level methods mean-pool their patch scores per clip, as the paper
does over a 10 s window.
"""
from __future__ import annotations

import abc
import pathlib
import tempfile

import numpy as np

from humwatch.agent.signal.audio import read_wav
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
    """A `humwatch calibrate` preset, fitted and judged exactly as a user would: `calibrate` on the training clips
    (its own split, threshold and bundle), then each test clip through the agent's streaming pipeline. A clip's
    score is its highest window score, what the agent alarms on; `threshold` is calibrate's alarm threshold for one
    false alarm a week."""

    def __init__(self, model: pathlib.Path, channel: int | str, preset: str) -> None:
        self.model, self.channel, self.preset = model, channel, preset
        self.name = f"{model.name} + {preset}"
        self.threshold: float | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="humwatch-evaluate-")
        self._pipeline = None

    def fit_paths(self, paths: list[pathlib.Path], cache: FeatureCache, seed: int) -> None:
        from humwatch.agent.model.bundle import Bundle
        from humwatch.agent.model.pipeline import Pipeline
        from humwatch.calibration.calibrate import calibrate
        from humwatch.calibration.collect import split_blocks

        blocks = [b for p in paths for b in split_blocks(str(p), read_wav(p, self.channel))]
        bundle = pathlib.Path(self._scratch.name) / f"seed-{seed}"
        result = calibrate(blocks, self.model, bundle, preset=self.preset, report=False)
        self.threshold = result.threshold.high
        self._pipeline = Pipeline(Bundle.load(bundle))

    def score_paths(self, paths: list[pathlib.Path], cache: FeatureCache) -> np.ndarray:
        from humwatch.agent.service.score import score_file

        return np.array([score_file(self._pipeline, p, self.channel)["max_window_score"] for p in paths])


class DetectorMethod(FeatureMethod):
    """A CNN backbone's patch features + a humwatch detector, fitted and scored exactly as on the board:
    calibration.detectors.fit_detector, saved to .npz, loaded back through agent.model.scorers.load_detector."""

    def __init__(self, source: FeatureSource, kind: str) -> None:
        self.source, self.kind = source, kind
        self.name = f"{source.name} + {kind}"
        self._detector = None

    def fit(self, train: list[np.ndarray], seed: int) -> None:
        from humwatch.agent.model.scorers import load_detector
        from humwatch.calibration.detectors import fit_detector

        fitted = fit_detector(self.kind, np.concatenate(train), self.source.extractor_sha256, random_state=seed)
        with tempfile.TemporaryDirectory(prefix="humwatch-eval-") as tmp:
            path = pathlib.Path(tmp) / "detector.npz"
            fitted.save(path)
            self._detector = load_detector(path, self.source.extractor_sha256)

    def clip_scores(self, clips: list[np.ndarray]) -> np.ndarray:
        return np.array([self._detector.score(c).mean() for c in clips])
