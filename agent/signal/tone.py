"""The tone contrast of a patch: how far each FFT bin of its mean power spectrum stands out of its neighbourhood.

A steady whine (a bearing's tone, a belt's squeal) is one narrow line: a 64-band Mel spectrum spreads it over a band
hundreds of hertz wide, and it hardly changes how the bands pulse (the modulation spectrum). The 513 FFT bins the
Mel filterbank starts from are 15.6 Hz apart: there a tone 6 dB under the machine's level stands many dB over the
bins around it. Per patch: the mean STFT power of its frames (agent.signal.frontend, from the one STFT) in dB, each
bin minus the mean of the bins 2..TONE_REACH either side (the bin next to it is left out: a tone between two bins
fills both; a mean, one convolution, costs a tenth of a median and caught the synthetic tones alike), then the
largest of each TONE_GROUP adjacent bins (125 Hz): a line counts wherever it falls, and a nearest-window distance
over 62 values is not diluted by 500 bins of noise. The machine's own lines stand out too, steadily; the detector
(calibration.window_knn) learns them.
"""
from __future__ import annotations

import numpy as np

from humwatch.agent.contract import DB_AMIN, SPECTRUM_BINS

TONE_GUARD = 1  # bins either side of a bin left out of its baseline: a tone's Hann main lobe spreads over them
TONE_REACH = 8  # the baseline is the mean of the bins TONE_GUARD+1 .. TONE_REACH either side
TONE_GROUP = 8  # adjacent bins whose largest contrast is one value
_BINS = (SPECTRUM_BINS - 2 * TONE_REACH) // TONE_GROUP * TONE_GROUP  # bins with a whole neighbourhood, in groups
TONE_DIM = _BINS // TONE_GROUP  # 62 groups: 125 Hz to 7.875 kHz
# The baseline as one symmetric kernel: the mean of the bins TONE_GUARD+1 .. TONE_REACH either side.
_BASELINE = np.full(2 * TONE_REACH + 1, 1 / (2 * (TONE_REACH - TONE_GUARD)), np.float32)
_BASELINE[TONE_REACH - TONE_GUARD: TONE_REACH + TONE_GUARD + 1] = 0.0
_BASELINE.flags.writeable = False


def tone_contrast(spectrum: np.ndarray) -> np.ndarray:
    """(n, SPECTRUM_BINS) mean power spectra → (n, TONE_DIM) float32 dB: each group's largest bin over its local
    baseline."""
    spectrum = np.asarray(spectrum, dtype=np.float32)
    if spectrum.ndim != 2 or spectrum.shape[1] != SPECTRUM_BINS:
        raise ValueError(f"power spectra must be (n, {SPECTRUM_BINS}), not {spectrum.shape}")
    db = np.log10(np.maximum(spectrum, np.float32(DB_AMIN)))
    db *= np.float32(10.0)
    baseline = np.stack([np.convolve(row, _BASELINE, "valid")[:_BINS] for row in db])  # one patch a call, mostly
    contrast = db[:, TONE_REACH: TONE_REACH + _BINS] - baseline
    return contrast.reshape(len(db), TONE_DIM, TONE_GROUP).max(axis=2)
