"""The bundle's typical normal spectrogram: what an evidence picture shows under the alarm's sound.

The median Mel dB spectrogram over calibration windows of REFERENCE_FRAMES frames, quantised to uint8 over its
own dB range (64 x 312 bytes, about 20 kB). Calibration writes it into the bundle as an optional member; a bundle
without it still works, and its pictures show the alarm's sound alone.
"""
from __future__ import annotations

import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from humwatch.agent.contract import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE
from humwatch.agent.durable import write_atomic
from humwatch.agent.errors import ModelError
from humwatch.agent.npz import read_npz
from humwatch.agent.signal.mel import frame_count, mel_db

REFERENCE_FILE = "normal_reference.npz"
REFERENCE_FRAMES = 312  # about 5 s of frames
MAX_WINDOWS = 120  # windows the median is taken over, spread evenly over the calibration audio


@dataclass(frozen=True)
class NormalReference:
    db: np.ndarray  # (N_MELS, REFERENCE_FRAMES) float32, dequantised
    windows: int  # calibration windows the median was taken over

    @property
    def seconds(self) -> float:
        return self.db.shape[1] * HOP_LENGTH / SAMPLE_RATE


def normal_reference(clips: Sequence[np.ndarray]) -> NormalReference | None:
    """The median Mel dB spectrogram over windows of the clips (16 kHz float samples); None when no clip is long
    enough for one window. Only the chosen windows are kept, and the median is taken band by band: calibration
    calls this with all its audio on a small board."""
    starts = [range(0, frame_count(len(samples) + N_FFT // 2 * 2) - REFERENCE_FRAMES + 1, REFERENCE_FRAMES)
              for samples in clips]  # mel_db's centred frames
    total = sum(len(r) for r in starts)
    if total == 0:
        return None
    chosen = set(np.linspace(0, total - 1, min(total, MAX_WINDOWS)).round().astype(int).tolist())
    windows, index = [], 0
    for samples, positions in zip(clips, starts):
        wanted = [s for i, s in enumerate(positions, index) if i in chosen]
        index += len(positions)
        if wanted:
            db = mel_db(samples)
            windows += [db[:, s: s + REFERENCE_FRAMES].copy() for s in wanted]
    stack = np.stack(windows)
    median = np.stack([np.median(stack[:, band], axis=0) for band in range(stack.shape[1])]).astype(np.float32)
    return NormalReference(median, len(windows))


def write_normal_reference(directory: str | pathlib.Path, reference: NormalReference) -> pathlib.Path:
    """Save the reference into a bundle version directory, quantised to uint8."""
    low, high = float(reference.db.min()), float(reference.db.max())
    span = max(high - low, 1e-6)
    levels = np.round((reference.db - low) / span * 255).astype(np.uint8)
    return write_atomic(pathlib.Path(directory) / REFERENCE_FILE, lambda f: np.savez_compressed(
        f, levels=levels, db_low=np.array(low), db_high=np.array(low + span),
        windows=np.array(reference.windows, dtype=np.int64)))


def load_normal_reference(bundle_dir: str | pathlib.Path) -> NormalReference | None:
    """The reference kept in a bundle, or None when the bundle has none; a damaged one is a ModelError."""
    path = pathlib.Path(bundle_dir) / REFERENCE_FILE
    if not path.exists():
        return None
    arrays = read_npz(path, "normal reference")
    try:
        levels, low, high = arrays["levels"], float(arrays["db_low"]), float(arrays["db_high"])
        windows = int(arrays["windows"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: not a normal reference ({exc})") from None
    if levels.dtype != np.uint8 or levels.ndim != 2 or levels.shape[0] != N_MELS or not high > low:
        raise ModelError(f"{path}: levels must be uint8 ({N_MELS}, frames) over a dB range, not {levels.dtype} "
                         f"{levels.shape} over {low}..{high}")
    return NormalReference((low + levels.astype(np.float32) / 255 * (high - low)).astype(np.float32), windows)
