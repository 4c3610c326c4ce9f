"""One calibration, in stages: audio blocks → checks → patches → TFLite features → held-out split → detector fit →
held-out window scores (scored by the board's own numpy scorer) → threshold → bundle (+ report).

Every stage runs the agent's own code (front end, extractor, scorer, window mean), so the threshold is set on
exactly the scores the agent will compute. The audio blocks stay in memory (10 min ≈ 38 MB) so that a later stage
can inject synthetic faults into the held-out blocks to choose between candidate pipelines.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from agent.bundle import write_bundle
from agent.errors import AudioError
from agent.extractor import Extractor
from agent.frontend import clip_patches
from agent.mel import mel_db
from agent.scorers import Detector, load_detector, window_mean
from agent.spec import PATCH_SECONDS, SAMPLE_RATE, WINDOW_PATCHES, FrontEndParams
from calibration.collect import Block, survey
from calibration.detectors import fit_detector
from calibration.threshold import (DEFAULT_FALSE_ALARMS_PER_DAY, HELDOUT_EVERY, MIN_HELDOUT_WINDOWS, Threshold,
                                   choose_threshold, heldout_mask)

log = logging.getLogger(__name__)

DETECTOR_FILE = "detector.npz"
MIN_FIT_PATCHES = 100
SPECTROGRAM_SECONDS = 30.0


@dataclass
class Calibration:
    """What a calibration learned and measured; `summary_lines()` is the technician's text."""

    machine: str
    detector: str
    model_path: Path
    extractor_sha256: str
    threshold: Threshold
    seconds: float
    sources: int
    fit_patches: int
    heldout_patches: int
    heldout_window_scores: np.ndarray
    fit_window_scores: np.ndarray
    score_mean: float  # held-out patch score mean/std: the detector's scores are standardised by them
    score_std: float
    warnings: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    bundle_dir: Path | None = None

    def stats(self) -> dict:
        """The calibration's statistics as stored in bundle.json."""
        held, fit = self.heldout_window_scores, self.fit_window_scores
        return {
            "seconds": round(self.seconds, 3), "sources": self.sources, "detector": self.detector,
            "fit_patches": self.fit_patches, "heldout_patches": self.heldout_patches,
            "heldout_every": HELDOUT_EVERY, "heldout_window_scores": len(held),
            "heldout_score_median": float(np.median(held)), "heldout_score_max": float(held.max()),
            "fit_score_max": float(fit.max()) if len(fit) else None,
            "fit_windows_above_threshold": int(np.sum(fit > self.threshold.high)),
            "warnings": list(self.warnings), "stage_seconds": dict(self.stage_seconds),
        }

    def summary_lines(self) -> list[str]:
        t = self.threshold
        lines = [
            f"machine: {self.machine or '(unnamed)'}",
            f"audio used: {self.seconds / 60:.1f} min from {self.sources} source(s)",
            f"patches: {self.fit_patches} for fitting, {self.heldout_patches} held out "
            f"({t.heldout_windows} independent 10 s windows, {t.heldout_scores} window scores)",
            f"detector: {self.detector} on {self.model_path.name} (sha256 {self.extractor_sha256[:12]})",
            f"alarm threshold: {t.high:.4g}  clear threshold: {t.low:.4g}  (standardised window score)",
            f"threshold method: {t.method} tail fit, final value set by {t.governed_by}",
            f"target false alarms per day: {t.target_false_alarms_per_day:.4g}  expected at this threshold: "
            f"{t.expected_false_alarms_per_day:.3g}  ({t.decisions_per_day:.0f} window decisions per day)",
            f"held-out normal windows: median {np.median(self.heldout_window_scores):.3g}, "
            f"max {self.heldout_window_scores.max():.3g}",
        ]
        if self.bundle_dir is not None:
            lines.append(f"bundle: {self.bundle_dir}")
        lines += [f"warning: {w}" for w in self.warnings] or ["warnings: none"]
        return lines


def calibrate(blocks: list[Block], model_path: str | os.PathLike, out: str | os.PathLike | None,
              detector: str = "gmm", false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY,
              machine: str = "", report: bool = True, report_dir: str | os.PathLike | None = None,
              num_threads: int = 1) -> Calibration:
    """Calibrate from normal-sound blocks and write the bundle to `out` (a bundle link path; None: no bundle).

    The report (PNG + text) is kept inside the bundle, and copied to `report_dir` when given.
    Raises AudioError for unusable audio, ModelError for models; nothing is written then.
    BLAS runs single-threaded meanwhile: its threads made the many small products of the front end and the
    scorer 4x slower on a busy 2-core machine (benchmarks/RESULTS.md, Calibration).
    """
    with threadpool_limits(limits=1):  # scikit-learn's own dependency
        return _calibrate(blocks, model_path, out, detector, false_alarms_per_day, machine, report, report_dir,
                          num_threads)


def _calibrate(blocks: list[Block], model_path: str | os.PathLike, out: str | os.PathLike | None, detector: str,
               false_alarms_per_day: float, machine: str, report: bool, report_dir: str | os.PathLike | None,
               num_threads: int) -> Calibration:
    clock = _StageClock()
    with clock("checks"):
        checked = survey(blocks)
    extractor = Extractor(model_path, num_threads=num_threads)
    params = FrontEndParams.from_dict(extractor.info["frontend"])
    with clock("front_end"):
        images = [clip_patches(block.samples, params).images for block in blocks]
    held = heldout_mask([len(i) for i in images])
    _require_enough(checked.seconds, images, held)
    with clock("features"):
        log.info("embedding %d patches from %.1f min of audio", sum(map(len, images)), checked.seconds / 60)
        features = []
        for i in range(len(images)):
            features.append(extractor.embed(images[i]))
            images[i] = None  # the images of 10 min take 14 MB; from here only the features are needed
    with clock("fit"):
        fit_features = np.concatenate([f for f, h in zip(features, held) if not h])
        fitted = fit_detector(detector, fit_features, extractor.sha256)
    with tempfile.TemporaryDirectory(prefix="humwatch-calibrate-") as scratch:
        detector_path = Path(scratch) / DETECTOR_FILE
        with clock("threshold"):
            fitted.save(detector_path)
            scorer = load_detector(detector_path, extractor_sha256=extractor.sha256)  # the board's own scorer
            result = _threshold_on_heldout([scorer.score(f) for f in features], held, false_alarms_per_day,
                                           _score_ceiling(scorer))
        result.update(machine=machine, detector=detector, model_path=Path(model_path),
                      extractor_sha256=extractor.sha256, seconds=checked.seconds,
                      sources=len({b.source for b in blocks}),
                      warnings=checked.warnings + _threshold_warnings(result["threshold"], detector),
                      stage_seconds=clock.seconds)
        calibration = Calibration(**result)
        with clock("report"):
            reports = _render_report(calibration, blocks, Path(scratch) / "report") if report else []
        if out is not None:
            with clock("bundle"):
                calibration.bundle_dir = write_bundle(out, _manifest(calibration, extractor, params),
                                                      _filler(detector_path, reports), extractor=model_path)
            log.info("bundle written to %s (now %s)", out, calibration.bundle_dir)
        if report_dir is not None:
            Path(report_dir).mkdir(parents=True, exist_ok=True)
            for path in reports:
                shutil.copyfile(path, Path(report_dir) / path.name)
    return calibration


def _threshold_on_heldout(patch_scores: list[np.ndarray], held: np.ndarray, false_alarms_per_day: float,
                          ceiling: float | None) -> dict:
    """Standardise patch scores by the held-out ones, mean-pool them into windows within each block (as the agent
    does on a stream), and choose the threshold from the held-out windows."""
    held_patch = np.concatenate([s for s, h in zip(patch_scores, held) if h])
    mean, std = float(held_patch.mean()), float(held_patch.std())
    std = std if std > 0 else 1.0
    windows = {part: np.concatenate([window_mean((s - mean) / std) for s, h in zip(patch_scores, held) if h == part]
                                    or [np.empty(0)]) for part in (True, False)}
    independent = sum(len(s) // WINDOW_PATCHES for s, h in zip(patch_scores, held) if h)
    threshold = choose_threshold(windows[True], independent, false_alarms_per_day,
                                 None if ceiling is None else (ceiling - mean) / std)
    log.info("threshold %.4g (clear %.4g) by %s for %.4g false alarms per day", threshold.high, threshold.low,
             threshold.governed_by, false_alarms_per_day)
    return {"threshold": threshold, "heldout_window_scores": windows[True], "fit_window_scores": windows[False],
            "score_mean": mean, "score_std": std, "heldout_patches": len(held_patch),
            "fit_patches": int(sum(len(s) for s, h in zip(patch_scores, held) if not h))}


def _threshold_warnings(threshold: Threshold, detector: str) -> list[str]:
    if threshold.governed_by != "ceiling":
        return []
    rate = threshold.target_false_alarms_per_day
    message = (f"the {detector} detector's scores saturate below the threshold that {rate:.3g} false alarms per day "
               "would need; the threshold is set halfway between the held-out maximum and "
               "the saturation. Its false-alarm rate cannot be predicted (a Gaussian tail, blind to the saturation, "
               f"says {threshold.expected_false_alarms_per_day:.2g} per day); the gmm detector does not saturate")
    log.warning("%s", message)
    return [message]


def _score_ceiling(detector: Detector) -> float | None:
    """The largest patch score a detector can give, or None if unbounded: an RBF OC-SVM scores
    -(sum_i dual_i k(z, sv_i) + intercept) with dual_i >= 0 and 0 < k <= 1, so at most -intercept."""
    if detector.kind == "ocsvm" and np.all(detector.scorer.dual_coef >= 0):
        return -detector.scorer.intercept
    return None


def _filler(detector_path: Path, reports: list[Path]):
    """What write_bundle calls to put the detector and the report into the new version directory."""
    def fill(directory: Path) -> None:
        for path in [detector_path, *reports]:
            shutil.copyfile(path, directory / path.name)
    return fill


class _StageClock:
    """Wall-clock seconds per calibration stage, for the report and the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - start, 3)


def _render_report(result: Calibration, blocks: list[Block], folder: Path) -> list[Path]:
    from calibration.report import write_report  # matplotlib only when a report is made

    spectrogram, title = _spectrogram_excerpt(blocks)
    return list(write_report(folder, result.summary_lines(), result.threshold, result.heldout_window_scores,
                             result.fit_window_scores, spectrogram, title))


def _require_enough(seconds: float, images: list[np.ndarray], held: np.ndarray) -> None:
    """Refuse audio too short for both a detector fit and enough held-out windows, saying how much is needed."""
    counts = np.array([len(i) for i in images])
    heldout_windows = int(np.sum(counts[held] // WINDOW_PATCHES))
    fit_patches = int(counts[~held].sum())
    if heldout_windows >= MIN_HELDOUT_WINDOWS and fit_patches >= MIN_FIT_PATCHES:
        return
    window_s = WINDOW_PATCHES * PATCH_SECONDS
    needed_min = MIN_HELDOUT_WINDOWS * HELDOUT_EVERY * window_s / 60
    raise AudioError(
        f"too little calibration audio: {seconds / 60:.1f} min gives {heldout_windows} held-out windows of "
        f"{window_s:.1f} s (one block in {HELDOUT_EVERY} is held out, never fitted) and {fit_patches} fitting "
        f"patches; {MIN_HELDOUT_WINDOWS} held-out windows and {MIN_FIT_PATCHES} fitting patches are needed: "
        f"give at least {needed_min:.0f} min of normal sound (clips of 10 s or longer)")


def _manifest(result: Calibration, extractor: Extractor, params: FrontEndParams) -> dict:
    info = extractor.info
    return {
        "machine": result.machine,
        "frontend": params.to_dict(),
        "window_patches": WINDOW_PATCHES,
        "fusion": "mean",
        "detectors": [{"file": DETECTOR_FILE, "kind": result.detector, "feature_source": "cnn",
                       "score_mean": result.score_mean, "score_std": result.score_std}],
        "threshold": result.threshold.to_dict(),
        "extractor": {"sha256": extractor.sha256, "source": result.model_path.name,
                      "feature_dim": extractor.feature_dim,
                      **{k: info[k] for k in ("architecture", "precision") if k in info}},
        "calibration": result.stats(),
    }


def _spectrogram_excerpt(blocks: list[Block]) -> tuple[np.ndarray, str]:
    """Mel dB of the first SPECTROGRAM_SECONDS of calibration audio, and a title naming where it comes from."""
    limit = int(SPECTROGRAM_SECONDS * SAMPLE_RATE)
    pieces, used, total = [], [], 0
    for block in blocks:
        if total >= limit:
            break
        pieces.append(block.samples[: limit - total])
        used.append(Path(block.source).name if block.whole_source else block.name)
        total += len(pieces[-1])
    seconds = total / SAMPLE_RATE
    title = f"calibration audio, first {seconds:.0f} s: {used[0]}" + (f" … {used[-1]}" if len(used) > 1 else "")
    return mel_db(np.concatenate(pieces)), title
