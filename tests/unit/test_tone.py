"""The tone part of the default: the fine spectrum the front end keeps, the tone contrast, and its gate."""
import numpy as np
import pytest

from humwatch.agent.contract import SAMPLE_RATE, SPECTRUM_BINS
from humwatch.agent.model.bundle import DetectorEntry
from humwatch.agent.model.pipeline import detector_gates, fuse_gated
from humwatch.agent.signal.frontend import FrontEnd, PatchBatch, clip_patches
from humwatch.agent.signal.tone import TONE_DIM, TONE_GROUP, TONE_REACH, tone_contrast
from humwatch.calibration.window_knn import GATE_FACTOR, gate

BIN_HZ = SAMPLE_RATE / 2 / (SPECTRUM_BINS - 1)


def noise_and_tone(hz: float | None, seconds: float = 10.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.0 if hz is None else 0.05 * np.sin(2 * np.pi * hz * t)
    return (0.1 * rng.standard_normal(len(t)) + tone).astype(np.float32)


def group_of(hz: float) -> int:
    return (int(round(hz / BIN_HZ)) - TONE_REACH) // TONE_GROUP


def test_the_patch_spectrum_is_the_mean_power_of_its_frames():
    samples = noise_and_tone(1000.0, seconds=2.0)
    batch = clip_patches(samples)
    assert batch.spectrum.shape == (len(batch), SPECTRUM_BINS)
    # the 1 kHz tone is the strongest bin, at 1000 / 15.625 = bin 64; noise alone is flat
    assert np.argmax(batch.spectrum.mean(axis=0)) == 64
    flat = clip_patches(noise_and_tone(None, seconds=2.0)).spectrum.mean(axis=0)[10:-10]
    assert flat.max() / flat.min() < 3.0  # 36 frames of noise: the 1 kHz bin alone is 60 times its neighbours


@pytest.mark.parametrize("chunk", [1000, 4097, 16000])
def test_the_streamed_patch_spectrum_equals_the_offline_one(chunk):
    samples = noise_and_tone(3000.0, seconds=6.0, seed=1)
    front_end = FrontEnd()
    streamed = PatchBatch.concat([front_end.push(samples[i:i + chunk]) for i in range(0, len(samples), chunk)])
    np.testing.assert_array_equal(streamed.spectrum, clip_patches(samples).spectrum)


@pytest.mark.parametrize("hz", [500.0, 2000.0, 3000.0, 4010.0])
def test_a_tone_stands_out_in_its_group_and_nowhere_else(hz):
    contrast = tone_contrast(clip_patches(noise_and_tone(hz)).spectrum).mean(axis=0)
    plain = tone_contrast(clip_patches(noise_and_tone(None)).spectrum).mean(axis=0)
    assert contrast.shape == (TONE_DIM,) and TONE_DIM == 62
    assert np.argmax(contrast) == group_of(hz)
    assert contrast[group_of(hz)] > 12.0  # a tone 9 dB under the noise's power fills one bin of 513: far over it
    others = np.delete(contrast - plain, [group_of(hz) - 1, group_of(hz), group_of(hz) + 1])
    assert np.abs(others).max() < 1.0


def test_tone_contrast_ignores_the_level_and_the_spectral_tilt():
    spectrum = clip_patches(noise_and_tone(2000.0)).spectrum
    tilt = np.linspace(1.0, 0.1, SPECTRUM_BINS, dtype=np.float32) ** 2  # a smooth tilt of 20 dB across the spectrum
    np.testing.assert_allclose(tone_contrast(spectrum * 100.0), tone_contrast(spectrum), atol=1e-3)
    difference = tone_contrast(spectrum * tilt) - tone_contrast(spectrum)
    assert np.abs(difference).max() < 1.0 and np.abs(difference.mean(axis=0)).max() < 0.3


def test_tone_contrast_refuses_other_shapes():
    with pytest.raises(ValueError, match="power spectra must be"):
        tone_contrast(np.ones((2, 64)))


def test_the_gate_is_twice_the_largest_reference_reading_and_never_negative():
    assert GATE_FACTOR == 2.0
    assert gate(np.array([-1.0, 0.5, 1.75])) == 3.5
    assert gate(np.array([-1.0, -0.5])) == 0.0


def test_a_gated_reading_adds_only_beyond_its_gate():
    entries = [DetectorEntry("a.npz", "knn", "cnn"), DetectorEntry("b.npz", "knn", "cnn"),
               DetectorEntry("t.npz", "knn", "fft-tone", gate=4.0)]
    readings = np.array([[1.0, 3.0, 2.0],     # under the gate: the mean of the other two alone
                         [1.0, 3.0, 4.0],     # at it: still nothing added
                         [1.0, 3.0, 10.0],    # 6 beyond it
                         [-1.0, -3.0, 10.0]])
    np.testing.assert_allclose(fuse_gated(readings, detector_gates(entries), "mean"), [2.0, 2.0, 8.0, 4.0])
    np.testing.assert_allclose(fuse_gated(readings, detector_gates(entries), "max"), [3.0, 3.0, 9.0, 5.0])
    # without a gated entry, the fusion of old bundles is unchanged
    np.testing.assert_allclose(fuse_gated(readings[:, :2], detector_gates(entries[:2]), "mean"), [2.0, 2.0, 2.0, -2.0])


def test_tone_contrast_is_each_groups_largest_bin_over_the_mean_of_its_neighbours():
    spectrum = np.random.default_rng(3).uniform(0.1, 2.0, size=(4, SPECTRUM_BINS)).astype(np.float32)
    db = 10 * np.log10(spectrum.astype(np.float64))
    offsets = [o for o in range(-TONE_REACH, TONE_REACH + 1) if abs(o) > 1]
    bins = TONE_DIM * TONE_GROUP
    contrast = db[:, TONE_REACH:TONE_REACH + bins] - np.mean(
        [db[:, TONE_REACH + o:TONE_REACH + o + bins] for o in offsets], axis=0)
    expected = contrast.reshape(4, TONE_DIM, TONE_GROUP).max(axis=2)
    np.testing.assert_allclose(tone_contrast(spectrum), expected, atol=1e-3)
