

"""Audio sources: a real ALSA capture device through PortAudio, a replayed WAV file, stateful resampling."""

import threading

import numpy as np
import pytest
from scipy.signal import resample_poly

from humwatch.agent.errors import AudioError
from humwatch.agent.service.capture import RING_SECONDS, DeviceSource


def collect(source, n_samples: int) -> np.ndarray:
    chunks, have = [], 0
    for chunk in source:
        assert chunk.dtype == np.float32 and chunk.ndim == 1
        chunks.append(chunk)
        have += len(chunk)
        if have >= n_samples:
            source.stop.set()
    return np.concatenate(chunks)


def test_device_capture_gives_exactly_the_played_samples(alsa_device):
    device = alsa_device(rate=16000, channels=1, speed=4.0)
    played = np.random.default_rng(1).integers(-20000, 20000, 16000 * 3).astype(np.int16)
    device.play(played)
    source = DeviceSource(threading.Event(), device=device.name)
    got = collect(source, len(played))
    np.testing.assert_array_equal(got[: len(played)], played / np.float32(32768))
    assert source.overflows == 0 and source.dropped_frames == 0
    assert "humwatch_test" in source.describe()


def test_device_at_48k_stereo_is_resampled_like_the_whole_recording(alsa_device):
    device = alsa_device(rate=48000, channels=2, speed=4.0)
    t = np.arange(48000 * 2) / 48000
    right = (0.4 * np.sin(2 * np.pi * 1000 * t) * 32767).astype(np.int16)
    left = np.random.default_rng(2).integers(-3000, 3000, len(t)).astype(np.int16)
    device.play(np.stack([left, right], axis=1))
    source = DeviceSource(threading.Event(), device=device.name, rate=48000, channels=2, channel=1)
    got = collect(source, 16000 * 2 - 100)
    want = resample_poly(right / 32768.0, 1, 3)
    np.testing.assert_allclose(got[: 16000 * 2 - 100], want[: 16000 * 2 - 100], atol=1e-6)


def test_overflows_are_counted_and_the_oldest_audio_kept(alsa_device):
    device = alsa_device(rate=16000, channels=1, speed=40.0)
    played = np.random.default_rng(3).integers(-20000, 20000, int(16000 * RING_SECONDS * 2)).astype(np.int16)
    source = DeviceSource(threading.Event(), device=device.name)
    source.open()
    device.play(played)
    assert device.wait_played(30)  # nobody reads meanwhile: the ring buffer fills, then drops
    assert source.overflows > 0 and source.dropped_frames > 0
    kept = collect(source, 1)
    ring = int(16000 * RING_SECONDS)
    np.testing.assert_array_equal(kept[:ring], played[:ring] / np.float32(32768))
    assert source.input_overflows == 0


def test_portaudio_overflow_flag_is_counted_not_fatal(alsa_device):
    import pyaudio

    device = alsa_device()
    device.play(np.zeros(16000, np.int16))
    source = DeviceSource(threading.Event(), device=device.name)
    source.open()
    try:
        frames = np.arange(1024, dtype=np.int16)
        _, flag = source._callback(frames.tobytes(), 1024, {}, pyaudio.paInputOverflow)
        assert flag == pyaudio.paContinue
        assert (source.input_overflows, source.overflows, source.dropped_frames) == (1, 1, 0)
    finally:
        source.close()


def test_unknown_device_is_one_line_naming_the_inputs(alsa_device):
    alsa_device()
    with pytest.raises(AudioError, match=r"no input device named like 'no-such-mic' \(inputs: .*humwatch_test"):
        DeviceSource(threading.Event(), device="no-such-mic").open()
    with pytest.raises(AudioError, match=r"audio.device: 99 is not an input device \(inputs: .*humwatch_test"):
        DeviceSource(threading.Event(), device=99).open()


def test_overflow_warnings_are_at_most_one_per_interval(alsa_device, caplog):
    import pyaudio

    device = alsa_device(speed=4.0)
    device.play(np.zeros(16000 * 4, np.int16))
    source = DeviceSource(threading.Event(), device=device.name)
    chunks = 0
    with caplog.at_level("WARNING", logger="humwatch.agent.service.capture"):
        for _ in source:  # a device in trouble: every chunk comes with an overflow
            source._callback(np.zeros(1024, np.int16).tobytes(), 1024, {}, pyaudio.paInputOverflow)
            chunks += 1
            if chunks == 20:
                source.stop.set()
    warnings = [r for r in caplog.records if "audio overflow" in r.getMessage()]
    assert source.overflows >= 19 and len(warnings) == 1, [r.getMessage() for r in warnings]
