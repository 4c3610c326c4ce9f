"""Reading WAV files and converting any sample format, rate or channel layout to 16 kHz mono float32.

scipy's WAV reader and resampler are imported where they are used: the agent's live capture only needs `to_mono`,
and each costs the board tens of MB.
"""
from __future__ import annotations

import os
import warnings
from math import gcd

import numpy as np

from humwatch.agent.contract import SAMPLE_RATE
from humwatch.agent.errors import AudioError, ConfigError

Channel = int | str  # a channel index, or "mean" to average all channels


def read_wav(path: str | os.PathLike, channel: Channel = 0) -> np.ndarray:
    """Read a WAV file (PCM 8/16/24/32-bit or float, any channel count and rate) as 16 kHz mono float32."""
    from scipy.io import wavfile  # imported here: live capture needs only the conversions below

    name = os.fspath(path)
    try:
        with warnings.catch_warnings():
            # scipy warns and carries on for a truncated data chunk; for us that is a damaged file.
            warnings.simplefilter("error", wavfile.WavFileWarning)
            rate, data = wavfile.read(name, mmap=False)
    except FileNotFoundError:
        raise AudioError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise AudioError(f"{name}: is a directory, not a WAV file") from None
    except PermissionError:
        raise AudioError(f"{name}: permission denied") from None
    except wavfile.WavFileWarning as exc:
        raise AudioError(f"{name}: damaged WAV file ({exc})") from None
    except (ValueError, EOFError, OSError, IndexError, TypeError) as exc:
        raise AudioError(f"{name}: not a readable WAV file ({exc})") from None
    if data.size == 0:
        raise AudioError(f"{name}: the WAV file holds no samples")
    try:
        return to_mono_16k(data, rate, channel)
    except AudioError as exc:
        raise AudioError(f"{name}: {exc}") from None


def to_mono_16k(samples: np.ndarray, rate: int, channel: Channel = 0) -> np.ndarray:
    """Convert samples shaped (n,) or (n, channels) in any WAV sample format to 16 kHz mono float32 in [-1, 1]."""
    audio = to_mono(samples, channel)
    if rate <= 0:
        raise AudioError(f"invalid sample rate {rate}")
    if rate != SAMPLE_RATE:
        # imported here: scipy.signal costs the board about 50 MB, and live capture resamples by itself
        from scipy.signal import resample_poly

        divisor = gcd(int(rate), SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // divisor, int(rate) // divisor).astype(np.float32)
    return audio


def to_mono(samples: np.ndarray, channel: Channel = 0) -> np.ndarray:
    """Samples (n,) or (n, channels) in any WAV sample format → mono float32 in [-1, 1], at the same rate."""
    audio = _as_float(samples)
    if audio.ndim not in (1, 2):
        raise AudioError(f"expected (samples,) or (samples, channels), got shape {samples.shape}")
    audio = _pick_channel(audio[:, None] if audio.ndim == 1 else audio, channel)  # mono: channel 0 alone
    if not np.isfinite(audio).all():
        raise AudioError("contains NaN or infinite samples")
    return audio.astype(np.float32)


def _as_float(samples: np.ndarray) -> np.ndarray:
    kind, size = samples.dtype.kind, samples.dtype.itemsize
    if kind == "f":
        return samples.astype(np.float64)
    if kind == "u" and size == 1:  # 8-bit WAV is unsigned, centred on 128
        return (samples.astype(np.float64) - 128.0) / 128.0
    if kind == "i":  # scipy returns 24-bit PCM left-justified in int32, so one scale fits 16/24/32-bit
        return samples.astype(np.float64) / float(2 ** (8 * size - 1))
    raise AudioError(f"unsupported sample format {samples.dtype}")


def parse_channel(text: str) -> Channel:
    """A --channel option: a channel index, or 'mean' of all channels."""
    if text == "mean":
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--channel {text!r}: a channel index (0 is the first) or 'mean'") from None


def _pick_channel(audio: np.ndarray, channel: Channel) -> np.ndarray:
    if channel == "mean":
        return audio.mean(axis=1)
    if isinstance(channel, int) and -audio.shape[1] <= channel < audio.shape[1]:
        return audio[:, channel]
    raise AudioError(f"channel {channel!r} does not exist (the audio has {audio.shape[1]} channels)")
