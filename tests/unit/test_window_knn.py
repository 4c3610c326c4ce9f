"""The window-level detectors' parts: modulation spectrum, rolling window means, stretches and leave-out distances."""
import numpy as np
import pytest

from humwatch.agent.contract import N_MELS, PATCH_FRAMES, WINDOW_PATCHES
from humwatch.agent.model.scorers import nearest_distances
from humwatch.agent.signal.modulation import BAND_GROUPS, MODULATION_BINS, MODULATION_DIM, modulation_spectrum
from humwatch.calibration.window_knn import leave_out_distances, rolling_means, stretch_groups

FRAME_RATE = 62.5  # frames per second: 16 kHz / hop 256


def test_a_band_pulsing_at_5_hz_peaks_at_the_5_hz_bin_of_its_group():
    frames = np.arange(PATCH_FRAMES)
    db = np.full((1, N_MELS, PATCH_FRAMES), -40.0, np.float32)
    bin_5hz = 5  # 5 cycles in 64 frames at 62.5 frames/s = 4.9 Hz
    db[0, 20] += 6.0 * np.sin(2 * np.pi * bin_5hz * frames / PATCH_FRAMES)
    spectrum = modulation_spectrum(db).reshape(BAND_GROUPS, MODULATION_BINS)
    group = 20 // (N_MELS // BAND_GROUPS)
    assert spectrum.shape == (BAND_GROUPS, MODULATION_BINS) and MODULATION_DIM == 256
    assert np.argmax(spectrum[group]) == bin_5hz - 1  # bins start at 1: DC (the band's level) is left out
    # a band's level does not change its modulation: only how it moves does
    np.testing.assert_allclose(modulation_spectrum(db + 30.0), modulation_spectrum(db), atol=1e-4)
    others = np.delete(spectrum, group, axis=0)
    assert np.allclose(others, np.log(1e-3), atol=1e-3)  # steady bands: the floor


def test_modulation_spectrum_refuses_other_shapes():
    with pytest.raises(ValueError, match="dB patches must be"):
        modulation_spectrum(np.zeros((2, N_MELS, 10)))


def test_rolling_means_are_the_means_of_every_window():
    rows = np.random.default_rng(0).normal(size=(40, 3))
    for stride in (1, 4):
        expected = [rows[i:i + WINDOW_PATCHES].mean(axis=0) for i in range(0, 40 - WINDOW_PATCHES + 1, stride)]
        np.testing.assert_allclose(rolling_means(rows, stride), expected, atol=1e-12)
    np.testing.assert_allclose(rolling_means(rows[:5]), rows[:5].mean(axis=0, keepdims=True))


def test_blocks_of_one_recording_form_stretches_and_short_files_their_own():
    assert stretch_groups(["a"] * 7 + ["b"] * 2 + ["c"] * 6).tolist() == [0, 0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4, 5, 5, 5]
    # too few stretches to leave one out at a time: one block each
    assert stretch_groups(["a"] * 6).tolist() == [0, 1, 2, 3, 4, 5]


def test_leave_out_distances_never_measure_a_window_against_its_own_stretch():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(60, 4))
    groups = np.repeat(np.arange(6), 10)
    distances = leave_out_distances(bank, groups, stride=6)  # every 3rd bank window is a reference window
    expected = []
    for g in range(6):
        own = groups == g
        for row in bank[np.flatnonzero(own)[::3]]:
            expected.append(np.sqrt(((bank[~own] - row) ** 2).sum(axis=1)).min())
    np.testing.assert_allclose(distances, expected, rtol=1e-9)
    with pytest.raises(Exception, match="at least two stretches"):
        leave_out_distances(bank, np.zeros(60, np.int64), stride=1)


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(2)
    z, bank = rng.normal(size=(7, 5)), rng.normal(size=(30, 5))
    brute = np.sqrt(((z[:, None, :] - bank[None]) ** 2).sum(axis=2)).min(axis=1)
    np.testing.assert_allclose(nearest_distances(z, bank), brute, rtol=1e-9)
