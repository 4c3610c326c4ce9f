"""Samples → patches → features → patch scores → window scores: the one scoring path of the agent,
`humwatch score`, calibration and evaluation.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from agent.bundle import Bundle, DetectorEntry
from agent.errors import ModelError
from agent.frames import frame_dim, frame_patch_scores
from agent.frontend import FrontEnd, PatchBatch
from agent.scorers import Detector, load_detector
from agent.spec import SAMPLE_RATE, logmel_extractor_sha256


class PatchScorer:
    """Scores patches with a bundle's detectors: one standardised score per detector, fused into one."""

    def __init__(self, bundle: Bundle, num_threads: int = 1) -> None:
        self.bundle = bundle
        self.extractor = None
        if bundle.extractor_path is not None:
            from agent.extractor import Extractor  # loads the TFLite runtime only when a CNN is used

            self.extractor = Extractor(bundle.extractor_path, num_threads=num_threads)
            if self.extractor.sha256 != bundle.extractor_sha256:
                raise ModelError(f"{bundle.extractor_path}: sha256 {self.extractor.sha256[:12]} is not the extractor "
                                 f"the bundle was calibrated with ({bundle.extractor_sha256[:12]}); recalibrate or "
                                 "restore the model")
        self.detectors: list[Detector] = [self._load(entry) for entry in bundle.detectors]

    def _load(self, entry: DetectorEntry) -> Detector:
        """A bundle's detector, refused at start unless it was fitted on the features the bundle says it scores."""
        cnn = entry.feature_source == "cnn"
        detector = load_detector(self.bundle.path / entry.file,
                                 extractor_sha256=self.bundle.extractor_sha256 if cnn else logmel_extractor_sha256())
        dim = self.extractor.feature_dim if cnn else frame_dim(entry.feature_source)
        if (detector.feature_source, detector.feature_dim) != (entry.feature_source, dim):
            raise ModelError(f"{detector.path}: fitted on {detector.feature_dim}-d {detector.feature_source} "
                             f"features, but the bundle scores it on {dim}-d {entry.feature_source}; recalibrate")
        return detector

    def score(self, batch: PatchBatch) -> np.ndarray:
        """One anomaly score per patch (higher = more anomalous)."""
        if len(batch) == 0:
            return np.empty(0)
        per_detector = [standardise(self._raw_scores(entry.feature_source, detector, batch), entry)
                        for entry, detector in zip(self.bundle.detectors, self.detectors)]
        return fuse(per_detector, self.bundle.fusion, self.bundle.patch_score_cap)

    def _raw_scores(self, source: str, detector: Detector, batch: PatchBatch) -> np.ndarray:
        if source == "cnn":
            return detector.score(self.extractor.embed(batch.images))
        return frame_patch_scores(detector.score, source, batch.db)


def standardise(raw: np.ndarray, entry: DetectorEntry) -> np.ndarray:
    """A detector's raw patch scores in held-out normal standard deviations. A two-sided entry first takes the
    distance from its normal centre: a likelihood on frame dynamics calls a *steadier* sound more normal than normal,
    and a clogged pump or a leak's steady hiss is steadier (benchmarks/RESULTS.md, fourth round)."""
    if entry.two_sided_centre is not None:
        raw = np.abs(raw - entry.two_sided_centre)
    return (raw - entry.score_mean) / entry.score_std


def fuse(standardised: list[np.ndarray], fusion: str, cap: float | None = None) -> np.ndarray:
    """One score per patch from each detector's standardised scores: mean or max, each first limited to `cap`.
    The cap keeps one patch from carrying a window: a GMM on 2048 CNN features can score a half-second knock in the
    hall 40 standard deviations out, enough alone to lift 18 windows over the threshold; a fault lasts."""
    stacked = np.stack(standardised)
    if cap is not None:
        stacked = np.minimum(stacked, cap)
    return stacked.max(axis=0) if fusion == "max" else stacked.mean(axis=0)


@dataclass(frozen=True)
class PatchScore:
    time: float  # seconds of stream audio consumed when the patch completed
    patch_score: float
    window_score: float | None  # mean of the last window's patch scores; None until a full window is seen


class Pipeline:
    """The streaming form: push samples as they arrive, get a score for every new patch (one per 0.512 s)."""

    def __init__(self, bundle: Bundle, num_threads: int = 1, scorer: PatchScorer | None = None) -> None:
        self.bundle = bundle
        self.scorer = scorer or PatchScorer(bundle, num_threads)
        self.front_end = FrontEnd(bundle.frontend)
        self._window: deque[float] = deque(maxlen=bundle.window_patches)

    def reset(self) -> None:
        self.front_end.reset()
        self._window.clear()

    def push(self, samples: np.ndarray) -> list[PatchScore]:
        batch = self.front_end.push(samples)
        if len(batch) == 0:
            return []
        results = []
        for end, score in zip(batch.end_samples, self.scorer.score(batch)):
            self._window.append(float(score))
            full = len(self._window) == self._window.maxlen
            results.append(PatchScore(time=float(end) / SAMPLE_RATE, patch_score=float(score),
                                      window_score=math.fsum(self._window) / len(self._window) if full else None))
        return results
