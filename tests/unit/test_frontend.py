"""The Mel-patch front end against librosa and matplotlib, streaming against offline, and edge cases."""
import librosa
import matplotlib
import numpy as np
import pytest

from humwatch.agent.contract import (
    FMAX_HZ,
    FMIN_HZ,
    HOP_LENGTH,
    N_FFT,
    N_MELS,
    PATCH_FRAMES,
    SAMPLE_RATE,
    FrontEndParams,
)
from humwatch.agent.signal.audio import read_wav
from humwatch.agent.signal.frontend import FrontEnd, PatchBatch, clip_patches, images_from_db
from humwatch.agent.signal.mel import mel_db
from humwatch.agent.signal.viridis import VIRIDIS_RGB, colour_indices


def shared_clips(shared_dir):
    dcase = sorted((shared_dir / "audio" / "dcase2020-id00").rglob("*.wav"))
    mimii = sorted((shared_dir / "audio" / "mimii-valve").glob("*.wav"))
    return dcase[:3] + dcase[-1:] + mimii[:2]


def librosa_db(samples):
    power = librosa.feature.melspectrogram(
        y=samples.astype(np.float64), sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH, n_mels=N_MELS,
        fmin=FMIN_HZ, fmax=FMAX_HZ, power=2.0, htk=False, norm="slaney", window="hann", center=True,
        pad_mode="constant")
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)


def test_mel_db_matches_librosa_on_shared_clips(shared_dir):
    for path in shared_clips(shared_dir):
        samples = read_wav(path)
        ours, reference = mel_db(samples), librosa_db(samples)
        assert ours.shape == reference.shape == (N_MELS, 626)
        assert np.abs(ours - reference).max() < 1e-3, path


def test_patches_are_the_mel_spectrogram_cut_every_32_frames(shared_dir):
    samples = read_wav(shared_clips(shared_dir)[0])
    batch = clip_patches(samples)
    assert len(batch) == 18 and batch.images.shape == (18, 64, 64, 3) and batch.images.dtype == np.uint8
    reference = librosa_db(samples)
    for k in (0, 7, 17):
        np.testing.assert_allclose(batch.db[k], reference[:, 32 * k: 32 * k + PATCH_FRAMES], atol=1e-3)


def test_viridis_table_equals_matplotlib():
    expected = matplotlib.colormaps["viridis"](np.arange(256), bytes=True)[:, :3]
    np.testing.assert_array_equal(VIRIDIS_RGB, expected)


def test_images_equal_matplotlib_min_max_colouring(shared_dir):
    batch = clip_patches(read_wav(shared_clips(shared_dir)[1]))
    cmap = matplotlib.colormaps["viridis"]
    for db, image in zip(batch.db, batch.images):
        unit = matplotlib.colors.Normalize()(db.astype(np.float64))  # vmin/vmax from the patch itself
        expected = cmap(np.asarray(unit), bytes=True)[..., :3][::-1]
        np.testing.assert_array_equal(image, expected)


def test_colour_index_boundaries_follow_matplotlib():
    values = np.array([0.0, 1 / 256 - 1e-12, 1 / 256, 0.5, 255 / 256 - 1e-12, 1.0])
    expected = matplotlib.colormaps["viridis"](values, bytes=True)[:, :3]
    np.testing.assert_array_equal(VIRIDIS_RGB[colour_indices(values)], expected)


def test_low_frequencies_are_drawn_at_the_bottom():
    t = np.arange(SAMPLE_RATE * 3) / SAMPLE_RATE
    low_hum = np.sin(2 * np.pi * 100 * t) + 1e-3 * np.random.default_rng(0).standard_normal(len(t))
    image = clip_patches(low_hum).images[0]
    loudness = image[..., 1].astype(float).mean(axis=1)  # viridis green rises monotonically with the value
    assert np.argmax(loudness) >= 56  # a 100 Hz hum lights one of the bottom rows
    assert loudness[-8:].mean() > 2 * loudness[:8].mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_in_any_chunk_size_equals_offline(shared_dir, seed):
    samples = read_wav(shared_clips(shared_dir)[seed])
    offline = clip_patches(samples)
    rng = np.random.default_rng(seed)
    stream, parts, start = FrontEnd(), [], 0
    while start < len(samples):
        size = int(rng.choice([1, 7, 256, 1000, 8192, 20000]))
        parts.append(stream.push(samples[start: start + size]))
        start += size
    streamed = PatchBatch.concat(parts)
    np.testing.assert_array_equal(streamed.db, offline.db)
    np.testing.assert_array_equal(streamed.images, offline.images)
    np.testing.assert_array_equal(streamed.end_samples, offline.end_samples)


def test_a_new_patch_every_8192_samples_after_the_first():
    first_end = (PATCH_FRAMES - 1) * HOP_LENGTH + N_FFT // 2  # the first patch's last frame ends here
    noise = np.random.default_rng(3).standard_normal(SAMPLE_RATE * 4) * 0.1
    stream = FrontEnd()
    assert len(stream.push(noise[: first_end - 1])) == 0
    assert stream.push(noise[first_end - 1: first_end]).end_samples.tolist() == [first_end]
    assert len(stream.push(noise[first_end: first_end + 8191])) == 0
    assert stream.push(noise[first_end + 8191: first_end + 8192]).end_samples.tolist() == [first_end + 8192]
    stream.reset()
    assert len(stream.push(noise[:first_end])) == 1


def test_silence_gives_flat_dark_patches():
    batch = clip_patches(np.zeros(SAMPLE_RATE * 10, np.float32))
    assert len(batch) == 18
    np.testing.assert_allclose(batch.db, -100.0)  # 10·log10(amin)
    assert (batch.images == VIRIDIS_RGB[0]).all()


def test_dc_offset_and_clipping_stay_finite_and_well_formed():
    t = np.arange(SAMPLE_RATE * 10) / SAMPLE_RATE
    clipped = np.clip(3 * np.sin(2 * np.pi * 440 * t), -1, 1)
    for signal in (clipped, np.full(len(t), 0.7), 0.5 + 0.1 * np.sin(2 * np.pi * 50 * t)):
        batch = clip_patches(signal)
        assert len(batch) == 18 and np.isfinite(batch.db).all()
        assert batch.images.min() >= 0
    # a constant offset puts its energy in the lowest band, which the image shows at the bottom
    dc = clip_patches(np.full(len(t), 0.7))
    assert dc.db[:, 0].mean() > dc.db[:, -1].mean() + 50


def test_too_short_input_gives_no_patch():
    assert len(clip_patches(np.zeros(1, np.float32))) == 0
    assert len(clip_patches(np.zeros(SAMPLE_RATE, np.float32))) == 0


def test_fixed_db_window_scaling_is_recorded_and_applied():
    params = FrontEndParams(scaling="fixed", db_low=-80.0, db_high=-20.0)
    db = np.linspace(-90.0, -10.0, 64 * 64).reshape(1, 64, 64)
    image = images_from_db(db, params)[0][::-1]
    assert (image.reshape(-1, 3)[:400] == VIRIDIS_RGB[0]).all()  # below the window: the darkest colour
    assert (image.reshape(-1, 3)[-400:] == VIRIDIS_RGB[255]).all()
    assert params.to_dict()["scaling"] == "fixed" and FrontEndParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="db_high"):
        FrontEndParams(scaling="fixed", db_low=0.0, db_high=-1.0)


def test_front_end_parameters_from_another_contract_are_refused():
    recorded = FrontEndParams().to_dict()
    recorded["hop_length"] = 512
    with pytest.raises(ValueError, match="hop_length=512"):
        FrontEndParams.from_dict(recorded)
