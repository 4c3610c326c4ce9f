"""Samples → Mel dB patches → viridis images: the front end shared by calibration, conversion and the agent.

The offline path is the streaming path fed a whole clip, so a device and a recording give the same patches.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from humwatch.agent.contract import (
    FIRST_PATCH_SAMPLES,
    HOP_LENGTH,
    IMAGE_SHAPE,
    N_FFT,
    N_MELS,
    PATCH_FRAMES,
    PATCH_HOP_FRAMES,
    PATCH_HOP_SAMPLES,
    SPECTRUM_BINS,
    FrontEndParams,
)
from humwatch.agent.signal.mel import frame_count, mel_db_and_power
from humwatch.agent.signal.viridis import VIRIDIS_RGB, colour_indices


@dataclass
class PatchBatch:
    """Patches in stream order: dB values for frame-level models, viridis images for the CNN."""

    db: np.ndarray = field(default_factory=lambda: np.empty((0, N_MELS, PATCH_FRAMES), np.float32))
    images: np.ndarray = field(default_factory=lambda: np.empty((0, *IMAGE_SHAPE), np.uint8))
    # Stream samples consumed when each patch became complete: the patch's end time × sample rate.
    end_samples: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    # Mean STFT power of each patch's frames per FFT bin, (n, N_FFT//2 + 1): the fine spectrum of agent.signal.tone.
    spectrum: np.ndarray = field(default_factory=lambda: np.empty((0, SPECTRUM_BINS), np.float32))

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def concat(cls, batches: list["PatchBatch"]) -> "PatchBatch":
        if not batches:
            return cls()
        return cls(np.concatenate([b.db for b in batches]), np.concatenate([b.images for b in batches]),
                   np.concatenate([b.end_samples for b in batches]), np.concatenate([b.spectrum for b in batches]))


if PATCH_FRAMES != 2 * PATCH_HOP_FRAMES:
    raise ImportError("the front end's patch spectrum assumes a patch of two hop blocks")


# What push returns until a patch completes (7 of every 8 microphone chunks): shared, read-only, no allocation.
NO_PATCHES = PatchBatch()
for _array in (NO_PATCHES.db, NO_PATCHES.images, NO_PATCHES.end_samples, NO_PATCHES.spectrum):
    _array.flags.writeable = False


def unit_scale(db: np.ndarray, params: FrontEndParams) -> np.ndarray:
    """dB patches (n, mels, frames) → [0, 1], per patch min–max (as matplotlib would) or a fixed dB window."""
    unit = np.array(db, dtype=np.float64)  # a fresh copy, scaled in place
    if params.scaling == "fixed":
        unit -= params.db_low
        unit /= params.db_high - params.db_low
        return np.clip(unit, 0.0, 1.0, out=unit)
    low = unit.min(axis=(1, 2), keepdims=True)
    span = unit.max(axis=(1, 2), keepdims=True) - low
    span[span == 0] = np.inf  # a flat patch maps to 0, as matplotlib's Normalize does when vmin == vmax
    unit -= low
    unit /= span
    return unit


def images_from_db(db: np.ndarray, params: FrontEndParams) -> np.ndarray:
    """The one mapping from dB patches (n, mels, frames) to model images (n, 64, 64, 3) uint8, low bands at the
    bottom."""
    return VIRIDIS_RGB.take(colour_indices(unit_scale(db, params))[:, ::-1], axis=0)


class FrontEnd:
    """Turns a stream of 16 kHz float samples into patches, one every 32 frames (0.512 s), carrying remainders."""

    def __init__(self, params: FrontEndParams | None = None) -> None:
        self.params = params or FrontEndParams()
        self.reset()

    def reset(self) -> None:
        # Left padding of N_FFT/2 zeros centres frame j on stream sample j·HOP, as librosa's center=True does.
        self._samples = np.zeros(N_FFT // 2, np.float32)
        self._pending: list[np.ndarray] = []  # chunks not yet framed: framing waits until a patch can complete
        self._pending_count = 0
        self._frames = np.empty((0, N_MELS), np.float32)
        self._block_power = np.empty((0, SPECTRUM_BINS), np.float32)  # mean power of each hop block of _frames
        self._patches_out = 0

    def push(self, samples: np.ndarray) -> PatchBatch:
        chunk = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._pending.append(chunk)
        self._pending_count += len(chunk)
        available = len(self._frames) + frame_count(len(self._samples) + self._pending_count)
        if available < PATCH_FRAMES:
            return NO_PATCHES
        self._samples = np.concatenate([self._samples, *self._pending])
        self._pending, self._pending_count = [], 0
        # Frames are computed in fixed blocks of one patch hop: float32 FFT and matrix products round differently
        # with the batch size, and fixed blocks make a stream in any chunk size bit-identical to the offline path.
        blocks = frame_count(len(self._samples)) // PATCH_HOP_FRAMES
        block_span = (PATCH_HOP_FRAMES - 1) * HOP_LENGTH + N_FFT
        new = [mel_db_and_power(self._samples[b * PATCH_HOP_SAMPLES: b * PATCH_HOP_SAMPLES + block_span])
               for b in range(blocks)]
        self._samples = self._samples[blocks * PATCH_HOP_SAMPLES:]
        self._frames = np.concatenate([self._frames, *(frames for frames, _ in new)])
        self._block_power = np.concatenate([self._block_power, *(power[None] for _, power in new)])
        n_patches = (len(self._frames) - PATCH_FRAMES) // PATCH_HOP_FRAMES + 1
        # Copied patch by patch into one array (a stream completes one patch a push): np.stack's machinery cost
        # more than the copy.
        db = np.empty((n_patches, N_MELS, PATCH_FRAMES), np.float32)
        for k in range(n_patches):
            db[k] = self._frames[k * PATCH_HOP_FRAMES: k * PATCH_HOP_FRAMES + PATCH_FRAMES].T
        self._frames = self._frames[n_patches * PATCH_HOP_FRAMES:]
        # A patch is two hop blocks (PATCH_FRAMES = 2 × PATCH_HOP_FRAMES): its mean power is theirs.
        spectrum = (self._block_power[:n_patches] + self._block_power[1:n_patches + 1]) / 2
        self._block_power = self._block_power[n_patches:]
        first = self._patches_out
        self._patches_out += n_patches
        # Patch k ends with frame 32k+63, whose window ends N_FFT/2 samples after its centre.
        end_samples = np.arange(first, first + n_patches, dtype=np.int64) * PATCH_HOP_SAMPLES + FIRST_PATCH_SAMPLES
        return PatchBatch(db, images_from_db(db, self.params), end_samples, spectrum)


def clip_patches(samples: np.ndarray, params: FrontEndParams | None = None) -> PatchBatch:
    """All patches of a recording: the stream fed the whole clip at once (a 10 s clip gives 18)."""
    return FrontEnd(params).push(samples)
