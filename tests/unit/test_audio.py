"""WAV reading: every sample format, channel layouts, rates, and clear errors for damaged files."""
import numpy as np
import pytest
from scipy.io import wavfile

from humwatch.agent.errors import AudioError, ConfigError
from humwatch.agent.signal.audio import parse_channel, read_wav, to_mono_16k


def tone(rate: int, seconds: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


@pytest.mark.parametrize("dtype, scale", [(np.int16, 2 ** 15), (np.int32, 2 ** 31), (np.float32, 1.0),
                                          (np.float64, 1.0)])
def test_pcm_and_float_formats_read_to_the_same_signal(tmp_path, dtype, scale):
    signal = tone(16000)
    path = tmp_path / "x.wav"
    wavfile.write(path, 16000, (signal * scale).astype(dtype))
    np.testing.assert_allclose(read_wav(path), signal, atol=1e-4)


def test_8bit_unsigned_pcm_is_centred(tmp_path):
    signal = tone(16000)
    path = tmp_path / "u8.wav"
    wavfile.write(path, 16000, np.round(signal * 127 + 128).astype(np.uint8))
    np.testing.assert_allclose(read_wav(path), signal, atol=1 / 64)


def test_24bit_pcm(tmp_path):
    signal = tone(16000)
    ints = np.round(signal * (2 ** 23 - 1)).astype(np.int32)
    raw = np.stack([(ints >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8).tobytes()
    header = (b"RIFF" + (36 + len(raw)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
              + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (16000).to_bytes(4, "little")
              + (48000).to_bytes(4, "little") + (3).to_bytes(2, "little") + (24).to_bytes(2, "little")
              + b"data" + len(raw).to_bytes(4, "little"))
    path = tmp_path / "s24.wav"
    path.write_bytes(header + raw)
    np.testing.assert_allclose(read_wav(path), signal, atol=1e-6)


def test_extensible_8_channel_mimii_file_channel_choice(shared_dir):
    path = next((shared_dir / "audio" / "mimii-valve").glob("*.wav"))
    rate, raw = wavfile.read(path)
    assert raw.shape[1] == 8
    np.testing.assert_allclose(read_wav(path), raw[:, 0] / 32768.0, atol=1e-7)
    np.testing.assert_allclose(read_wav(path, channel=3), raw[:, 3] / 32768.0, atol=1e-7)
    np.testing.assert_allclose(read_wav(path, channel="mean"), raw.mean(axis=1) / 32768.0, atol=1e-6)
    with pytest.raises(AudioError, match="channel 8 does not exist"):
        read_wav(path, channel=8)


def test_a_mono_file_has_channel_0_alone_and_channel_options_are_parsed(tmp_path):
    path = tmp_path / "mono.wav"
    wavfile.write(path, 16000, (tone(16000) * 32767).astype(np.int16))
    np.testing.assert_array_equal(read_wav(path, channel="mean"), read_wav(path, channel=0))
    with pytest.raises(AudioError, match=r"channel 1 does not exist \(the audio has 1 channels\)"):
        read_wav(path, channel=1)
    assert to_mono_16k(np.zeros(0, np.float32), 16000).shape == (0,)
    assert [parse_channel(t) for t in ("0", "7", "mean")] == [0, 7, "mean"]
    for bad in ("x", "--3", "²", ""):
        with pytest.raises(ConfigError, match=f"--channel {bad!r}: a channel index"):
            parse_channel(bad)


def test_44k1_stereo_is_resampled_to_16k(tmp_path):
    left, right = tone(44100, 1.0, 1000.0), tone(44100, 1.0, 3000.0)
    path = tmp_path / "stereo.wav"
    wavfile.write(path, 44100, np.stack([left, right], axis=1).astype(np.float32))
    mono = read_wav(path)
    assert len(mono) == 16000
    spectrum = np.abs(np.fft.rfft(mono))
    assert abs(np.argmax(spectrum) * 16000 / len(mono) - 1000.0) <= 1.0
    both = np.abs(np.fft.rfft(read_wav(path, channel="mean")))
    assert both[3000] > 0.3 * both[1000]


def test_one_sample_file_reads(tmp_path):
    path = tmp_path / "one.wav"
    wavfile.write(path, 16000, np.array([1000], np.int16))
    np.testing.assert_allclose(read_wav(path), [1000 / 32768], rtol=1e-6)


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable WAV"),
    (b"hello, this is not audio at all" * 4, "not a readable WAV"),
])
def test_non_wav_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=message) as info:
        read_wav(path)
    assert str(path) in str(info.value)


def test_truncated_and_empty_files(tmp_path):
    full = tmp_path / "full.wav"
    wavfile.write(full, 16000, (tone(16000) * 3000).astype(np.int16))
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(full.read_bytes()[:-5001])
    with pytest.raises(AudioError, match="truncated.wav"):
        read_wav(truncated)
    empty = tmp_path / "empty.wav"
    wavfile.write(empty, 16000, np.zeros(0, np.int16))
    with pytest.raises(AudioError, match="empty.wav: the WAV file holds no samples"):
        read_wav(empty)
    with pytest.raises(AudioError, match="no such file"):
        read_wav(tmp_path / "missing.wav")


def test_nan_in_float_wav_is_refused(tmp_path):
    signal = tone(16000).astype(np.float32)
    signal[100] = np.nan
    path = tmp_path / "nan.wav"
    wavfile.write(path, 16000, signal)
    with pytest.raises(AudioError, match="nan.wav: contains NaN"):
        read_wav(path)


def test_live_buffers_convert_like_files():
    ints = (tone(48000) * 20000).astype(np.int16)
    converted = to_mono_16k(np.stack([ints, ints], axis=1), 48000)
    assert converted.dtype == np.float32 and len(converted) == 8000
    np.testing.assert_allclose(converted, to_mono_16k(ints, 48000))
