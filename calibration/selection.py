"""Per-machine choice of the scoring pipeline at calibration, from normal sound only.

Which pipeline detects faults best depends on the machine (Müller et al. 2020, finding 4), and a technician has no
recordings of this machine's faults. So: fit every candidate (`calibration.candidates`) on the fitting part of the
machine's normal clips, inject synthetic faults (`calibration.faults`: tones, band noise, impacts, amplitude and
speed modulation, at several strengths) into its own held-out normal clips, and keep the candidate that would alarm
on most faulted windows at the threshold calibration would give it for the target false-alarm rate (averaged over
the fault kinds; ROC AUC breaks ties). The operating point matters: an alarm system lives in the far low-false-alarm
corner of the ROC curve, where a pipeline with the better AUC can catch fewer faults. The documented default is
kept unless the best catches clearly more (`margin` more and `ratio` times as many): a small lead on synthetic
faults is not worth leaving it. Real anomalies never enter: this module sees normal clips only.

Cost on the board: each clip's patches and CNN features are computed once and shared by all candidates; only the
faulted copies (at most `max_fault_clips` windows of about 10 s) go through the front end and the CNN again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from humwatch.agent.contract import WINDOW_PATCHES, WINDOW_SAMPLES, FrontEndParams
from humwatch.agent.model.bundle import DetectorEntry, TimingEntry
from humwatch.agent.model.pipeline import add_timing, fuse, limit, standardise, window_readings
from humwatch.agent.model.scorers import window_mean
from humwatch.agent.model.timing import DEFAULT_GATE, Profiles, TimingModel, fit_timing, window_ends, window_profiles
from humwatch.agent.signal.frontend import clip_patches
from humwatch.calibration.candidates import CANDIDATES, CNN, PARTS, Candidate, Part, fit_part, score_part
from humwatch.calibration.detectors import FittedDetector
from humwatch.calibration.export import write_npz_atomic
from humwatch.calibration.faults import FAULT_KINDS, fault_grid, inject
from humwatch.calibration.threshold import DEFAULT_FALSE_ALARMS_PER_DAY, choose_threshold
from humwatch.calibration.window_knn import PRESET as WINDOW_KNN

log = logging.getLogger(__name__)

# What the "auto" preset keeps unless another patch candidate catches clearly more synthetic faults at its own
# threshold: a share larger by DEFAULT_MARGIN and at least DEFAULT_RATIO times the default's. A lead of a few of
# the 30 faulted windows is noise. Synthetic faults do not predict real ones (docs/quality.md): "auto" is opt-in.
DEFAULT_CANDIDATE = "fusion-timing"
TIMING_FILE = "timing.npz"
DEFAULT_MARGIN = 0.05
DEFAULT_RATIO = 2.0
# `humwatch calibrate --preset NAME`: the default, window-knn, is the window-level pipeline of
# calibration.window_knn (no patch candidates); "auto" chooses among every patch candidate by synthetic faults; a
# candidate's name fits that one alone ("paper" is the reproducible configuration of Müller et al. 2020).
PRESETS = {WINDOW_KNN: (), "auto": tuple(CANDIDATES), **{name: (name,) for name in CANDIDATES}}


def preset_uses_cnn(preset: str) -> bool:
    """Whether the preset needs the CNN features (the log-Mel presets do not)."""
    return preset == WINDOW_KNN or any(CANDIDATES[name].uses_cnn() for name in PRESETS[preset])


# Faulted windows per calibration: every fault of the default grid (5 kinds x 3 strengths) twice.
MAX_FAULT_CLIPS = 30


@dataclass(frozen=True)
class Injection:
    """A synthetic fault: `label` groups injections for the per-kind AUC; `apply` returns a faulted copy."""

    label: str
    apply: Callable[[np.ndarray], np.ndarray]


def default_injections(seed: int = 0) -> list[Injection]:
    """Every fault kind of `calibration.faults` at every strength."""
    return [Injection(f.kind, lambda x, f=f: inject(x, f)) for f in fault_grid(seed)]


@dataclass
class NormalClip:
    """One block of normal sound as every candidate sees it: samples, dB patches, (if a CNN is used) features, and
    the timing profiles of its full windows (agent.model.timing)."""

    samples: np.ndarray
    db: np.ndarray
    cnn: np.ndarray | None
    timing: Profiles


def clip_timing(samples: np.ndarray) -> Profiles:
    """The timing profiles of every full window of a clip, as the board's Pipeline computes them on a stream."""
    return window_profiles(samples, window_ends(len(samples)))


def prepare_clip(samples: np.ndarray, extractor, params: FrontEndParams) -> NormalClip:
    """Front end (and CNN, when `extractor` is given) of one block of 16 kHz mono samples."""
    batch = clip_patches(samples, params)
    cnn = extractor.embed(batch.images) if extractor is not None else None
    return NormalClip(np.asarray(samples, dtype=np.float32), batch.db, cnn, clip_timing(samples))


@dataclass(frozen=True)
class CandidateScore:
    name: str
    detection: float  # share of faulted windows above the candidate's own alarm threshold, mean over fault kinds
    auc: float  # mean over fault kinds
    per_fault: dict[str, float]  # detection rate per fault kind


@dataclass
class Selection:
    """The chosen pipeline, fitted, with everything a bundle and the calibration report need."""

    chosen: Candidate
    reason: str
    default: str
    margin: float
    ratio: float
    table: list[CandidateScore]
    fitted: dict[str, FittedDetector]  # part name -> detector fitted on the fitting clips
    entries: dict[str, DetectorEntry]  # part name -> its bundle entry: held-out normal mean and std, centre
    timing: TimingModel | None = None  # fitted when a candidate uses it
    fault_clips: int = 0
    heldout_windows: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def uses_cnn(self) -> bool:
        return self.chosen.uses_cnn()

    @property
    def fusion(self) -> str:
        return self.chosen.fusion

    def spec_fields(self) -> dict:
        """The chosen candidate's part of the bundle's PipelineSpec: detectors, fusion, cap and timing."""
        timing = TimingEntry(TIMING_FILE, DEFAULT_GATE) if self.chosen.timing else None
        return {"fusion": self.fusion, "patch_score_cap": self.chosen.patch_score_cap,
                "detectors": tuple(self.entries[p] for p in self.chosen.parts), "timing": timing}

    def fill(self, directory: Path) -> None:
        """Save the chosen candidate's detector files into a bundle directory (the `fill` of write_bundle)."""
        for file, p in {PARTS[p].file: p for p in self.chosen.parts}.items():
            self.fitted[p].save(Path(directory) / file)
        if self.chosen.timing:
            write_npz_atomic(Path(directory) / TIMING_FILE, self.timing.arrays())

    def detector_scores(self, clip: NormalClip, candidate: str | None = None) -> np.ndarray:
        """(patches, parts) standardised, limited patch scores of the chosen (or another fitted) candidate: the
        numbers the board's PatchScorer gives for the bundle."""
        chosen = self._candidate(candidate)
        return _limited(chosen, _standardised(self, _raw_scores(self.fitted, chosen.parts, clip)))

    def window_scores(self, clip: NormalClip, candidate: str | None = None) -> np.ndarray:
        """The scores of every full window of the clip, as the board's Pipeline gives them on a stream."""
        return self._fused(self._candidate(candidate), window_mean(self.detector_scores(clip, candidate)),
                           clip.timing)

    def clip_score(self, clip: NormalClip, candidate: str | None = None) -> float:
        """One score for a whole clip, read as one window (a 10 s clip is one window: the paper's clip score)."""
        means = self.detector_scores(clip, candidate).mean(axis=0, keepdims=True)
        return float(self._fused(self._candidate(candidate), means, clip.timing.take(slice(0, 1)))[0])

    def _candidate(self, name: str | None) -> Candidate:
        return CANDIDATES[name] if name else self.chosen

    def _fused(self, candidate: Candidate, window_means: np.ndarray, profiles: Profiles) -> np.ndarray:
        """Window scores from the windows' detector means and timing profiles. A clip shorter than a window is one
        window of patch means without a profile, so without a timing reading."""
        fused = fuse(window_readings(window_means, [self.entries[p] for p in candidate.parts]), candidate.fusion)
        if not candidate.timing or len(profiles) == 0:
            return fused
        return add_timing(fused, self.timing.score(profiles), DEFAULT_GATE)

    def score_ceiling(self, candidate: str | None = None) -> float | None:
        """The largest window score the chosen (or another fitted) candidate can give, or None if unbounded. An RBF
        OC-SVM scores -(sum_i dual_i k(z, sv_i) + intercept) with dual_i >= 0 and 0 < k <= 1, so at most
        -intercept (standardised here as the bundle standardises it); a GMM is unbounded, unless its pipeline caps
        each patch score (agent.model.pipeline.limit), and a two-sided reading is unbounded anyway: it counts the distance
        below its centre, where patch scores have no bound."""
        chosen = self._candidate(candidate)
        ceilings = []
        if chosen.timing:
            return None  # the timing reading has no bound
        for part in chosen.parts:
            limits = [x for x in (self._ocsvm_ceiling(part), chosen.patch_score_cap) if x is not None]
            if not limits or self.entries[part].window_centre is not None:
                return None
            ceilings.append(min(limits))
        return max(ceilings) if chosen.fusion == "max" else float(np.mean(ceilings))

    def _ocsvm_ceiling(self, part: str) -> float | None:
        fitted, entry = self.fitted[part], self.entries[part]
        if fitted.kind != "ocsvm" or not np.all(fitted.board_detector.scorer.dual_coef >= 0):
            return None
        return (-fitted.board_detector.scorer.intercept - entry.score_mean) / entry.score_std

    def report(self) -> dict:
        """For bundle.json's `calibration` section and the technician's report."""
        return {"chosen": self.chosen.name, "reason": self.reason, "default": self.default, "margin": self.margin,
                "ratio": self.ratio,
                "fault_clips": self.fault_clips, "heldout_windows": self.heldout_windows,
                "candidates": {s.name: {"detection": round(s.detection, 4), "auc": round(s.auc, 4),
                                        **{k: round(v, 4) for k, v in s.per_fault.items()}}
                               for s in self.table}}

    def summary_lines(self) -> list[str]:
        lines = [f"pipeline: {self.chosen.name} ({self.reason})"]
        if len(self.table) > 1:
            lines.append(f"synthetic faults caught at each candidate's own threshold ({self.heldout_windows} "
                         f"held-out normal windows, {self.fault_clips} faulted copies), and ROC AUC:")
            width = max(len(s.name) for s in self.table)
            lines += [f"  {s.name:<{width}}  caught {s.detection:.2f}  AUC {s.auc:.3f}  "
                      + " ".join(f"{k} {v:.2f}" for k, v in s.per_fault.items()) for s in self.table]
        return lines


def choose_pipeline(clips: Sequence[NormalClip], held: np.ndarray, extractor_sha256: str | None = None,
                    extractor=None, params: FrontEndParams | None = None,
                    candidates: Sequence[str] = tuple(CANDIDATES), default: str = DEFAULT_CANDIDATE,
                    margin: float = DEFAULT_MARGIN, ratio: float = DEFAULT_RATIO,
                    injections: Sequence[Injection] | None = None,
                    max_fault_clips: int = MAX_FAULT_CLIPS, seed: int = 0,
                    false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY) -> Selection:
    """Fit the candidates on the clips where `held` is False, and choose one by synthetic faults in the others:
    the one that catches most of them at the threshold it would get for `false_alarms_per_day`.

    `extractor` (an `agent.model.extractor.Extractor`, with `params` its front end) embeds the faulted copies; without
    it, only candidates without a CNN are considered. A single candidate is fitted and returned without faults
    (a preset such as "paper").
    """
    params = params or FrontEndParams()
    held = np.asarray(held, dtype=bool)
    if len(held) != len(clips) or held.all() or not held.any():
        raise ValueError("held must mark some but not all clips as held out")
    unknown = [c for c in (*candidates, default) if c not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown candidate(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
    has_cnn = extractor_sha256 is not None and all(c.cnn is not None for c in clips)
    usable = [CANDIDATES[c] for c in candidates if has_cnn or not CANDIDATES[c].uses_cnn()]
    if not usable:
        raise ValueError("every candidate needs CNN features, and none were given")
    fit_clips = [c for c, h in zip(clips, held) if not h]
    heldout = [c for c, h in zip(clips, held) if h]
    parts = _parts_of(usable)
    by_detector: dict[str, FittedDetector] = {}
    for p in parts:
        detector = PARTS[p].detector
        if detector not in by_detector:
            by_detector[detector] = _fit(detector, fit_clips, extractor_sha256, seed)
    fitted = {p: by_detector[PARTS[p].detector] for p in parts}
    timing = (fit_timing(Profiles.stack([c.timing for c in fit_clips]), Profiles.stack([c.timing for c in heldout]))
              if any(c.timing for c in usable) else None)
    selection = Selection(chosen=usable[0], reason="the only candidate", default=default, margin=margin, ratio=ratio,
                          table=[], fitted=fitted, entries={}, timing=timing)
    heldout_raw = [_raw_scores(fitted, parts, c) for c in heldout]
    for p in parts:
        selection.entries[p] = _entry(PARTS[p], [raw[p] for raw in heldout_raw])
    normal = [_windows(selection, usable, raw, c.timing) for raw, c in zip(heldout_raw, heldout)]
    selection.heldout_windows = sum(len(w[usable[0].name]) for w in normal)
    if len(usable) == 1:
        return selection
    if extractor is None and any(c.uses_cnn() for c in usable):
        raise ValueError("choosing among CNN candidates needs the extractor to embed the faulted clips")
    faulted = _faulted_windows(selection, usable, heldout, extractor, params,
                               list(injections) if injections is not None else default_injections(seed),
                               max_fault_clips, seed)
    selection.fault_clips = len(faulted)
    selection.table = [_candidate_score(c.name, normal, faulted, false_alarms_per_day) for c in usable]
    _decide(selection, usable)
    log.info("pipeline %s (%s); %s", selection.chosen.name, selection.reason,
             ", ".join(f"{s.name} caught {s.detection:.2f} AUC {s.auc:.3f}" for s in selection.table))
    return selection


def _fit(part: str, clips: list[NormalClip], extractor_sha256: str | None, seed: int) -> FittedDetector:
    cnn = np.concatenate([c.cnn for c in clips]) if PARTS[part].feature_source == CNN else None
    return fit_part(PARTS[part], cnn, np.concatenate([c.db for c in clips]), extractor_sha256, seed)


def _entry(part: Part, heldout_raw: list[np.ndarray]) -> DetectorEntry:
    """The part's bundle entry: standardised on its held-out normal patch scores; a two-sided part centred on the
    mean of the held-out windows."""
    raw = np.concatenate(heldout_raw)
    entry = DetectorEntry(part.file, part.kind, part.feature_source, score_mean=float(raw.mean()),
                          score_std=float(raw.std()) or 1.0, name=part.name)
    if not part.two_sided:
        return entry
    means = np.concatenate([_window_means(standardise(r, entry)[:, None])[:, 0] for r in heldout_raw])
    return replace(entry, window_centre=float(means.mean()))


def _window_means(scores: np.ndarray) -> np.ndarray:
    """(windows, parts) means of a clip's (patches, parts) scores over its non-overlapping windows; a clip shorter
    than a window is one window."""
    n = len(scores) // WINDOW_PATCHES
    if n == 0:
        return scores.mean(axis=0, keepdims=True)
    return scores[: n * WINDOW_PATCHES].reshape(n, WINDOW_PATCHES, -1).mean(axis=1)


def _raw_scores(fitted: dict[str, FittedDetector], parts: Sequence[str], clip: NormalClip) -> dict[str, np.ndarray]:
    """Each part's raw patch scores on a clip; parts reading one fitted detector score it once."""
    by_detector: dict[str, np.ndarray] = {}
    for p in parts:
        if PARTS[p].detector not in by_detector:
            by_detector[PARTS[p].detector] = score_part(PARTS[p], fitted[p], clip.cnn, clip.db)
    return {p: by_detector[PARTS[p].detector] for p in parts}


def _standardised(selection: Selection, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {p: standardise(r, selection.entries[p]) for p, r in raw.items()}


def _windows(selection: Selection, usable: list[Candidate], raw: dict[str, np.ndarray],
             profiles: Profiles) -> dict[str, np.ndarray]:
    """Per candidate: the scores of a clip's non-overlapping windows (a shorter clip is one window), from the
    clip's raw patch scores of every part the candidates use and the timing profiles of its full windows."""
    scores = _standardised(selection, raw)
    apart = profiles.take(slice(0, None, WINDOW_PATCHES))
    return {c.name: selection._fused(c, _window_means(_limited(c, scores)), apart) for c in usable}


def _parts_of(candidates: Sequence[Candidate]) -> list[str]:
    """Every part the candidates use, once, in order."""
    return list(dict.fromkeys(p for c in candidates for p in c.parts))


def _limited(candidate: Candidate, scores: dict[str, np.ndarray]) -> np.ndarray:
    """(patches, parts): the candidate's standardised patch scores, limited to its cap."""
    return limit(np.stack([scores[p] for p in candidate.parts], axis=1), candidate.patch_score_cap)


def _faulted_windows(selection: Selection, usable: list[Candidate], heldout: list[NormalClip], extractor,
                     params: FrontEndParams, injections: list[Injection], budget: int,
                     seed: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(label, window scores per candidate) of faulted copies of the held-out clips' first windows.

    Injection i goes into held-out clip order[i mod H], cycling the clips in a seeded order, so every fault lands on
    several clips and every clip carries several faults when the budget allows.
    """
    order = np.random.default_rng(seed).permutation(len(heldout))
    parts = _parts_of(usable)
    embedder = extractor if any(c.uses_cnn() for c in usable) else None
    out = []
    for i in range(min(budget, max(len(injections), 1) * len(heldout))):
        injection = injections[i % len(injections)]
        source = heldout[order[(i + i // len(heldout)) % len(heldout)]]
        copy = prepare_clip(injection.apply(source.samples[:WINDOW_SAMPLES]), embedder, params)
        raw = _raw_scores(selection.fitted, parts, copy)
        out.append((injection.label, {k: v[:1] for k, v in _windows(selection, usable, raw, copy.timing).items()}))
    return out


def _candidate_score(name: str, normal: list[dict[str, np.ndarray]],
                     faulted: list[tuple[str, dict[str, np.ndarray]]], false_alarms_per_day: float) -> CandidateScore:
    """How many faulted windows the candidate would alarm on at the threshold calibration would give it, and
    (second) its ROC AUC. An alarm system works at one point of the ROC curve, far in its low-false-alarm corner:
    a pipeline with the better AUC can catch fewer faults there (measured on the shared real clips, README)."""
    normal_scores = np.concatenate([w[name] for w in normal])
    threshold = choose_threshold(normal_scores, len(normal_scores), false_alarms_per_day).high
    labels = [k for k in FAULT_KINDS if any(lab == k for lab, _ in faulted)]
    labels += sorted({lab for lab, _ in faulted} - set(labels))
    caught, aucs = {}, []
    for label in labels:
        fault_scores = np.concatenate([w[name] for lab, w in faulted if lab == label])
        caught[label] = float(np.mean(fault_scores > threshold))
        y = np.r_[np.zeros(len(normal_scores)), np.ones(len(fault_scores))]
        aucs.append(float(roc_auc_score(y, np.r_[normal_scores, fault_scores])))
    return CandidateScore(name, float(np.mean(list(caught.values()))), float(np.mean(aucs)), caught)


def leaves_default(best_caught: float, default_caught: float, margin: float = DEFAULT_MARGIN,
                   ratio: float = DEFAULT_RATIO) -> bool:
    """Whether a candidate catching `best_caught` of the synthetic faults replaces a default catching
    `default_caught`: only when it catches clearly more, `margin` more and `ratio` times as many."""
    return best_caught - default_caught >= margin and best_caught >= ratio * default_caught


def _decide(selection: Selection, usable: list[Candidate]) -> None:
    best = max(selection.table, key=lambda s: (s.detection, s.auc))  # ties: the earlier candidate
    default = {s.name: s for s in selection.table}.get(selection.default)
    if default is None:
        choice, reason = best.name, (f"catches most synthetic faults ({best.detection:.2f}); default "
                                     f"{selection.default} unusable")
    elif best.name == default.name:
        choice, reason = default.name, f"default, catches most synthetic faults ({best.detection:.2f})"
    elif leaves_default(best.detection, default.detection, selection.margin, selection.ratio):
        choice, reason = best.name, (f"catches clearly more synthetic faults ({best.detection:.2f}) than default "
                                     f"{default.name} ({default.detection:.2f})")
    else:
        choice, reason = default.name, (f"default: {best.name} catches {best.detection:.2f} of the synthetic "
                                        f"faults against {default.detection:.2f}, not {selection.margin} more and "
                                        f"{selection.ratio:g} times as many")
    selection.chosen = CANDIDATES[choice]
    selection.reason = reason
