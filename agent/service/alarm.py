"""Deciding when the machine, or the microphone, is in trouble: pure state machines over numbers and timestamps.

No clock, file or socket in here: the service passes the times in, so every decision can be replayed in a test.
Machine trouble (the window score) and sensor trouble (the audio itself) are judged separately, because a dead
microphone must page someone to fix the microphone, not to inspect the machine.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

# A sample at or above this magnitude (of full scale) counts as clipped.
CLIP_LEVEL = 0.999


@dataclass(frozen=True)
class AlarmEvent:
    """The alarm state changed."""

    kind: Literal["raised", "cleared"]
    time: float  # stream time in seconds of the decision that changed the state
    window_score: float
    threshold: float  # the threshold that was crossed (high for raised, low for cleared)
    consecutive: int  # decisions in a row that crossed it


class AlarmPolicy:
    """Hysteresis on the window score: raise after `raise_after` consecutive scores above `threshold_high`,
    clear after `clear_after` consecutive scores below `threshold_low`. Scores in between keep the state and
    break both runs, so a score hovering at the threshold cannot make the alarm flap."""

    def __init__(self, threshold_high: float, threshold_low: float, raise_after: int = 3, clear_after: int = 10):
        if not threshold_low <= threshold_high:
            raise ValueError(f"threshold_low ({threshold_low}) must not be above threshold_high ({threshold_high})")
        if raise_after < 1 or clear_after < 1:
            raise ValueError("raise_after and clear_after must be at least 1")
        self.threshold_high = float(threshold_high)
        self.threshold_low = float(threshold_low)
        self.raise_after = int(raise_after)
        self.clear_after = int(clear_after)
        self.reset()

    def reset(self) -> None:
        """Back to normal with no runs counted (after a model reload or a sensor fault)."""
        self.active = False
        self._above = 0
        self._below = 0

    def update(self, t: float, window_score: float) -> AlarmEvent | None:
        """Take one decision; return an event when the alarm state changes, else None."""
        score = float(window_score)
        if not math.isfinite(score):
            raise ValueError(f"window score at t={t} is not finite: {score}")
        self._above = self._above + 1 if score > self.threshold_high else 0
        self._below = self._below + 1 if score < self.threshold_low else 0
        if not self.active and self._above >= self.raise_after:
            self.active = True
            self._below = 0
            return AlarmEvent("raised", t, score, self.threshold_high, self._above)
        if self.active and self._below >= self.clear_after:
            self.active = False
            self._above = 0
            return AlarmEvent("cleared", t, score, self.threshold_low, self._below)
        return None


@dataclass(frozen=True)
class SensorEvent:
    """A sensor condition started (`kind` "fault") or ended ("recovered"); `reason` says which condition."""

    kind: str
    reason: str  # "silence", "clipping" or "stalled"
    time: float  # the timestamp passed in with the observation that changed it
    detail: str


@dataclass(frozen=True)
class ChunkStats:
    """What the health check needs to know about one chunk of audio."""

    seconds: float
    rms_dbfs: float
    clipped_fraction: float

    @classmethod
    def of(cls, samples: np.ndarray, rate: int) -> "ChunkStats":
        x = np.asarray(samples, dtype=np.float64)
        if x.size == 0:
            return cls(0.0, -math.inf, 0.0)
        rms = math.sqrt(float(np.mean(x * x)))
        dbfs = 20.0 * math.log10(rms) if rms > 0 else -math.inf
        return cls(x.size / rate, dbfs, float(np.mean(np.abs(x) >= CLIP_LEVEL)))


class SensorHealth:
    """Judges the microphone from chunk statistics and arrival times.

    - silence: the RMS level stays below `silence_dbfs` for `silence_seconds` of audio (dead or unplugged mic);
    - clipping: more than `clipping_fraction` of the samples of the last `clipping_seconds` of audio at full scale;
    - stalled: no chunk has arrived for `stall_seconds` of the caller's clock (a hung driver or device).
    Each condition raises one "fault" event when it starts and one "recovered" event when it ends.
    """

    def __init__(self, silence_dbfs: float = -70.0, silence_seconds: float = 5.0, clipping_fraction: float = 0.01,
                 clipping_seconds: float = 2.0, stall_seconds: float = 3.0):
        self.silence_dbfs = silence_dbfs
        self.silence_seconds = silence_seconds
        self.clipping_fraction = clipping_fraction
        self.clipping_seconds = clipping_seconds
        self.stall_seconds = stall_seconds
        self.faults: set[str] = set()
        self._silent_for = 0.0
        self._recent: deque[ChunkStats] = deque()
        self._recent_seconds = 0.0
        self._last_arrival: float | None = None

    def observe(self, now: float, stats: ChunkStats) -> list[SensorEvent]:
        """Account for one chunk that arrived at time `now`; return the events it causes."""
        self._last_arrival = now
        events = self._set("stalled", False, now, "audio is arriving again")
        self._silent_for = self._silent_for + stats.seconds if stats.rms_dbfs < self.silence_dbfs else 0.0
        silent = self._silent_for >= self.silence_seconds
        events += self._set("silence", silent, now, f"level {stats.rms_dbfs:.1f} dBFS for {self._silent_for:.1f} s"
                            if silent else f"level back to {stats.rms_dbfs:.1f} dBFS")
        self._recent.append(stats)
        self._recent_seconds += stats.seconds
        while len(self._recent) > 1 and self._recent_seconds - self._recent[0].seconds >= self.clipping_seconds:
            self._recent_seconds -= self._recent.popleft().seconds
        if self._recent_seconds >= self.clipping_seconds or "clipping" in self.faults:
            share = sum(s.clipped_fraction * s.seconds for s in self._recent) / self._recent_seconds
            clipping = share > self.clipping_fraction
            events += self._set("clipping", clipping, now, f"{share:.1%} of samples at full scale")
        return events

    @property
    def silent(self) -> bool:
        """The last chunk was below the silence level (whether or not it has lasted long enough to be a fault)."""
        return self._silent_for > 0

    def check(self, now: float) -> list[SensorEvent]:
        """Call periodically: reports a stall when no chunk has arrived for `stall_seconds`."""
        if self._last_arrival is None:
            self._last_arrival = now  # the stall clock starts with the first check
        waited = now - self._last_arrival
        if waited >= self.stall_seconds:
            return self._set("stalled", True, now, f"no audio for {waited:.1f} s")
        return []

    def _set(self, reason: str, active: bool, now: float, detail: str) -> list[SensorEvent]:
        if active == (reason in self.faults):
            return []
        if active:
            self.faults.add(reason)
            return [SensorEvent("fault", reason, now, detail)]
        self.faults.discard(reason)
        return [SensorEvent("recovered", reason, now, detail)]
