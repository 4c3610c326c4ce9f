"""16-bit PCM: float samples back to the int16 a microphone delivered, and a mono WAV file of them.

Written by hand (a 44-byte header): scipy's WAV module costs the board memory for a few lines of struct.
"""
from __future__ import annotations

import struct

import numpy as np

from humwatch.agent.contract import SAMPLE_RATE

WAV_HEADER_BYTES = 44


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as int16. Exact for samples that came from int16 (x / 32768, as `to_mono` makes
    them), so kept audio is the captured audio bit for bit."""
    scaled = np.round(np.asarray(samples, dtype=np.float32) * np.float32(32768.0))
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def wav_bytes(pcm: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit PCM WAV file holding the int16 samples `pcm`."""
    data = np.asarray(pcm, dtype="<i2").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 1, rate,
                         rate * 2, 2, 16, b"data", len(data))
    return header + data
