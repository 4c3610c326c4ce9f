

"""Audio sources: a real ALSA capture device through PortAudio, a replayed WAV file, stateful resampling."""

import threading

import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import resample_poly

from humwatch.agent.errors import AudioError
from humwatch.agent.service.capture import StreamResampler, WavFileSource
from humwatch.agent.signal.audio import read_wav


def test_wav_file_source_fast_and_stoppable(tmp_path):
    samples = (np.random.default_rng(4).standard_normal(16000 * 2) * 3000).astype(np.int16)
    path = tmp_path / "clip.wav"
    wavfile.write(path, 16000, samples)
    source = WavFileSource(path, realtime=False, stop=threading.Event())
    got = np.concatenate(list(source))
    np.testing.assert_array_equal(got, read_wav(path))
    stop = threading.Event()
    chunks = []
    for chunk in WavFileSource(path, realtime=True, stop=stop):
        chunks.append(chunk)
        stop.set()
    assert len(chunks) == 1
    with pytest.raises(AudioError, match="no such file"):
        WavFileSource(tmp_path / "absent.wav", realtime=False, stop=stop)


@pytest.mark.parametrize("rate", [48000, 44100, 8000])
def test_stream_resampler_matches_resampling_the_whole_signal(rate):
    x = np.random.default_rng(5).standard_normal(rate)
    resampler = StreamResampler(rate)
    sizes = np.random.default_rng(6).integers(1, 3000, 1000)
    bounds = np.minimum(np.cumsum(np.concatenate([[0], sizes])), len(x))
    y = np.concatenate([resampler.push(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
    g = np.gcd(rate, 16000)
    want = resample_poly(x, 16000 // g, rate // g)
    assert len(want) - 20 <= len(y) <= len(want)
    np.testing.assert_allclose(y, want[: len(y)], atol=1e-6)
