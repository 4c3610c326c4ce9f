"""A real ALSA capture device that plays prepared audio, for tests that capture through PortAudio.

ALSA's `file` plugin reads a capture stream's samples from its `infile`. Its `null` slave has no clock, so a
plain file would be captured thousands of times faster than real time; the infile is therefore a FIFO that a
feeder thread fills at the pace asked for (real time by default), so the capture behaves like a microphone.
Each write is at most PIPE_BUF bytes and a multiple of PortAudio's request size, so a read never sees half a
write. When the queued audio runs out the feeder sends silence (or, while paused, nothing: a stalled device).

The device is defined in a private ALSA configuration (the system's alsa.conf, then ours) named by
ALSA_CONFIG_PATH; `env` is the environment a subprocess (the agent) needs to see it.
"""
from __future__ import annotations

import os
import pathlib
import queue
import select
import threading
import time

import numpy as np
import pytest

SYSTEM_ALSA_CONF = pathlib.Path("/usr/share/alsa/alsa.conf")
DEVICE_NAME = "humwatch_test"

_CONFIG = """\
<{system}>
pcm.{name}_raw {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{fifo}"
    format "raw"
}}
pcm.{name} {{
    type plug
    slave {{
        pcm "{name}_raw"
        format S16_LE
        rate {rate}
        channels {channels}
    }}
}}
"""


class AlsaFileDevice:
    """One capture device; `play()` queues int16 (or float in [-1, 1]) frames shaped (n,) or (n, channels).

    Until the first `play()` the device delivers nothing (a capture blocks), so no silence precedes the audio."""

    def __init__(self, directory: pathlib.Path, rate: int = 16000, channels: int = 1, speed: float = 1.0) -> None:
        self.name = DEVICE_NAME
        self.rate, self.channels, self.speed = rate, channels, speed
        self.fifo = directory / "capture.fifo"
        os.mkfifo(self.fifo)
        self.config = directory / "alsa.conf"
        self.config.write_text(_CONFIG.format(system=SYSTEM_ALSA_CONF, name=self.name, fifo=self.fifo, rate=rate,
                                              channels=channels))
        self.env = {**os.environ, "ALSA_CONFIG_PATH": str(self.config), "JACK_NO_START_SERVER": "1"}
        # Frames per write: PIPE_BUF (4096 bytes) of S16 frames, a multiple of the agent's 1024-frame requests.
        self.chunk_frames = select.PIPE_BUF // (2 * channels)
        self.played_frames = 0  # frames of queued audio written so far (silence not counted)
        self._written: list[tuple[int, float]] = []  # (played_frames after a write, time.monotonic() of it)
        self._queue: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        self._pending = np.empty((0, channels), np.int16)
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._drained = threading.Event()
        self._drained.set()
        self._started = threading.Event()  # nothing is fed before the first play(): the device waits for it
        # O_RDWR never blocks on a FIFO and keeps a writer present, so the device opens before anything plays.
        self._fd = os.open(self.fifo, os.O_RDWR)
        self._thread = threading.Thread(target=self._feed, name="alsa-file-feeder", daemon=True)
        self._thread.start()

    def play(self, samples: np.ndarray) -> None:
        frames = np.asarray(samples)
        if frames.dtype.kind == "f":
            frames = np.round(np.clip(frames, -1.0, 32767 / 32768) * 32768).astype(np.int16)
        frames = frames.astype(np.int16).reshape(len(frames), self.channels)
        self._drained.clear()
        self._queue.put(frames)
        self._started.set()

    def wait_played(self, timeout: float) -> bool:
        """Wait until everything queued has been written into the device."""
        return self._drained.wait(timeout)

    def written_at(self, frame: int) -> float | None:
        """time.monotonic() when queued frame number `frame` went into the device, or None if not yet."""
        return next((t for played, t in list(self._written) if played > frame), None)

    def pause(self) -> None:
        """Stop feeding anything: readers block, as on a hung device."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def _next_chunk(self) -> tuple[np.ndarray, bool]:
        while len(self._pending) < self.chunk_frames:
            try:
                self._pending = np.concatenate([self._pending, self._queue.get_nowait()])
            except queue.Empty:
                break
        if len(self._pending) == 0:
            self._drained.set()
            return np.zeros((self.chunk_frames, self.channels), np.int16), False
        chunk = self._pending[: self.chunk_frames]
        self._pending = self._pending[self.chunk_frames:]
        if len(chunk) < self.chunk_frames:  # the end of the audio: complete the write with silence
            chunk = np.concatenate([chunk, np.zeros((self.chunk_frames - len(chunk), self.channels), np.int16)])
        return chunk, True

    def _feed(self) -> None:
        period = self.chunk_frames / self.rate / self.speed
        while not self._started.wait(0.1):
            if self._stop.is_set():
                return
        due = time.monotonic()
        while not self._stop.is_set():
            if not self._running.wait(0.1):
                due = time.monotonic()
                continue
            chunk, audio = self._next_chunk()
            try:
                os.write(self._fd, chunk.tobytes())  # blocks while the pipe is full (nobody capturing)
            except OSError:
                return
            if audio:
                self.played_frames += self.chunk_frames
                self._written.append((self.played_frames, time.monotonic()))
            due = max(due + period, time.monotonic() - 0.5)  # after a long block, do not burst more than 0.5 s
            self._stop.wait(max(0.0, due - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._running.set()
        self._started.set()
        # Unblock a write into a full pipe by draining it from our own read end.
        os.set_blocking(self._fd, False)
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        self._thread.join(5)
        os.close(self._fd)


@pytest.fixture
def alsa_device(tmp_path_factory, monkeypatch):
    """Factory: `alsa_device(rate=16000, channels=1, speed=1.0)` → an AlsaFileDevice; this process sees it too."""
    made: list[AlsaFileDevice] = []

    def make(rate: int = 16000, channels: int = 1, speed: float = 1.0) -> AlsaFileDevice:
        if not SYSTEM_ALSA_CONF.is_file():
            pytest.fail(f"ALSA is not installed: {SYSTEM_ALSA_CONF} is missing (apt-get install alsa-utils)")
        device = AlsaFileDevice(tmp_path_factory.mktemp("alsa"), rate, channels, speed)
        monkeypatch.setenv("ALSA_CONFIG_PATH", str(device.config))
        monkeypatch.setenv("JACK_NO_START_SERVER", "1")
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()
