"""One calibration, in stages: audio blocks → checks → patches → TFLite features → held-out split → detector fit →
held-out window scores (scored by the board's own numpy scorer) → threshold → bundle (+ report).

Every stage runs the agent's own code (front end, extractor, scorer, window mean), so the threshold is set on
exactly the scores the agent will compute. The audio blocks stay in memory (10 min ≈ 38 MB) so that a later stage
can inject synthetic faults into the held-out blocks to choose between candidate pipelines.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from humwatch.agent.contract import PATCH_SECONDS, SAMPLE_RATE, WINDOW_PATCHES, FrontEndParams
from humwatch.agent.durable import write_atomic
from humwatch.agent.errors import AudioError, ConfigError, ModelError
from humwatch.agent.model.bundle import Bundle, PipelineSpec, write_bundle
from humwatch.agent.model.extractor import Extractor
from humwatch.agent.model.pipeline import (
    KNOWN_ANSWER_TOLERANCE,
    PATCH_FEATURES,
    Pipeline,
    check_known_answer,
    reference_scores,
)
from humwatch.agent.model.reference import (
    NormalReference,
    load_normal_reference,
    normal_reference,
    write_normal_reference,
)
from humwatch.agent.signal.frontend import clip_patches
from humwatch.agent.signal.mel import mel_db
from humwatch.calibration import window_knn
from humwatch.calibration.collect import Block, survey
from humwatch.calibration.report import write_report
from humwatch.calibration.selection import (
    PRESETS,
    WINDOW_KNN,
    Selection,
    choose_pipeline,
    prepare_clip,
    preset_uses_cnn,
)
from humwatch.calibration.threshold import (
    DEFAULT_FALSE_ALARMS_PER_DAY,
    HELDOUT_EVERY,
    MIN_HELDOUT_WINDOWS,
    Threshold,
    choose_threshold,
    heldout_mask,
)

log = logging.getLogger(__name__)

# The default: the window-level pipeline that ranked real faults best (docs/quality.md).
DEFAULT_PRESET = WINDOW_KNN
MIN_FIT_PATCHES = 100
# Below this many independent held-out windows (about 15 min of calibration) the threshold's tail rests on little:
# a recorded 5 min calibration gave 2 of 25 unheard normal clips above a one-a-week threshold.
STEADY_MINUTES = 15
# The least audio that can give MIN_HELDOUT_WINDOWS held-out windows, one block in HELDOUT_EVERY held out.
MIN_MINUTES = math.ceil(MIN_HELDOUT_WINDOWS * HELDOUT_EVERY * WINDOW_PATCHES * PATCH_SECONDS / 60)
STEADY_HELDOUT_WINDOWS = int(STEADY_MINUTES * 60 / (WINDOW_PATCHES * PATCH_SECONDS) / HELDOUT_EVERY)
SPECTROGRAM_SECONDS = 30.0
# window-knn scores every calibration window against the bank without its stretch: about a minute gives the
# MIN_HELDOUT_WINDOWS reference windows.
MIN_REFERENCE_MINUTES = math.ceil(MIN_HELDOUT_WINDOWS * WINDOW_PATCHES * PATCH_SECONDS / 60)


@dataclass
class Calibration:
    """What a calibration learned and measured; `summary_lines()` is the technician's text."""

    machine: str
    selection: Selection | window_knn.WindowKnnFit
    model_path: Path | None  # the CNN feature extractor, None when no candidate needed one
    extractor_sha256: str | None
    threshold: Threshold
    seconds: float
    sources: int
    fit_patches: int
    heldout_patches: int
    heldout_window_scores: np.ndarray
    fit_window_scores: np.ndarray
    warnings: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    bundle_dir: Path | None = None

    def stats(self) -> dict:
        """The calibration's statistics as stored in bundle.json."""
        held, fit = self.heldout_window_scores, self.fit_window_scores
        return {
            "seconds": round(self.seconds, 3), "sources": self.sources, "pipeline": self.selection.report(),
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
            self._patch_line(),
            *self._extractor_lines(),
            *self.selection.summary_lines(),
            f"alarm threshold: {t.high:.4g}  clear threshold: {t.low:.4g}  (standardised window score)",
            f"threshold method: {t.method} tail fit, final value set by {t.governed_by}",
            f"target false alarms per day: {t.target_false_alarms_per_day:.4g}  expected at this threshold: "
            f"{t.expected_false_alarms_per_day:.3g}  ({t.decisions_per_day:.0f} window decisions per day)",
            f"reference normal windows: median {np.median(self.heldout_window_scores):.3g}, "
            f"max {self.heldout_window_scores.max():.3g}",
        ]
        if self.bundle_dir is not None:
            lines.append(f"bundle: {self.bundle_dir}")
        lines += [f"warning: {w}" for w in self.warnings] or ["warnings: none"]
        return lines

    def _patch_line(self) -> str:
        t = self.threshold
        if isinstance(self.selection, window_knn.WindowKnnFit):
            return (f"patches: {self.fit_patches}, all in the bank; {t.heldout_scores} reference windows scored "
                    "without their stretch of sound")
        return (f"patches: {self.fit_patches} for fitting, {self.heldout_patches} held out "
                f"({t.heldout_windows} independent 10 s windows, {t.heldout_scores} window scores)")

    def _extractor_lines(self) -> list[str]:
        if self.model_path is None:
            return ["feature extractor: none (no candidate uses the CNN)"]
        used = "" if self.selection.uses_cnn else ", not used by the chosen pipeline: left out of the bundle"
        return [f"feature extractor: {self.model_path.name} (sha256 {self.extractor_sha256[:12]}{used})"]


def calibrate(blocks: list[Block], model_path: str | os.PathLike, out: str | os.PathLike | None,
              preset: str = DEFAULT_PRESET, false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY,
              machine: str = "", report: bool = True, report_dir: str | os.PathLike | None = None,
              num_threads: int = 1) -> Calibration:
    """Calibrate from normal-sound blocks and write the bundle to `out` (a bundle link path; None: no bundle).

    `preset` names the candidate pipelines (calibration.selection.PRESETS): "auto" chooses among all of them by
    synthetic faults injected into held-out normal blocks; "paper" is Müller et al.'s GMM-80 on CNN features.

    The report (PNG + text) is kept inside the bundle, and copied to `report_dir` when given.
    Raises AudioError for unusable audio, ModelError for models; nothing is written then.
    BLAS runs single-threaded meanwhile: its threads made the many small products of the front end and the
    scorer 4x slower on a busy 2-core machine (benchmarks/RESULTS.md, Calibration).
    """
    with threadpool_limits(limits=1):  # scikit-learn's own dependency
        return _calibrate(blocks, model_path, out, preset, false_alarms_per_day, machine, report, report_dir,
                          num_threads)


def _calibrate(blocks: list[Block], model_path: str | os.PathLike, out: str | os.PathLike | None, preset: str,
               false_alarms_per_day: float, machine: str, report: bool, report_dir: str | os.PathLike | None,
               num_threads: int) -> Calibration:
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r}: choose one of {', '.join(PRESETS)}")
    clock = _StageClock()
    with clock("checks"):
        checked = survey(blocks)
    # The CNN is loaded and run only when the preset uses it (not for the log-Mel presets).
    extractor = Extractor(model_path, num_threads=num_threads) if preset_uses_cnn(preset) else None
    params = FrontEndParams.from_dict(extractor.info["frontend"]) if extractor else FrontEndParams()
    sha256 = extractor.sha256 if extractor else None
    log.info("front end%s of %.1f min of audio", " and CNN features" if extractor else "", checked.seconds / 60)
    if preset == WINDOW_KNN:
        with clock("features"):
            features = [block_features(block, extractor, params) for block in blocks]
        with clock("fit"):
            fitted = window_knn.fit(features, sha256)
        with clock("threshold"):
            result = _threshold_on_references(fitted, [f.patches for f in features], false_alarms_per_day)
        selection: Selection | window_knn.WindowKnnFit = fitted
        pipeline_name = WINDOW_KNN
    else:
        with clock("features"):
            clips = [prepare_clip(block.samples, extractor, params) for block in blocks]
        held = heldout_mask([len(c.db) for c in clips])
        _require_enough(checked.seconds, [len(c.db) for c in clips], held)
        with clock("fit_and_select"):
            selection = choose_pipeline(clips, held, sha256, extractor, params, candidates=PRESETS[preset],
                                        false_alarms_per_day=false_alarms_per_day)
        with clock("threshold"):
            # the fitted detectors score through the board's own numpy scorers, as the agent's PatchScorer will
            result = _threshold_on_heldout([selection.window_scores(c) for c in clips], [len(c.db) for c in clips],
                                           held, false_alarms_per_day, selection.score_ceiling())
        pipeline_name = selection.chosen.name
    with tempfile.TemporaryDirectory(prefix="humwatch-calibrate-") as scratch:
        result.update(machine=machine, selection=selection, model_path=Path(model_path) if extractor else None,
                      extractor_sha256=sha256, seconds=checked.seconds,
                      sources=len({b.source for b in blocks}),
                      warnings=checked.warnings + selection.warnings
                      + _threshold_warnings(result["threshold"], pipeline_name),
                      stage_seconds=clock.seconds)
        calibration = Calibration(**result)
        with clock("report"):
            reports = _render_report(calibration, blocks, Path(scratch) / "report") if report else []
        # The copy first: a report folder that cannot be written must not leave a new bundle in use behind an error.
        if report_dir is not None:
            _copy_reports(reports, Path(report_dir))
        if out is not None:
            with clock("bundle"):
                try:
                    calibration.bundle_dir = write_bundle(out, *_spec(calibration, extractor, params),
                                                          _filler(selection, reports,
                                                                  normal_reference([b.samples for b in blocks])),
                                                          extractor=model_path if selection.uses_cnn else None,
                                                          known_answer=known_answer)
                except OSError as exc:
                    raise ModelError(f"{out}: cannot write the bundle ({exc.strerror or exc}); the bundle in use "
                                     "is unchanged") from None
            log.info("bundle written to %s (now %s)", out, calibration.bundle_dir)
    return calibration


def extend_bundle(blocks: list[Block], bundle_path: str | os.PathLike, false_alarms_per_day: float | None = None,
                  num_threads: int = 1) -> Calibration:
    """Add normal sound of a new operating condition (or alarm clips an operator marked normal) to a window-knn
    bundle: its windows join the banks, every leave-out reference and the threshold are recomputed, and a new bundle
    version replaces the old one atomically (`--rollback` restores it). Nothing is refitted: the transforms, and so
    the agent's meaning of a window, stay. `false_alarms_per_day`: None keeps the bundle's own."""
    with threadpool_limits(limits=1):
        clock = _StageClock()
        bundle = Bundle.load(bundle_path)
        if false_alarms_per_day is None:
            recorded = (bundle.manifest.get("threshold") or {}).get("target_false_alarms_per_day")
            false_alarms_per_day = float(recorded) if recorded else DEFAULT_FALSE_ALARMS_PER_DAY
        check_known_answer(Pipeline(bundle, num_threads))  # a runtime that computes otherwise must not extend it
        with clock("checks"):
            checked = survey(blocks)
        extractor = Extractor(bundle.extractor_path, num_threads=num_threads) if bundle.extractor_path else None
        with clock("features"):
            features = [block_features(block, extractor, bundle.spec.frontend) for block in blocks]
        with clock("fit"):
            fitted = window_knn.extend(bundle, features, checked.seconds)
        with clock("threshold"):
            result = _threshold_on_references(fitted, [f.patches for f in features], false_alarms_per_day)
        before = bundle.manifest.get("calibration", {})
        result["fit_patches"] = result["heldout_patches"] = before.get("fit_patches", 0) + result["fit_patches"]
        result.update(machine=bundle.machine, selection=fitted, model_path=bundle.extractor_path,
                      extractor_sha256=bundle.spec.extractor_sha256,
                      seconds=before.get("seconds", 0.0) + checked.seconds,
                      sources=before.get("sources", 0) + len({b.source for b in blocks}),
                      warnings=checked.warnings + _threshold_warnings(result["threshold"], WINDOW_KNN),
                      stage_seconds=clock.seconds)
        calibration = Calibration(**result)
        log.info("threshold %.4g -> %.4g after adding %.1f min of normal sound", bundle.spec.threshold_high,
                 calibration.threshold.high, checked.seconds / 60)
        spec = replace(bundle.spec, threshold_high=calibration.threshold.high,
                       threshold_low=calibration.threshold.low, **fitted.spec_fields())
        details = {"machine": bundle.machine, "threshold": calibration.threshold.to_dict(),
                   "extractor": bundle.manifest.get("extractor"), "calibration": calibration.stats()}
        try:
            calibration.bundle_dir = write_bundle(bundle_path, spec, details,
                                                  _filler(fitted, [], load_normal_reference(bundle.path)),
                                                  extractor=bundle.extractor_path, known_answer=known_answer)
        except OSError as exc:
            raise ModelError(f"{bundle_path}: cannot write the bundle ({exc.strerror or exc}); the bundle in use "
                             "is unchanged") from None
        return calibration


def known_answer(bundle: Bundle) -> dict:
    """What the agent must reproduce at start: the new bundle's window scores of the reference sound."""
    return {"window_scores": reference_scores(Pipeline(bundle)), "tolerance": KNOWN_ANSWER_TOLERANCE}


def _copy_reports(reports: list[Path], folder: Path) -> None:
    try:
        for path in reports:
            write_atomic(folder / path.name, path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot write the report there ({exc.strerror or exc})") from None


def _threshold_on_heldout(window_scores: list[np.ndarray], patch_counts: list[int], held: np.ndarray,
                          false_alarms_per_day: float, ceiling: float | None) -> dict:
    """Choose the threshold from the held-out blocks' window scores (every full window within each block, as the
    agent scores a stream)."""
    windows = {part: np.concatenate([w for w, h in zip(window_scores, held) if h == part] or [np.empty(0)])
               for part in (True, False)}
    independent = sum(n // WINDOW_PATCHES for n, h in zip(patch_counts, held) if h)
    threshold = choose_threshold(windows[True], independent, false_alarms_per_day, ceiling)
    log.info("threshold %.4g (clear %.4g) by %s for %.4g false alarms per day", threshold.high, threshold.low,
             threshold.governed_by, false_alarms_per_day)
    return {"threshold": threshold, "heldout_window_scores": windows[True], "fit_window_scores": windows[False],
            "heldout_patches": int(sum(n for n, h in zip(patch_counts, held) if h)),
            "fit_patches": int(sum(n for n, h in zip(patch_counts, held) if not h))}


def _threshold_on_references(fitted: window_knn.WindowKnnFit, patch_counts: list[int],
                              false_alarms_per_day: float) -> dict:
    """The threshold from the leave-out scores of every calibration window (window-knn: no block is held back from
    the bank)."""
    references = fitted.reference_scores
    if len(references) < MIN_HELDOUT_WINDOWS:
        raise AudioError(f"too little calibration audio: {len(references)} reference windows of 10 s; "
                         f"{MIN_HELDOUT_WINDOWS} are needed: give at least {MIN_REFERENCE_MINUTES} min of normal sound "
                         "(clips of 10 s or longer)")
    threshold = fitted.threshold(false_alarms_per_day)
    log.info("threshold %.4g (clear %.4g) by %s for %.4g false alarms per day", threshold.high, threshold.low,
             threshold.governed_by, false_alarms_per_day)
    return {"threshold": threshold, "heldout_window_scores": references, "fit_window_scores": np.empty(0),
            "heldout_patches": int(sum(patch_counts)), "fit_patches": int(sum(patch_counts))}


def block_features(block: Block, extractor: Extractor | None, params: FrontEndParams) -> window_knn.BlockFeatures:
    """A block's patch features for the window detectors; its images and samples are not kept."""
    batch = clip_patches(block.samples, params)
    features = {source: feature.compute(batch) for source, feature in PATCH_FEATURES.items()}
    if extractor is not None:
        features["cnn"] = extractor.embed(batch.images)
    return window_knn.BlockFeatures(block.source, features)


def _threshold_warnings(threshold: Threshold, detector: str) -> list[str]:
    messages = []
    if threshold.heldout_windows < STEADY_HELDOUT_WINDOWS:
        messages.append(f"the threshold rests on {threshold.heldout_windows} held-out windows: its false-alarm rate "
                        f"is a rough estimate, and a few quiet held-out minutes set it too low (false alarms); "
                        f"{STEADY_MINUTES} min of calibration or more give {STEADY_HELDOUT_WINDOWS} windows or more")
    if threshold.governed_by == "ceiling":
        rate = threshold.target_false_alarms_per_day
        messages.append(f"the {detector} detector's scores saturate below the threshold that {rate:.3g} false alarms "
                        "per day would need; the threshold is set halfway between the held-out maximum and the "
                        "saturation. Its false-alarm rate cannot be predicted (a Gaussian tail, blind to the "
                        f"saturation, says {threshold.expected_false_alarms_per_day:.2g} per day); the gmm detector "
                        "does not saturate")
    for message in messages:
        log.warning("%s", message)
    return messages


def _filler(selection: Selection | window_knn.WindowKnnFit, reports: list[Path], reference: NormalReference | None):
    """What write_bundle calls to put the detectors, the report and the normal reference (the evidence pictures'
    typical normal spectrogram, optional for the agent) into the new version directory."""
    def fill(directory: Path) -> None:
        selection.fill(directory)
        for path in reports:
            shutil.copyfile(path, directory / path.name)
        if reference is not None:
            write_normal_reference(directory, reference)
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
    spectrogram, title = _spectrogram_excerpt(blocks)
    return list(write_report(folder, result.summary_lines(), result.threshold, result.heldout_window_scores,
                             result.fit_window_scores, spectrogram, title))


def _require_enough(seconds: float, patch_counts: list[int], held: np.ndarray) -> None:
    """Refuse audio too short for both a detector fit and enough held-out windows, saying how much is needed."""
    counts = np.array(patch_counts)
    heldout_windows = int(np.sum(counts[held] // WINDOW_PATCHES))
    fit_patches = int(counts[~held].sum())
    if heldout_windows >= MIN_HELDOUT_WINDOWS and fit_patches >= MIN_FIT_PATCHES:
        return
    window_s = WINDOW_PATCHES * PATCH_SECONDS
    raise AudioError(
        f"too little calibration audio: {seconds / 60:.1f} min gives {heldout_windows} held-out windows of "
        f"{window_s:.1f} s (one block in {HELDOUT_EVERY} is held out, never fitted) and {fit_patches} fitting "
        f"patches; {MIN_HELDOUT_WINDOWS} held-out windows and {MIN_FIT_PATCHES} fitting patches are needed: "
        f"give at least {MIN_MINUTES} min of normal sound (clips of 10 s or longer)")


def _spec(result: Calibration, extractor: Extractor | None, params: FrontEndParams) -> tuple[PipelineSpec, dict]:
    """The bundle's spec and the details beside it; a pipeline without CNN detectors names no extractor, so the
    agent never loads TFLite for it."""
    cnn = None
    if result.selection.uses_cnn:
        cnn = {"source": result.model_path.name, "feature_dim": extractor.feature_dim,
               **{k: extractor.info[k] for k in ("architecture", "precision") if k in extractor.info}}
    spec = PipelineSpec(frontend=params, threshold_high=result.threshold.high, threshold_low=result.threshold.low,
                        window_patches=WINDOW_PATCHES, extractor_sha256=extractor.sha256 if cnn else None,
                        **result.selection.spec_fields())
    return spec, {"machine": result.machine, "threshold": result.threshold.to_dict(), "extractor": cnn,
                  "calibration": result.stats()}


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
    title = f"calibration audio, first {seconds:.0f} s: {used[0]}" + (f" ... {used[-1]}" if len(used) > 1 else "")
    return mel_db(np.concatenate(pieces)), title
