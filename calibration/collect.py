"""Calibration audio: read WAV files or record the microphone, cut into blocks, refuse what cannot be normal.

A block is a stretch of contiguous audio (at most `BLOCK_SECONDS`, a whole short file) and the unit the
calibration splits by time into fitting and held-out parts. `survey` judges the blocks before any model runs:
silent or clipped audio, too little of it, or a sound whose level or spectrum drifts between the first and the
second half far beyond its variation within each half (a machine switched off, or changing speed, halfway).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

import numpy as np

from humwatch.agent.config import SensorConfig
from humwatch.agent.contract import SAMPLE_RATE
from humwatch.agent.errors import AudioError
from humwatch.agent.signal.audio import read_wav
from humwatch.agent.signal.mel import mel_db

log = logging.getLogger(__name__)

BLOCK_SECONDS = 20.0
SILENT_DBFS = -70.0  # below this RMS level a block holds no usable machine sound
CLIP_LEVEL = 0.999  # |sample| at or above this is taken as clipped (32735 of 32767 in 16-bit PCM)
CLIPPED_FRACTION_REFUSE = 1e-3  # more clipped samples than this distort the spectrum: refuse
CLIPPED_FRACTION_WARN = 1e-5
# Drift between halves: refused beyond both an absolute size and a multiple of the variation within each half.
DRIFT_SIGMAS = 5.0
LEVEL_DRIFT_REFUSE_DB = 6.0
LEVEL_DRIFT_WARN_DB = 3.0
SPECTRAL_DRIFT_REFUSE_DB = 6.0  # RMS over Mel bands of the change in spectral shape (level removed)
SPECTRAL_DRIFT_WARN_DB = 3.0
MIN_BLOCKS_FOR_DRIFT = 4


@dataclass
class Block:
    """Contiguous 16 kHz mono audio from one source, starting `start_s` seconds into it."""

    source: str
    start_s: float
    samples: np.ndarray
    whole_source: bool = False  # the block is all of its source (a short file)

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def name(self) -> str:
        """Where the block is, for messages: the file, plus the time span when it is part of a longer source."""
        if self.whole_source:
            return self.source
        return f"{self.source} {_mmss(self.start_s)}–{_mmss(self.start_s + self.seconds)}"


def named_as_anomaly(path: Path, given: Path | None = None) -> bool:
    """A recording whose name says it is not normal sound: anomaly_* or abnormal_*, or in an anomaly/ or abnormal/
    folder (the layout of MIMII and DCASE), counting the folders from `given` (the folder named on the command
    line, by default the file's own) down: what lies above it is the user's own filing."""
    marks = ("anomaly", "abnormal")
    given = path.parent if given is None else given
    folders = (given.name, *path.parent.relative_to(given).parts)
    return path.name.lower().startswith(marks) or any(folder.lower() in marks for folder in folders)


def wav_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The WAV files named, folders expanded to their *.wav files (recursively, sorted by path). A file named as an
    anomaly is refused: calibration learns normal sound, and one faulty clip among them teaches that the fault is
    normal."""
    found: list[tuple[Path, Path]] = []  # (file, the folder or file named)
    for item in map(Path, paths):
        if item.is_dir():
            inside = sorted(p for p in item.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
            if not inside:
                raise AudioError(f"{item}: folder holds no .wav files")
            found.extend((p, item) for p in inside)
        elif item.exists():
            found.append((item, item.parent))
        else:
            raise AudioError(f"{item}: no such file or folder")
    if not found:
        raise AudioError("no calibration audio given: name WAV files or folders, or use --record MINUTES")
    named = [p for p, given in found if named_as_anomaly(p, given)]
    if named:
        raise AudioError(f"{named[0]}: named as an anomaly; calibration learns normal sound only (rename it if it "
                         f"is normal){f', and {len(named) - 1} more' if len(named) > 1 else ''}")
    return [p for p, _ in found]


def wav_blocks(paths: Iterable[str | os.PathLike]) -> list[Block]:
    """Blocks of every WAV file named (files read one at a time through agent.signal.audio.read_wav)."""
    blocks: list[Block] = []
    for path in wav_paths(paths):
        blocks.extend(split_blocks(str(path), read_wav(path)))
    return blocks


def split_blocks(source: str, samples: np.ndarray, block_seconds: float = BLOCK_SECONDS) -> list[Block]:
    """Cut a source into blocks of `block_seconds`; a remainder shorter than half a block joins the last one."""
    size = int(round(block_seconds * SAMPLE_RATE))
    starts = list(range(0, len(samples), size))
    if len(starts) > 1 and len(samples) - starts[-1] < size // 2:
        starts.pop()
    ends = starts[1:] + [len(samples)]
    return [Block(source, s / SAMPLE_RATE, samples[s:e], whole_source=len(starts) == 1) for s, e in zip(starts, ends)]


@dataclass(frozen=True)
class Survey:
    """What the checks found in usable audio: per-block level and the warnings to show the technician."""

    seconds: float
    levels_dbfs: np.ndarray
    warnings: list[str]


def survey(blocks: list[Block]) -> Survey:
    """Check blocks for silence, clipping and drift; raise AudioError naming the block for unusable audio."""
    if not blocks:
        raise AudioError("no calibration audio")
    warnings: list[str] = []
    levels = np.array([level_dbfs(b.samples) for b in blocks])
    for block, level in zip(blocks, levels):
        if level < SILENT_DBFS:
            raise AudioError(f"{block.name}: silent (level {level:.0f} dBFS, below {SILENT_DBFS:.0f} dBFS); "
                             "is the machine running and the microphone connected?")
        clipped = clipped_fraction(block.samples)
        if clipped > CLIPPED_FRACTION_REFUSE:
            raise AudioError(f"{block.name}: clipped ({clipped:.2%} of samples at full scale); "
                             "lower the input gain or move the microphone away")
        if clipped > CLIPPED_FRACTION_WARN:
            warnings.append(f"{block.name}: {clipped:.4%} of samples at full scale (slight clipping)")
    if len(blocks) >= MIN_BLOCKS_FOR_DRIFT:
        profiles = np.stack([mel_db(b.samples).mean(axis=1) for b in blocks])
        warnings.extend(_drift_warnings(blocks, levels, profiles))
    for message in warnings:
        log.warning("%s", message)
    return Survey(seconds=float(sum(b.seconds for b in blocks)), levels_dbfs=levels, warnings=warnings)


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS)."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    return 20.0 * np.log10(max(rms, 1e-10))


def clipped_fraction(samples: np.ndarray) -> float:
    return float(np.mean(np.abs(samples) >= CLIP_LEVEL)) if len(samples) else 0.0


def _drift_warnings(blocks: list[Block], levels: np.ndarray, profiles: np.ndarray) -> list[str]:
    """Compare the first and second half of the blocks (in time order) against the spread within each half."""
    half = len(blocks) // 2
    span = f"between the first half (to {blocks[half - 1].name}) and the second half (from {blocks[half].name})"
    # Level: mean block level per half; spectral shape: mean Mel profile per half with its own level removed.
    level_change = abs(levels[half:].mean() - levels[:half].mean())
    level_spread = _pooled_std(levels[:half], levels[half:])
    shapes = profiles - profiles.mean(axis=1, keepdims=True)
    shape_delta = shapes[half:].mean(axis=0) - shapes[:half].mean(axis=0)
    shape_change = float(np.sqrt(np.mean(np.square(shape_delta))))
    shape_spread = float(np.sqrt(np.mean(np.square(_pooled_std(shapes[:half], shapes[half:])))))
    checks = [("level", level_change, level_spread, LEVEL_DRIFT_REFUSE_DB, LEVEL_DRIFT_WARN_DB),
              ("spectrum", shape_change, shape_spread, SPECTRAL_DRIFT_REFUSE_DB, SPECTRAL_DRIFT_WARN_DB)]
    warnings = []
    for what, change, spread, refuse_db, warn_db in checks:
        beyond_spread = change > DRIFT_SIGMAS * spread
        detail = (f"{what} changes by {change:.1f} dB {span}, against {spread:.1f} dB of variation within each "
                  "half")
        if beyond_spread and change > refuse_db:
            raise AudioError(f"{detail}: the sound is not steady enough for one model to call it normal; "
                             "calibrate while the machine runs in one steady state")
        if beyond_spread and change > warn_db:
            warnings.append(f"{detail}; alarms may follow the machine's state")
    return warnings


def _pooled_std(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Within-group standard deviation (along axis 0) pooled over the two halves."""
    dof = max(len(a) + len(b) - 2, 1)
    return np.sqrt((np.sum((a - a.mean(axis=0)) ** 2, axis=0) + np.sum((b - b.mean(axis=0)) ** 2, axis=0)) / dof)


def _mmss(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


# ---- microphone ----

METER_CELLS = 8
METER_FLOOR_DBFS = -64.0  # the empty meter; each cell is 8 dB
RECORD_STALL_SECONDS = SensorConfig().stall_seconds  # no audio this long: the device delivers nothing, as for the agent


def record(minutes: float, device: int | str | None = None, rate: int = SAMPLE_RATE, channels: int = 1,
           channel: int | str = 0, out: TextIO | None = None) -> np.ndarray:
    """Record `minutes` from an input device (PortAudio index, part of its name, or None: the default input) as
    16 kHz mono float32, drawing progress and a level meter on one line of `out` (default stderr).

    The device is captured exactly as the agent captures it (agent.service.capture.DeviceSource: `rate`, `channels`, the
    analysed `channel` or "mean"), so a bundle is calibrated on the sound the agent will hear. A device that delivers
    nothing for RECORD_STALL_SECONDS is an AudioError, not a wait without end.
    """
    from humwatch.agent.service.capture import DeviceSource

    out = out or sys.stderr
    if not minutes > 0:
        raise AudioError(f"--record {minutes}: the duration must be positive")
    stop, heard = threading.Event(), threading.Event()
    source = DeviceSource(stop, device, rate, channels, channel)
    source.open()
    threading.Thread(target=_stop_on_stall, args=(stop, heard), name="record-stall", daemon=True).start()
    pieces, got, wanted = [], 0, int(round(minutes * 60 * SAMPLE_RATE))
    try:
        for chunk in source:
            heard.set()
            pieces.append(chunk[: wanted - got])
            got += len(pieces[-1])
            out.write("\r" + meter_line(got / SAMPLE_RATE, wanted / SAMPLE_RATE, level_dbfs(chunk)))
            out.flush()
            if got >= wanted:
                break
    finally:
        stop.set()
        source.close()
        out.write("\n")
    if got < wanted:
        raise AudioError(f"{source.describe()}: no audio for {RECORD_STALL_SECONDS:g} s after "
                         f"{_mmss(got / SAMPLE_RATE)}; is the microphone connected and the device running?")
    return np.concatenate(pieces)


def _stop_on_stall(stop: threading.Event, heard: threading.Event) -> None:
    """Stop the recording when no audio arrives for RECORD_STALL_SECONDS (the capture waits for ever otherwise)."""
    while not stop.is_set():
        heard.clear()
        if not heard.wait(RECORD_STALL_SECONDS):
            stop.set()


def meter_line(elapsed_s: float, total_s: float, level: float) -> str:
    """`recording 01:23 / 05:00  level -23 dBFS ▮▮▮▮▮▯▯▯`"""
    shown = round(max(level, -99.0))  # the cells follow the number shown, so -40 always draws the same
    filled = int(np.clip((shown - METER_FLOOR_DBFS) / (-METER_FLOOR_DBFS / METER_CELLS), 0, METER_CELLS))
    return (f"recording {_mmss(elapsed_s)} / {_mmss(total_s)}  level {shown:3d} dBFS "
            f"{'▮' * filled}{'▯' * (METER_CELLS - filled)}")
