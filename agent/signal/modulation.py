"""The log-Mel modulation spectrum of a patch: how each group of Mel bands swells and fades over its 0.5–31 Hz
rhythms.

A machine's faults on real recordings (a worn bearing, a loose part on a toy car's track) change *how* its bands
pulse more than how loud they are, and change it for whole seconds: a window's mean modulation spectrum separated
the faulty ToyCar clips from the normal ones better than the CNN, the log-Mel GMM or the frame dynamics
(docs/quality.md). Per patch: each band minus its mean over the patch's 64 frames, the magnitude of its Fourier
transform over those frames at bins 1..32 (0.98–31.25 Hz at a 62.5 Hz frame rate), averaged over groups of 8
adjacent bands, log-compressed.
"""
from __future__ import annotations

import numpy as np

from humwatch.agent.contract import N_MELS, PATCH_FRAMES

BAND_GROUPS = 8
MODULATION_BINS = PATCH_FRAMES // 2  # bins 1..32: the DC bin is the band's mean, removed
MODULATION_FLOOR = 1e-3  # keeps the log finite on a perfectly steady band
MODULATION_DIM = BAND_GROUPS * MODULATION_BINS


def modulation_spectrum(db: np.ndarray) -> np.ndarray:
    """(n, mels, frames) dB patches → (n, MODULATION_DIM) float32, band-group-major."""
    db = np.asarray(db, dtype=np.float32)
    if db.ndim != 3 or db.shape[1:] != (N_MELS, PATCH_FRAMES):
        raise ValueError(f"dB patches must be (n, {N_MELS}, {PATCH_FRAMES}), not {db.shape}")
    centred = db - db.mean(axis=2, keepdims=True)
    magnitude = np.abs(np.fft.rfft(centred, axis=2))[:, :, 1:MODULATION_BINS + 1]
    grouped = magnitude.reshape(len(db), BAND_GROUPS, N_MELS // BAND_GROUPS, MODULATION_BINS).mean(axis=2)
    return np.log(grouped + MODULATION_FLOOR).reshape(len(db), MODULATION_DIM).astype(np.float32)

