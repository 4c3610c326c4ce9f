"""Samples → patches → features → patch scores → window scores: the one scoring path of the agent,
`humwatch score`, calibration and evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import numpy as np

from humwatch.agent.contract import SAMPLE_RATE, logmel_extractor_sha256
from humwatch.agent.errors import ModelError, RuntimeMismatchError
from humwatch.agent.model.bundle import MODULATION, TIMING_NAME, TONE, Bundle, DetectorEntry
from humwatch.agent.model.scorers import Detector, load_detector
from humwatch.agent.model.timing import StreamProfiles, TimingModel
from humwatch.agent.signal.frames import FRAME_SOURCES, frame_dim, frame_patch_scores
from humwatch.agent.signal.frontend import NO_PATCHES, FrontEnd, PatchBatch
from humwatch.agent.signal.modulation import MODULATION_DIM, modulation_spectrum
from humwatch.agent.signal.tone import TONE_DIM, tone_contrast

if TYPE_CHECKING:
    from humwatch.agent.model.extractor import Extractor


class PatchScorer:
    """Turns patches into the rows a bundle's windows are averaged over, one block of columns per detector.

    A patch-level detector (GMM, OC-SVM) gives one column: its standardised patch score, limited to the bundle's
    cap. A window-level detector (nearest normal window) gives its transformed features (standardised or
    projected): a window's mean of them is what it measures against its bank. Both are means over the window's
    patches, so the stream and a recording share one definition of a window.
    """

    def __init__(self, bundle: Bundle, num_threads: int = 1) -> None:
        self.bundle = bundle
        self.extractor: Extractor | None = None
        if bundle.extractor_path is not None:
            from humwatch.agent.model.extractor import Extractor  # loads the TFLite runtime only when a CNN is used

            self.extractor = Extractor(bundle.extractor_path, num_threads=num_threads, check=False)
            expected = bundle.spec.extractor_sha256 or ""
            if self.extractor.sha256 != expected:
                raise ModelError(f"{bundle.extractor_path}: sha256 {self.extractor.sha256[:12]} is not the extractor "
                                 f"the bundle was calibrated with ({expected[:12]}); recalibrate or restore the model")
            self.extractor.check_known_answers()  # the right model: does this runtime compute what it should?
        # Entries reading one detector file (its two readings) share one loaded detector and one scoring per batch.
        self.detectors: dict[str, Detector] = {file: self._load(e)
                                               for file, e in {e.file: e for e in bundle.spec.detectors}.items()}
        widths = [self.detectors[e.file].model_dim if e.window_level else 1 for e in bundle.spec.detectors]
        edges = np.cumsum([0, *widths])
        self.columns = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]

    def _load(self, entry: DetectorEntry) -> Detector:
        """A bundle's detector, refused at start unless it was fitted on the features the bundle says it scores."""
        cnn = entry.feature_source == "cnn"
        expected = self.bundle.spec.extractor_sha256 if cnn else logmel_extractor_sha256()
        detector = load_detector(self.bundle.path / entry.file, extractor_sha256=expected)
        dim = self._cnn().feature_dim if cnn else source_dim(entry.feature_source)
        if (detector.feature_source, detector.feature_dim) != (entry.feature_source, dim):
            raise ModelError(f"{detector.path}: fitted on {detector.feature_dim}-d {detector.feature_source} "
                             f"features, but the bundle scores it on {dim}-d {entry.feature_source}; recalibrate")
        if detector.window_level != entry.window_level:
            raise ModelError(f"{detector.path}: a {detector.kind} detector cannot be read at the "
                             f"{'window' if entry.window_level else 'patch'} level; recalibrate")
        return detector

    def _cnn(self) -> Extractor:
        if self.extractor is None:
            raise ModelError(f"{self.bundle.path}: a CNN detector, but the bundle names no feature extractor")
        return self.extractor

    def score(self, batch: PatchBatch) -> np.ndarray:
        """(patches, columns): each detector's block of columns for every patch."""
        entries = self.bundle.spec.detectors
        if len(batch) == 0:
            return np.empty((0, self.columns[-1].stop))
        features: dict[str, np.ndarray] = {}
        blocks: dict[str, np.ndarray] = {}
        for file, detector in self.detectors.items():
            source = detector.feature_source
            if source not in features and source not in FRAME_SOURCES:
                features[source] = (self._cnn().embed(batch.images) if source == "cnn"
                                    else PATCH_FEATURES[source].compute(batch))
            if detector.window_level:
                blocks[file] = detector.transform(features[source])
            elif source in FRAME_SOURCES:
                blocks[file] = frame_patch_scores(detector.score, source, batch.db)
            else:
                blocks[file] = detector.score(features[source])
        cap = self.bundle.spec.patch_score_cap
        return np.concatenate([blocks[e.file] if e.window_level else limit(standardise(blocks[e.file], e), cap)[:, None]
                               for e in entries], axis=1)

    def read(self, window_means: np.ndarray) -> np.ndarray:
        """Each detector's reading of windows (windows, detectors), in its normal standard deviations, from the
        windows' mean rows (windows, columns)."""
        readings = []
        for entry, columns in zip(self.bundle.spec.detectors, self.columns):
            means = window_means[:, columns]
            if entry.window_level:
                readings.append(standardise(self.detectors[entry.file].scorer.score(means), entry))
            else:
                readings.append(window_readings(means, [entry])[:, 0])
        return np.stack(readings, axis=1)


class PatchFeature(NamedTuple):
    compute: Callable[[PatchBatch], np.ndarray]  # a batch's patches -> (patches, dim)
    dim: int


# The numpy features of a patch that window detectors read, by feature source: the one table the board and
# calibration compute them from (the CNN's come from the extractor, frame rows from agent.signal.frames).
PATCH_FEATURES: dict[str, PatchFeature] = {
    MODULATION: PatchFeature(lambda batch: modulation_spectrum(batch.db), MODULATION_DIM),
    TONE: PatchFeature(lambda batch: tone_contrast(batch.spectrum), TONE_DIM),
}


def source_dim(source: str) -> int:
    """Values per patch (or per frame row) of a non-CNN feature source."""
    return PATCH_FEATURES[source].dim if source in PATCH_FEATURES else frame_dim(source)


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
    """Patch-level detectors' readings of windows (windows, detectors), from their window means of the same shape."""
    return np.stack([window_reading(window_means[:, j], entry) for j, entry in enumerate(entries)], axis=1)


def fuse(readings: np.ndarray, fusion: str) -> np.ndarray:
    """Window scores from the detectors' readings (windows, detectors): their mean, or the largest."""
    return readings.max(axis=1) if fusion == "max" else readings.mean(axis=1)


def detector_gates(entries: Sequence[DetectorEntry]) -> np.ndarray:
    """Each entry's gate, NaN for the entries that are averaged: what fuse_gated reads, built once per bundle."""
    return np.array([np.nan if e.gate is None else e.gate for e in entries])


def beyond_gate(readings: np.ndarray, gates: np.ndarray | float) -> np.ndarray:
    """How far readings reach past their gates, 0 below them: what a gated reading adds to a fused window score
    (the tone part's, the timing detector's), so that it is silent wherever the sound is normal to it."""
    return np.maximum(0.0, readings - gates)


def fuse_gated(readings: np.ndarray, gates: np.ndarray, fusion: str) -> np.ndarray:
    """Window scores from the detectors' readings (windows, detectors): the ungated ones fused, plus each gated
    one's reading beyond its gate (`gates`: detector_gates). A gated detector (a steady tone's) sees what the others
    miss; below its gate it leaves their score alone, so it adds no false alarms on sound they call normal."""
    averaged = np.isnan(gates)
    score = fuse(readings[:, averaged], fusion)
    if averaged.all():
        return score
    return score + beyond_gate(readings[:, ~averaged], gates[~averaged]).sum(axis=1)


def add_timing(fused: np.ndarray, timing: np.ndarray, gate: float) -> np.ndarray:
    """Fused window scores plus the timing detector's distance from normal beyond `gate`: a window at the wrong
    speed or pace alarms however normal its spectrum sounds, and normal timing leaves the fused score alone."""
    return fused + beyond_gate(timing, gate)


class WindowRows:
    """The last `size` rows of the PatchScorer in stream order, and their mean: the window a patch completes.

    Each row is written twice, at i and i + size of a (2·size, width) buffer, so the last `size` rows are always one
    contiguous slice in stream order: the mean is one reduction, with no copy of a list of rows into an array each
    patch, and summed in the same order as a (size, width) array of them."""

    def __init__(self, size: int, width: int) -> None:
        self.size = size
        self._rows = np.zeros((2 * size, width))
        self._count = 0

    def reset(self) -> None:
        self._count = 0

    def push(self, row: np.ndarray) -> None:
        at = self._count % self.size
        self._rows[at] = row
        self._rows[at + self.size] = row
        self._count += 1

    @property
    def full(self) -> bool:
        return self._count >= self.size

    def mean(self) -> np.ndarray:
        """(1, width): the mean of the last `size` rows, once `full`."""
        start = self._count % self.size
        return self._rows[start: start + self.size].mean(axis=0, keepdims=True)


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
        self.front_end = FrontEnd(bundle.spec.frontend)
        self._window = WindowRows(bundle.spec.window_patches, self.scorer.columns[-1].stop)
        self._names = [entry.name for entry in bundle.spec.detectors]
        self._gates = detector_gates(bundle.spec.detectors)
        self.timing = TimingModel.load(bundle.path / bundle.spec.timing.file) if bundle.spec.timing else None
        self.timing_profiles = StreamProfiles()

    def reset(self) -> None:
        self.front_end.reset()
        self._window.reset()
        self.timing_profiles.reset()

    def push(self, samples: np.ndarray) -> list[PatchScore]:
        batch = self.front_end.push(samples)
        if self.timing is None and batch is NO_PATCHES:  # 7 of every 8 microphone chunks: no other work
            return []
        profiles = self.timing_profiles.push(samples, batch.end_samples) if self.timing else [None] * len(batch)
        if len(batch) == 0:
            return []
        results = []
        for end, scores, profile in zip(batch.end_samples, self.scorer.score(batch), profiles):
            self._window.push(scores)
            seconds = float(end) / SAMPLE_RATE
            if not self._window.full:
                results.append(PatchScore(time=seconds, window_score=None))
                continue
            readings = self.scorer.read(self._window.mean())
            score = fuse_gated(readings, self._gates, self.bundle.spec.fusion)
            named = dict(zip(self._names, readings[0].tolist()))
            if profile is not None and self.timing is not None and self.bundle.spec.timing is not None:
                timing = self.timing.score(profile)
                score = add_timing(score, timing, self.bundle.spec.timing.gate)
                named[TIMING_NAME] = float(timing[0])
            results.append(PatchScore(time=seconds, window_score=float(score[0]), readings=named))
        return results


# The reference sound every bundle is checked with: 12 s, seeded, the same samples on every machine (numpy's PCG64).
REFERENCE_SECONDS = 12.0
REFERENCE_SEED = 20261205
# Largest difference, in normal standard deviations, between the window scores calibration recorded for the
# reference sound and what this runtime computes. int8 kernels of different runtimes and CPUs may round a step
# differently; a broken runtime, delegate or model moves scores by whole standard deviations.
KNOWN_ANSWER_TOLERANCE = 0.1


def reference_sound() -> np.ndarray:
    """Machine-like test sound: broadband noise, a pulsing 440 Hz hum with harmonics and a 3 Hz tick train."""
    rng = np.random.default_rng(REFERENCE_SEED)
    t = np.arange(int(REFERENCE_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    hum = sum(np.sin(2 * np.pi * 440 * k * t) / k for k in (1, 2, 3)) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    ticks = (np.sin(2 * np.pi * 3 * t) > 0.99) * rng.standard_normal(len(t))
    return (0.02 * rng.standard_normal(len(t)) + 0.05 * hum + 0.1 * ticks).astype(np.float32)


def reference_scores(pipeline: "Pipeline") -> list[float]:
    """The pipeline's window scores of the reference sound (the pipeline is reset before and after)."""
    pipeline.reset()
    scores = [r.window_score for r in pipeline.push(reference_sound()) if r.window_score is not None]
    pipeline.reset()
    return [float(s) for s in scores]


def check_known_answer(pipeline: "Pipeline") -> None:
    """Refuse (ModelError) a runtime that scores the reference sound otherwise than calibration did."""
    bundle = pipeline.bundle
    recorded = bundle.manifest.get("known_answer")
    if recorded is None:
        return  # a bundle from before known answers: nothing to compare with
    expected = np.asarray(recorded.get("window_scores", []), dtype=np.float64)
    got = np.asarray(reference_scores(pipeline))
    if expected.shape != got.shape:
        raise ModelError(f"{bundle.path}: known answer holds {expected.size} window scores, this humwatch computes "
                         f"{got.size}; recalibrate")
    difference = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not difference <= KNOWN_ANSWER_TOLERANCE:
        raise RuntimeMismatchError(
            f"{bundle.path}: this runtime scores the reference sound {difference:.3g} normal standard deviations away "
            f"from what calibration recorded (tolerance {KNOWN_ANSWER_TOLERANCE}): the model, the TFLite runtime or "
            "the CPU computes something else; check the install (tflite-runtime/ai-edge-litert version, delegate) or "
            "recalibrate on this board")
