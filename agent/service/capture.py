"""Where the agent's audio comes from: a PortAudio input device or a WAV file, both as 16 kHz mono float32 chunks.

A source is an iterable of chunks that ends when its stop event is set (or, for a file, at its end). The device
source opens the stream in callback mode: PortAudio's callback only copies into a bounded ring buffer, and the
iterating thread converts. Overflows (PortAudio's input-overflow flag, or a full ring buffer because the consumer
fell behind) are counted and logged, never fatal: a monitoring agent must keep listening.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from math import gcd
from typing import Any, Protocol

import numpy as np

from humwatch.agent.contract import SAMPLE_RATE
from humwatch.agent.errors import AudioError
from humwatch.agent.signal.audio import Channel, to_mono

log = logging.getLogger(__name__)

FRAMES_PER_BUFFER = 1024  # frames PortAudio hands the callback at a time (64 ms at 16 kHz)
RING_SECONDS = 4.0  # audio the ring buffer holds before it drops (the analysis loop has fallen that far behind)
FILE_CHUNK = 4096  # samples per chunk of a replayed file (0.256 s)
_READ_TIMEOUT = 0.25  # how often a waiting reader looks at the stop event
CLOSE_TIMEOUT = 2.0  # seconds closing the device may take before it is given up on
OVERFLOW_REPORT_EVERY = 10.0  # seconds between overflow warnings: a device in trouble must not flood the journal


class AudioSource(Protocol):
    """What the service reads: iterate for float32 mono 16 kHz chunks until stopped."""

    overflows: int

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def describe(self) -> str: ...


class StreamResampler:
    """Converts a stream from `rate` to 16 kHz chunk by chunk, carrying the filter's history across chunks.

    The filter and alignment are those of scipy's `resample_poly` (Kaiser window, beta 5, half length 10 taps per
    phase), so a stream gives what resampling the whole recording at once gives, apart from the last few samples,
    which wait for input that has not arrived yet."""

    def __init__(self, rate: int, target: int = SAMPLE_RATE) -> None:
        divisor = gcd(int(rate), int(target))
        self.up, self.down = target // divisor, int(rate) // divisor
        half = 10 * max(self.up, self.down)
        taps = _lowpass(2 * half + 1, 1.0 / max(self.up, self.down)) * self.up
        self._offset = half  # output j reads the zero-stuffed input around j*down + half
        n_tail = -(-len(taps) // self.up)
        # Polyphase form: phase p holds taps p, p+up, p+2up, ... applied to x[i], x[i-1], x[i-2], ...
        self._phases = np.zeros((self.up, n_tail))
        for p in range(self.up):
            part = taps[p::self.up]
            self._phases[p, : len(part)] = part
        self._history = np.zeros(n_tail)  # the inputs before the current chunk (zeros before the stream start)
        self._first = -n_tail  # stream index of _history[0]
        self._next_out = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        buffer = np.concatenate([self._history, np.asarray(samples, dtype=np.float64)])
        end = self._first + len(buffer)  # one past the newest input's stream index
        # Output j needs inputs up to (j*down + offset) // up.
        last_out = (end * self.up - 1 - self._offset) // self.down
        out = np.arange(self._next_out, max(last_out + 1, self._next_out))
        result = np.empty(0, np.float32)
        if len(out):
            position = out * self.down + self._offset
            newest, phase = np.divmod(position, self.up)
            index = (newest - self._first)[:, None] - np.arange(self._phases.shape[1])[None, :]
            result = np.einsum("ij,ij->i", self._phases[phase], buffer[index]).astype(np.float32)
            self._next_out = int(out[-1]) + 1
        keep = self._phases.shape[1]
        self._history = buffer[-keep:]
        self._first = end - keep
        return result


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null for a moment (C libraries write there directly), unless debugging."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _lowpass(n_taps: int, cutoff: float) -> np.ndarray:
    """scipy.signal.firwin(n_taps, cutoff, window=("kaiser", 5.0)) in numpy: importing scipy.signal on the board
    would cost about 50 MB of memory for this one filter."""
    taps = cutoff * np.sinc(cutoff * (np.arange(n_taps) - (n_taps - 1) / 2)) * np.kaiser(n_taps, 5.0)
    return taps / taps.sum()


class _Ring:
    """A fixed-size buffer of int16 frames between PortAudio's callback thread and one reader."""

    def __init__(self, capacity_frames: int, channels: int) -> None:
        self._data = np.zeros((capacity_frames, channels), np.int16)
        self._start = 0
        self._size = 0
        self._ready = threading.Condition()

    def write(self, frames: np.ndarray) -> int:
        """Copy frames in; returns how many did not fit (dropped, newest first)."""
        with self._ready:
            capacity = len(self._data)
            fits = min(len(frames), capacity - self._size)
            end = (self._start + self._size) % capacity
            first = min(fits, capacity - end)
            self._data[end: end + first] = frames[:first]
            self._data[: fits - first] = frames[first:fits]
            self._size += fits
            self._ready.notify()
        return len(frames) - fits

    def read(self, timeout: float) -> np.ndarray | None:
        """All frames waiting, or None when none arrived within `timeout` seconds."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._size > 0, timeout):
                return None
            index = (self._start + np.arange(self._size)) % len(self._data)
            frames = self._data[index]
            self._start = (self._start + self._size) % len(self._data)
            self._size = 0
        return frames


class DeviceSource:
    """A PortAudio input device opened at `rate` with `channels`, analysed on `channel` (or "mean")."""

    def __init__(self, stop: threading.Event, device: int | str | None = None, rate: int = SAMPLE_RATE,
                 channels: int = 1, channel: Channel = 0) -> None:
        self.stop = stop
        self.device, self.rate, self.channels, self.channel = device, int(rate), int(channels), channel
        self.input_overflows = 0  # PortAudio reported that the device's own buffer overflowed
        self.dropped_frames = 0  # frames the ring buffer had no room for
        self.overflows = 0  # callbacks that lost audio for either reason
        self._ring = _Ring(int(RING_SECONDS * self.rate), self.channels)
        self._pa: Any = None  # pyaudio.PyAudio and its Stream, once open (pyaudio has no type hints)
        self._stream: Any = None
        self._flags = (0, 0, 0)  # PortAudio's input-overflow flag, paContinue, paComplete (set by open)
        self._name = str(device)

    def describe(self) -> str:
        return f"device {self._name!r} at {self.rate} Hz, {self.channels} channel(s), channel {self.channel}"

    def open(self) -> None:
        """Open and start the stream; AudioError names the device and what is wrong."""
        import pyaudio  # the board's only audio dependency, loaded when a device is actually used

        self._flags = (pyaudio.paInputOverflow, pyaudio.paContinue, pyaudio.paComplete)
        with _quiet_stderr():  # PortAudio probing every ALSA/JACK device prints dozens of harmless errors
            self._pa = pyaudio.PyAudio()
        try:
            index = self._resolve(self._pa)
            self._name = self._pa.get_device_info_by_index(index)["name"]
            self._stream = self._pa.open(format=pyaudio.paInt16, channels=self.channels, rate=self.rate, input=True,
                                         input_device_index=index, frames_per_buffer=FRAMES_PER_BUFFER,
                                         stream_callback=self._callback, start=True)
        except (OSError, ValueError) as exc:
            self.close()
            raise AudioError(f"audio device {self._name!r}: cannot capture at {self.rate} Hz with "
                             f"{self.channels} channel(s) ({exc})") from None
        except AudioError:
            self.close()
            raise
        log.info("capturing from %s", self.describe())

    def _resolve(self, pa) -> int:
        inputs = {i: pa.get_device_info_by_index(i) for i in range(pa.get_device_count())}
        inputs = {i: info for i, info in inputs.items() if info.get("maxInputChannels", 0) > 0}
        listing = ", ".join(f"{i}: {info['name']}" for i, info in inputs.items()) or "none"
        if self.device is None:
            try:
                return int(pa.get_default_input_device_info()["index"])
            except OSError:
                raise AudioError(f"audio.device: there is no default input device (inputs: {listing})") from None
        if isinstance(self.device, int):
            if self.device in inputs:
                return self.device
            raise AudioError(f"audio.device: {self.device} is not an input device (inputs: {listing})")
        exact = [i for i, info in inputs.items() if info["name"] == self.device]
        partial = [i for i, info in inputs.items() if self.device.lower() in info["name"].lower()]
        if exact or partial:
            return (exact or partial)[0]
        raise AudioError(f"audio.device: no input device named like {self.device!r} (inputs: {listing})")

    def _callback(self, data: bytes, frame_count: int, time_info: dict, status: int):
        """Runs on PortAudio's thread: copy, count, return. Nothing here may block or allocate much."""
        overflow_flag, go_on, complete = self._flags
        lost = False
        if status & overflow_flag:
            self.input_overflows += 1
            lost = True
        dropped = self._ring.write(np.frombuffer(data, np.int16).reshape(-1, self.channels))
        if dropped:
            self.dropped_frames += dropped
            lost = True
        self.overflows += lost
        return None, (complete if self.stop.is_set() else go_on)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._stream is None:
            self.open()
        resampler = StreamResampler(self.rate) if self.rate != SAMPLE_RATE else None
        reported, reported_at = 0, -float("inf")
        try:
            while not self.stop.is_set():
                frames = self._ring.read(_READ_TIMEOUT)
                now = time.monotonic()
                if self.overflows != reported and now - reported_at >= OVERFLOW_REPORT_EVERY:
                    log.warning("audio overflow: %d callbacks lost audio so far (%d device overflows, %d frames "
                                "dropped because the analysis fell behind)", self.overflows, self.input_overflows,
                                self.dropped_frames)
                    reported, reported_at = self.overflows, now
                if frames is None:
                    if self._stream is not None and not self._stream.is_active() and not self.stop.is_set():
                        raise AudioError(f"audio device {self._name!r}: the input stream stopped")
                    continue
                # Format and channel here; the rate by the resampler, which carries its state across chunks.
                mono = to_mono(frames, self.channel)
                chunk = resampler.push(mono) if resampler else mono
                if len(chunk):
                    yield chunk
        finally:
            self.close()

    def close(self) -> None:
        """Stop capturing. PortAudio waits for a device read in progress, which a hung device never finishes, so
        the wait is bounded: the agent must still stop (and publish `offline`) with a dead microphone."""
        stream, pa = self._stream, self._pa
        self._stream = self._pa = None
        if stream is None and pa is None:
            return

        def release() -> None:
            try:
                if stream is not None:
                    stream.stop_stream()
                    stream.close()
                if pa is not None:
                    pa.terminate()
            except OSError as exc:
                log.warning("closing the audio stream: %s", exc)

        closer = threading.Thread(target=release, name="audio-close", daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT)
        if closer.is_alive():
            log.warning("the audio device %r did not stop within %.0f s (it delivers nothing); leaving it",
                        self._name, CLOSE_TIMEOUT)


class WavFileSource:
    """A WAV file replayed as a stream: at its real pace (like a microphone) or as fast as it is read."""

    def __init__(self, path: str | os.PathLike, realtime: bool, stop: threading.Event, channel: Channel = 0) -> None:
        self.path = os.fspath(path)
        self.realtime = realtime
        self.stop = stop
        self.overflows = 0  # a file never overflows; kept for the common interface
        from humwatch.agent.signal.audio import (
            read_wav,  # scipy's WAV reader and resampler: loaded only to replay a file
        )

        self._samples = read_wav(self.path, channel)

    def describe(self) -> str:
        pace = "real time" if self.realtime else "fast"
        return f"file {self.path} ({len(self._samples) / SAMPLE_RATE:.1f} s, {pace})"

    def __iter__(self) -> Iterator[np.ndarray]:
        started = time.monotonic()
        for start in range(0, len(self._samples), FILE_CHUNK):
            if self.realtime:
                due = started + (start + FILE_CHUNK) / SAMPLE_RATE
                if self.stop.wait(max(0.0, due - time.monotonic())):
                    return
            elif self.stop.is_set():
                return
            yield self._samples[start: start + FILE_CHUNK]


def open_source(audio, stop: threading.Event) -> AudioSource:
    """The source an `[audio]` config section describes."""
    if audio.source == "file":
        return WavFileSource(audio.file, audio.realtime, stop, audio.channel)
    return DeviceSource(stop, audio.device, audio.rate, audio.channels, audio.channel)
