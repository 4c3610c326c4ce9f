"""The default pipeline: a window's mean features against a bank of every normal window heard in calibration.

Two detectors, each the distance of a 10 s window's mean features to the nearest normal window of the bank (k = 1):
- `modulation-knn`: the log-Mel modulation spectrum (agent.signal.modulation), standardised per value;
- `cnn-knn`: the CNN features, projected on the bank's top principal components, not standardised (the raw
  features' large values are where the CNN is sure; standardising weighs its noise alike).
Each detector's distance is standardised by the leave-out distances of the calibration's own windows (every block's
windows measured against the bank without its stretch of sound), and the two are averaged: the window score the
threshold is set on. A third, gated detector, `tone-knn` (agent.signal.tone: each narrow band's peak over its
neighbours in the fine FFT spectrum, standardised per value), hears a steady whine the two average away: its
standardised distance is added beyond a gate of GATE_FACTOR × its largest leave-out reference, so it leaves the
score of every window it finds as normal as the calibration's own alone (and the threshold with it). Why this and
not the paper's patch GMM: on real recordings with labelled faults it ranked faults above normal sound best, and it
keeps every normal condition in the bank, so normal sound of a new condition can be added later without refitting
(`extend`). docs/quality.md holds the figures.

A bank window is the mean of 18 consecutive patches, as the agent averages them; a block shorter than a window is one
window of its patches. The bank keeps at most `BANK_CAP` windows (a larger stride through long calibrations).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from humwatch.agent.contract import SCHEMA_VERSION, WINDOW_PATCHES, logmel_extractor_sha256
from humwatch.agent.errors import AudioError, ModelError
from humwatch.agent.model.bundle import MODULATION, TONE, Bundle, DetectorEntry
from humwatch.agent.model.pipeline import detector_gates, fuse_gated, standardise
from humwatch.agent.model.scorers import Detector, DetectorArrays, load_detector, nearest_distances
from humwatch.agent.npz import read_npz
from humwatch.calibration.export import write_npz_atomic
from humwatch.calibration.threshold import MIN_THRESHOLD_SCORES, Threshold, choose_threshold

log = logging.getLogger(__name__)

PRESET = "window-knn"
BANK_ARRAYS = ("bank", "bank_groups", "bank_stride")
BANK_CAP = 3500
CNN_COMPONENTS = 128
# Blocks of one source are left out together in stretches of this many: neighbouring blocks of one recording sound
# alike, and a block measured against its own neighbours would set the threshold too low.
STRETCH_BLOCKS = 3
MIN_GROUPS = 4
# A gated part's gate, in multiples of its largest leave-out reference reading: twice the farthest any normal
# calibration window stood from the rest of the bank.
GATE_FACTOR = 2.0


@dataclass(frozen=True)
class WindowPart:
    name: str
    feature_source: str
    standardise: bool
    components: int | None = None
    gated: bool = False  # added beyond its gate, not averaged (agent.model.pipeline.fuse_gated)

    @property
    def file(self) -> str:
        return f"{self.name}.npz"


PARTS = (WindowPart("modulation-knn", MODULATION, standardise=True),
         WindowPart("cnn-knn", "cnn", standardise=False, components=CNN_COMPONENTS),
         WindowPart("tone-knn", TONE, standardise=True, gated=True))


@dataclass
class BlockFeatures:
    """What the window detectors need of one block of normal sound: its patch features per source."""

    source: str  # the recording it came from: blocks of one source are grouped into stretches
    features: dict[str, np.ndarray]  # feature source -> (patches, dim)

    @property
    def patches(self) -> int:
        return len(next(iter(self.features.values())))


def rolling_means(rows: np.ndarray, stride: int = 1) -> np.ndarray:
    """Means of every WINDOW_PATCHES consecutive rows, starting every `stride` rows; fewer rows make one window."""
    if len(rows) < WINDOW_PATCHES:
        return rows.mean(axis=0, keepdims=True)
    sums = np.cumsum(np.vstack([np.zeros((1, rows.shape[1])), np.asarray(rows, np.float64)]), axis=0)
    starts = np.arange(0, len(rows) - WINDOW_PATCHES + 1, stride)
    return (sums[starts + WINDOW_PATCHES] - sums[starts]) / WINDOW_PATCHES


def stretch_groups(sources: list[str]) -> np.ndarray:
    """A group id per block: consecutive blocks of one source in stretches of STRETCH_BLOCKS, or of fewer blocks
    when that would leave fewer than MIN_GROUPS groups to leave out in turn."""
    def assign(size: int) -> np.ndarray:
        groups, last, run, g = [], None, 0, -1
        for source in sources:
            if source != last or run == size:
                g, run, last = g + 1, 0, source
            groups.append(g)
            run += 1
        return np.array(groups, dtype=np.int64)

    for size in range(STRETCH_BLOCKS, 1, -1):
        groups = assign(size)
        if groups.max() + 1 >= MIN_GROUPS:
            return groups
    return assign(1)


def leave_out_distances(bank: np.ndarray, groups: np.ndarray, stride: int) -> np.ndarray:
    """Distance of each group's reference windows to the bank without that group: the normal spread the threshold
    is set on. A group's reference windows are its non-overlapping bank windows."""
    step = max(1, math.ceil(WINDOW_PATCHES / stride))
    distances = []
    for g in np.unique(groups):
        own = groups == g
        if own.all():
            raise AudioError("a leave-out reference needs normal sound from at least two stretches of recording")
        reference = bank[np.flatnonzero(own)[::step]]
        distances.append(nearest_distances(reference, bank[~own]))
    return np.concatenate(distances)


@dataclass
class WindowKnnFit:
    """The fitted window detectors, their leave-out reference scores and everything a bundle needs."""

    arrays: dict[str, dict[str, np.ndarray]]  # part name -> the detector .npz arrays
    entries: dict[str, DetectorEntry]
    reference_scores: np.ndarray  # fused leave-out scores of the calibration windows
    part_references: dict[str, np.ndarray]
    groups: int
    warnings: list[str] = field(default_factory=list)
    added: list[dict] = field(default_factory=list)  # what `extend` added, for the manifest

    uses_cnn = True
    fusion = "mean"

    @property
    def bank_windows(self) -> int:
        return len(next(iter(self.arrays.values()))["bank"])

    def threshold(self, false_alarms_per_day: float) -> Threshold:
        if len(self.reference_scores) < MIN_THRESHOLD_SCORES:
            raise AudioError(f"too little calibration audio: {len(self.reference_scores)} reference window(s); "
                             f"give at least {MIN_THRESHOLD_SCORES} windows of 10 s")
        return choose_threshold(self.reference_scores, len(self.reference_scores), false_alarms_per_day)

    def spec_fields(self) -> dict:
        """This pipeline's part of the bundle's PipelineSpec."""
        return {"fusion": self.fusion, "patch_score_cap": None, "timing": None,
                "detectors": tuple(self.entries[p.name] for p in PARTS if p.name in self.entries)}

    def fill(self, directory: Path) -> None:
        for part in PARTS:
            if part.name in self.arrays:
                write_npz_atomic(Path(directory) / part.file, self.arrays[part.name])

    def report(self) -> dict:
        return {"chosen": PRESET, "reason": "the default", "bank_windows": self.bank_windows,
                "leave_out_groups": self.groups, "reference_windows": len(self.reference_scores),
                "gates": {name: e.gate for name, e in self.entries.items() if e.gate is not None},
                "added": list(self.added)}

    def summary_lines(self) -> list[str]:
        gates = [f"{name} adds beyond {e.gate:.3g}" for name, e in self.entries.items() if e.gate is not None]
        lines = [f"pipeline: {PRESET} (modulation spectrum and CNN features, nearest of {self.bank_windows} normal "
                 f"windows{'; ' if gates else ''}{', '.join(gates)} normal standard deviations: a steady tone)",
                 f"reference: {len(self.reference_scores)} windows, each scored without its stretch of sound "
                 f"({self.groups} stretches)"]
        lines += [f"added normal sound: {a['seconds'] / 60:.1f} min from {a['sources']} source(s)" for a in self.added]
        return lines


def fit(blocks: list[BlockFeatures], extractor_sha256: str) -> WindowKnnFit:
    """Fit both window detectors on normal blocks: transforms from the bank's windows, bank, leave-out references."""
    groups = stretch_groups([b.source for b in blocks])
    arrays = {}
    for part in PARTS:
        raw = [b.features[part.feature_source] for b in blocks]
        stride = _stride(raw)
        windows = np.concatenate([rolling_means(r, stride) for r in raw])
        base = {**_header(part, windows.shape[1], extractor_sha256), **_transform_arrays(part, windows)}
        arrays[part.name] = _with_bank(base, _transformer(base), raw, groups, stride)
    return _referenced(arrays, extractor_sha256, added=[])


def extend(bundle: Bundle, blocks: list[BlockFeatures], seconds: float) -> WindowKnnFit:
    """The bundle's window detectors with the windows of new normal blocks added to their banks (transforms kept),
    and every leave-out reference recomputed: normal sound of a new operating condition, without refitting."""
    if not bundle.spec.detectors or any(not e.window_level for e in bundle.spec.detectors):
        raise ModelError(f"{bundle.path}: calibrate --add extends a bundle of the {PRESET} preset; this bundle holds "
                         f"{', '.join(e.name for e in bundle.spec.detectors)}: calibrate again with --preset {PRESET}")
    arrays = {}
    for part in PARTS:
        entry = next((e for e in bundle.spec.detectors if e.name == part.name), None)
        if entry is None and part.gated:
            continue  # a bundle from before this part: extended as it is (calibrate again to add it)
        if entry is None:
            raise ModelError(f"{bundle.path}: no {part.name} detector; calibrate again with this humwatch")
        old = read_npz(bundle.path / entry.file, "detector")
        detector = load_detector(bundle.path / entry.file)
        stride = int(old["bank_stride"])
        first = int(old["bank_groups"].max()) + 1
        new = [b.features[part.feature_source] for b in blocks]
        base = {k: v for k, v in old.items() if k not in BANK_ARRAYS}
        added = _with_bank(base, detector, new, first + stretch_groups([b.source for b in blocks]), stride)
        arrays[part.name] = {**old, "bank": np.vstack([old["bank"], added["bank"]]),
                             "bank_groups": np.concatenate([old["bank_groups"], added["bank_groups"]])}
    previous = bundle.manifest.get("calibration", {}).get("pipeline", {}).get("added", [])
    sources = len({b.source for b in blocks})
    return _referenced(arrays, bundle.spec.extractor_sha256,
                       added=[*previous, {"seconds": round(seconds, 3), "sources": sources}])


def gate(references: np.ndarray) -> float:
    """A gated part's gate from its standardised leave-out readings: GATE_FACTOR × the largest (at least 0)."""
    return GATE_FACTOR * max(0.0, float(np.max(references)))


def _stride(raw: list[np.ndarray]) -> int:
    windows = sum(max(1, len(r) - WINDOW_PATCHES + 1) for r in raw)
    return max(1, math.ceil(windows / BANK_CAP))


def _transform_arrays(part: WindowPart, windows: np.ndarray) -> dict[str, np.ndarray]:
    """The detector's feature transform, learnt from the bank's raw windows: standardisation, or a projection on
    their principal components (centred, not whitened)."""
    dim = windows.shape[1]
    if part.standardise:
        scale = windows.std(axis=0)
        return {"scaler_mean": windows.mean(axis=0), "scaler_scale": np.where(scale > 0, scale, 1.0)}
    centre = windows.mean(axis=0)
    _, _, vt = np.linalg.svd(windows - centre, full_matrices=False)
    return {"scaler_mean": np.zeros(dim), "scaler_scale": np.ones(dim),
            "projection_mean": centre, "projection_matrix": vt[: min(part.components, len(vt))]}


def _header(part: WindowPart, dim: int, extractor_sha256: str) -> dict[str, np.ndarray]:
    sha = extractor_sha256 if part.feature_source == "cnn" else logmel_extractor_sha256()
    return {"schema_version": np.array(SCHEMA_VERSION, np.int64), "kind": np.array("knn"),
            "feature_dim": np.array(dim, np.int64), "extractor_sha256": np.array(sha),
            "feature_source": np.array(part.feature_source)}


def _transformer(base: dict[str, np.ndarray]) -> Detector:
    """The board's own Detector for these arrays (with a one-window placeholder bank): calibration computes its bank
    with exactly the code the agent runs."""
    dim = len(base["projection_matrix"]) if "projection_matrix" in base else int(base["feature_dim"])
    placeholder = {"bank": np.zeros((1, dim)), "bank_groups": np.zeros(1, np.int64),
                   "bank_stride": np.array(1, np.int64)}
    return Detector(DetectorArrays(Path(f"<{base['feature_source']} window detector>"), {**base, **placeholder}))


def _with_bank(base: dict[str, np.ndarray], detector: Detector, raw: list[np.ndarray], groups: np.ndarray,
               stride: int) -> dict[str, np.ndarray]:
    """The detector arrays with the bank of these blocks' windows, in the detector's transformed space."""
    banks = [rolling_means(detector.transform(r), stride) for r in raw]
    return {**base, "bank": np.concatenate(banks).astype(np.float32),
            "bank_groups": np.repeat(groups, [len(b) for b in banks]).astype(np.int64),
            "bank_stride": np.array(stride, np.int64)}


def _referenced(arrays: dict[str, dict[str, np.ndarray]], extractor_sha256: str | None,
                added: list[dict]) -> WindowKnnFit:
    """Leave-out reference distances per part, the entries standardised on them, and the fused reference scores."""
    entries, references = {}, {}
    parts = [p for p in PARTS if p.name in arrays]
    for part in parts:
        a = arrays[part.name]
        distances = leave_out_distances(np.asarray(a["bank"], np.float64), a["bank_groups"], int(a["bank_stride"]))
        references[part.name] = distances
        spread = float(distances.std(ddof=1)) if len(distances) > 1 else 0.0
        entry = DetectorEntry(part.file, "knn", part.feature_source, score_mean=float(distances.mean()),
                              score_std=spread if spread > 0 else 1.0, name=part.name)
        if part.gated:
            entry = replace(entry, gate=gate(standardise(distances, entry)))
        entries[part.name] = entry
    readings = np.stack([standardise(references[p.name], entries[p.name]) for p in parts], axis=1)
    fused = fuse_gated(readings, detector_gates([entries[p.name] for p in parts]), "mean")
    groups = len(np.unique(arrays[PARTS[0].name]["bank_groups"]))
    log.info("window kNN: bank of %d windows, %d leave-out reference windows from %d stretches",
             len(arrays[PARTS[0].name]["bank"]), len(fused), groups)
    return WindowKnnFit(arrays=arrays, entries=entries, reference_scores=fused, part_references=references,
                        groups=groups, added=added)
