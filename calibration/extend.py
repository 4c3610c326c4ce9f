"""Extend a machine's normal sound with more clips and recalibrate the bundle in place (a new version; the one in use
stays for `calibrate --rollback`, and nothing changes when the calibration fails).

`humwatch calibrate --add-evidence` calls `extend_bundle` with the alarm clips an operator marked normal. The
machine's earlier normal sound is the audio the bundle was calibrated on: the WAV files its manifest records
(`calibration.source_files`), or the WAV files/folders given again on the command line.
"""
from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Sequence

from humwatch.agent.errors import ConfigError
from humwatch.agent.model.bundle import Bundle
from humwatch.agent.paths import default_model

log = logging.getLogger(__name__)


def recorded_sources(bundle: Bundle) -> list[pathlib.Path]:
    """The calibration WAV files a bundle's manifest names that still exist."""
    calibration = bundle.manifest.get("calibration") or {}
    named = [pathlib.Path(p) for p in calibration.get("source_files") or []]
    missing = [p for p in named if not p.is_file()]
    if missing:
        log.warning("%d of the bundle's %d calibration files are gone (e.g. %s); calibrating without them",
                    len(missing), len(named), missing[0])
    return [p for p in named if p.is_file()]


def extend_bundle(bundle_dir: str | os.PathLike, wav_paths: Sequence[str | os.PathLike],
                  base_sources: Sequence[str | os.PathLike] | None = None, model_path: str | os.PathLike | None = None,
                  preset: str | None = None, false_alarms_per_day: float | None = None, num_threads: int = 1):
    """Recalibrate the bundle at `bundle_dir` on its normal sound plus `wav_paths`; returns the Calibration."""
    from humwatch.calibration.calibrate import DEFAULT_PRESET, calibrate
    from humwatch.calibration.collect import wav_blocks

    bundle = Bundle.load(bundle_dir)
    base = [pathlib.Path(p) for p in base_sources] if base_sources else recorded_sources(bundle)
    if not base:
        raise ConfigError(f"{bundle_dir}: the bundle records no calibration audio that still exists; give the "
                          "machine's normal WAV files or folders again with the command")
    added = [pathlib.Path(p).resolve() for p in wav_paths]
    sources = list(dict.fromkeys([*[p.resolve() for p in base], *added]))  # each file once
    model = model_path or (bundle.extractor_path if bundle.extractor_path is not None else default_model())
    threshold = bundle.manifest.get("threshold") or {}
    rate = false_alarms_per_day or threshold.get("target_false_alarms_per_day")
    log.info("recalibrating %s on %d earlier sources and %d added clips", bundle_dir, len(base), len(added))
    kwargs = {"false_alarms_per_day": float(rate)} if rate else {}
    return calibrate(wav_blocks(sources), model, bundle_dir, preset=preset or DEFAULT_PRESET,
                     machine=bundle.machine, report=False, num_threads=num_threads, **kwargs)
