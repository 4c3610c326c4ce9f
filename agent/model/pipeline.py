"""Samples → patches → features → patch scores → window scores: the one scoring path of the agent,
`humwatch score`, calibration and evaluation.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from humwatch.agent.contract import SAMPLE_RATE, logmel_extractor_sha256
from humwatch.agent.errors import ModelError
from humwatch.agent.model.bundle import TIMING_NAME, Bundle, DetectorEntry
from humwatch.agent.model.scorers import Detector, load_detector
from humwatch.agent.model.timing import StreamProfiles, TimingModel
from humwatch.agent.signal.frames import frame_dim, frame_patch_scores
from humwatch.agent.signal.frontend import FrontEnd, PatchBatch


class PatchScorer:
    """Scores patches with a bundle's detectors: one standardised score per detector (fused per window)."""

    def __init__(self, bundle: Bundle, num_threads: int = 1) -> None:
        self.bundle = bundle
        self.extractor = None
        if bundle.extractor_path is not None:
            from humwatch.agent.model.extractor import Extractor  # loads the TFLite runtime only when a CNN is used

            self.extractor = Extractor(bundle.extractor_path, num_threads=num_threads, check=False)
            if self.extractor.sha256 != bundle.extractor_sha256:
                raise ModelError(f"{bundle.extractor_path}: sha256 {self.extractor.sha256[:12]} is not the extractor "
                                 f"the bundle was calibrated with ({bundle.extractor_sha256[:12]}); recalibrate or "
                                 "restore the model")
            self.extractor.check_known_answers()  # the right model: does this runtime compute what it should?
        # Entries reading one detector file (its two readings) share one loaded detector and one scoring per batch.
        self.detectors: dict[str, Detector] = {file: self._load(e)
                                               for file, e in {e.file: e for e in bundle.detectors}.items()}

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
        """Each detector's standardised patch scores, (patches, detectors), each limited to the bundle's cap."""
        entries = self.bundle.detectors
        if len(batch) == 0:
            return np.empty((0, len(entries)))
        raw = {file: self._raw_scores(detector, batch) for file, detector in self.detectors.items()}
        return limit(np.stack([standardise(raw[e.file], e) for e in entries], axis=1), self.bundle.patch_score_cap)

    def _raw_scores(self, detector: Detector, batch: PatchBatch) -> np.ndarray:
        if detector.feature_source == "cnn":
            return detector.score(self.extractor.embed(batch.images))
        return frame_patch_scores(detector.score, detector.feature_source, batch.db)


def standardise(raw: np.ndarray, entry: DetectorEntry) -> np.ndarray:
    """A detector's raw patch scores in held-out normal standard deviations."""
    return (raw - entry.score_mean) / entry.score_std


def limit(scores: np.ndarray, cap: float | None) -> np.ndarray:
    """Standardised patch scores limited to `cap`. The cap keeps one patch from carrying a window: a GMM on 2048 CNN
    features can score a half-second knock in the hall 40 standard deviations out, enough alone to lift 18 windows
    over the threshold; a fault lasts."""
    return scores if cap is None else np.minimum(scores, cap)


def window_reading(window_means: np.ndarray, entry: DetectorEntry) -> np.ndarray:
    """One detector's reading of windows: the mean of its standardised patch scores over each. A two-sided entry
    takes the distance from its normal centre instead: a likelihood on frame dynamics calls a *steadier* sound more
    normal than normal, and a clogged pump or a leak's steady hiss is steadier. Read per window, not per patch, so
    that the patches' own spread around the centre does not count as distance (benchmarks/RESULTS.md, fifth
    round)."""
    return window_means if entry.window_centre is None else np.abs(window_means - entry.window_centre)


def window_readings(window_means: np.ndarray, entries: Sequence[DetectorEntry]) -> np.ndarray:
    """Each detector's reading of each window, (windows, detectors), from its window means of the same shape."""
    return np.stack([window_reading(window_means[:, j], entry) for j, entry in enumerate(entries)], axis=1)


def fuse(readings: np.ndarray, fusion: str) -> np.ndarray:
    """Window scores from the detectors' readings (windows, detectors): their mean, or the largest."""
    return readings.max(axis=1) if fusion == "max" else readings.mean(axis=1)


def add_timing(fused: np.ndarray, timing: np.ndarray, gate: float) -> np.ndarray:
    """Fused window scores plus the timing detector's distance from normal beyond `gate`: a window at the wrong
    speed or pace alarms however normal its spectrum sounds, and normal timing leaves the fused score alone."""
    return fused + np.maximum(0.0, timing - gate)


@dataclass(frozen=True)
class PatchScore:
    time: float  # seconds of stream audio consumed when the patch completed
    window_score: float | None  # the last window's fused score; None until a full window is seen
    # Each detector's reading of that window, by entry name, in held-out normal standard deviations: which part
    # of the sound moved (the spectrum, its dynamics, the CNN's picture of it). Empty until a full window is seen.
    readings: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """The streaming form: push samples as they arrive, get a score for every new patch (one per 0.512 s)."""

    def __init__(self, bundle: Bundle, num_threads: int = 1, scorer: PatchScorer | None = None) -> None:
        self.bundle = bundle
        self.scorer = scorer or PatchScorer(bundle, num_threads)
        self.front_end = FrontEnd(bundle.frontend)
        self._window: deque[np.ndarray] = deque(maxlen=bundle.window_patches)  # per-detector patch scores
        self._names = [entry.name for entry in bundle.detectors]
        self.timing = TimingModel.load(bundle.path / bundle.timing.file) if bundle.timing else None
        self.timing_profiles = StreamProfiles()

    def reset(self) -> None:
        self.front_end.reset()
        self._window.clear()
        self.timing_profiles.reset()

    def push(self, samples: np.ndarray) -> list[PatchScore]:
        batch = self.front_end.push(samples)
        profiles = self.timing_profiles.push(samples, batch.end_samples) if self.timing else [None] * len(batch)
        if len(batch) == 0:
            return []
        results = []
        for end, scores, profile in zip(batch.end_samples, self.scorer.score(batch), profiles):
            self._window.append(scores)
            seconds = float(end) / SAMPLE_RATE
            if len(self._window) < self._window.maxlen:
                results.append(PatchScore(time=seconds, window_score=None))
                continue
            readings = window_readings(np.mean(self._window, axis=0)[None], self.bundle.detectors)
            score = fuse(readings, self.bundle.fusion)
            named = dict(zip(self._names, readings[0].tolist()))
            if profile is not None:
                timing = self.timing.score(profile)
                score = add_timing(score, timing, self.bundle.timing.gate)
                named[TIMING_NAME] = float(timing[0])
            results.append(PatchScore(time=seconds, window_score=float(score[0]), readings=named))
        return results
