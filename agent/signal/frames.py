"""Frame-level features of the dB patches, for detectors that model the Mel frames directly instead of a CNN.

- "logmel-frames": every 64-band frame of a patch (64 rows of 64 values).
- "logmel-dynamics": each frame's first and second difference to the frames before it, the deltas and
  delta-deltas speech and speaker models have long added to their frames: 62 rows of 128 values per patch, the
  first two frames of a patch only serving as history. They carry what one frame cannot: amplitude modulation at
  the shaft rate, ticks and impacts, a fluctuating leak. They leave out the frame itself: a detector on the
  spectrum and one on its dynamics, each standardised, detect more than one detector on both (the spectrum's 64
  values are outweighed by 128 differences in a joint likelihood; benchmarks/RESULTS.md).

Rows are computed inside each patch alone, so a patch's rows do not depend on the patch before it and the
stream and a recording give the same rows. A patch scores the mean of its rows' scores.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from humwatch.agent.contract import N_MELS, PATCH_FRAMES


def logmel_frames(db: np.ndarray) -> np.ndarray:
    """(n, mels, frames) dB patches → (n, frames, mels)."""
    return db.transpose(0, 2, 1)


def logmel_dynamics(db: np.ndarray) -> np.ndarray:
    """(n, mels, frames) dB patches → (n, frames - 2, 2 * mels): [first difference, second difference]."""
    frames = db.transpose(0, 2, 1)
    first = frames[:, 1:] - frames[:, :-1]
    second = first[:, 1:] - first[:, :-1]
    return np.concatenate([first[:, 1:], second], axis=2)


FRAME_SOURCES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "logmel-frames": logmel_frames,
    "logmel-dynamics": logmel_dynamics,
}


def frame_rows(source: str, db: np.ndarray) -> np.ndarray:
    """The rows a frame-level detector of `source` scores for dB patches (n, mels, frames): (n * rows, dim)."""
    rows = FRAME_SOURCES[source](np.asarray(db))
    return rows.reshape(-1, rows.shape[2])


def frame_dim(source: str) -> int:
    """How many values a row of `source` has, from the row function itself (no second table to keep in step)."""
    return frame_rows(source, np.zeros((1, N_MELS, PATCH_FRAMES), np.float32)).shape[1]


def patch_means(row_scores: np.ndarray, n_patches: int) -> np.ndarray:
    """A patch's score from its rows' scores: their mean."""
    return row_scores.reshape(n_patches, -1).mean(axis=1)


def frame_patch_scores(score_rows: Callable[[np.ndarray], np.ndarray], source: str, db: np.ndarray) -> np.ndarray:
    """Per-patch scores of a frame-level detector (`score_rows`: rows -> one score each) on dB patches: the one
    computation the board and calibration share."""
    if len(db) == 0:
        return np.empty(0)
    return patch_means(score_rows(frame_rows(source, db)), len(db))
