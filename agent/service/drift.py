"""Daily statistics of the window scores, and the advice to recalibrate when the normal sound drifts for days.

Window scores are already in held-out standard deviations: each detector's patch scores are standardised by the mean
and SD of its scores on the calibration's held-out normal sound, and the threshold is on that scale. A day's
scores go into a fixed histogram (DAY_BINS bins of BIN_WIDTH SD; bounded memory whatever the day's length), from
which its median and 95th percentile are read (to BIN_WIDTH). Windows scored while a machine alarm or a sensor
fault is raised are left out: they are the fault's sound, not the normal sound drifting.

Rules (thresholds in `[drift]`), each judged on the last `days` days that had at least `min_windows` windows:
  - median drift: every one of those days' medians lies more than `median_shift` SD from the calibration's held-out
    median (in the same direction);
  - tail near the threshold: every one of those days' 95th percentiles is above `threshold - p95_margin`.
Either makes `recalibration_suggested` true in the state message, with the reason. It never raises an alarm.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import pathlib
from dataclasses import asdict

import numpy as np

from humwatch.agent.config import DriftConfig
from humwatch.agent.durable import write_atomic
from humwatch.agent.transport.messages import DayScores, DriftToday

log = logging.getLogger(__name__)

BIN_WIDTH = 0.05
LOWEST, HIGHEST = -20.0, 80.0  # scores beyond are counted in the edge bins
DAY_BINS = int(round((HIGHEST - LOWEST) / BIN_WIDTH))
HISTORY_DAYS = 30


def _quantile(counts: np.ndarray, q: float) -> float | None:
    total = int(counts.sum())
    if total == 0:
        return None
    index = int(np.searchsorted(np.cumsum(counts), q * total, side="left"))
    return round(LOWEST + (index + 0.5) * BIN_WIDTH, 4)


class DailyScoreStats:
    """Window scores by UTC day; the completed days' statistics are kept (HISTORY_DAYS) and saved to `path`."""

    def __init__(self, bundle_id: str, threshold: float, baseline_median: float | None, rules: DriftConfig,
                 path: pathlib.Path | None = None) -> None:
        self.bundle_id, self.threshold, self.baseline_median = bundle_id, float(threshold), baseline_median
        self.rules, self.path = rules, path
        self.days: list[DayScores] = []
        self._day: str | None = None
        self._counts = np.zeros(DAY_BINS, np.int64)
        self._load()

    def add(self, score: float, when: dt.datetime) -> bool:
        """Count one window score; True when it began a new day (the completed days, and so the advice, changed)."""
        day = when.astimezone(dt.timezone.utc).date().isoformat()
        new_day = day != self._day
        if new_day:
            self._close_day()
            self._day = day
        index = int((score - LOWEST) / BIN_WIDTH) if np.isfinite(score) else DAY_BINS - 1
        self._counts[min(max(index, 0), DAY_BINS - 1)] += 1
        return new_day

    def _close_day(self) -> None:
        if self._day is not None and self._counts.any():
            self.days = (self.days + [self._stats()])[-HISTORY_DAYS:]
            self._counts[:] = 0
            self.save()

    def _stats(self) -> DayScores:
        return DayScores(day=self._day or "", windows=int(self._counts.sum()), median=_quantile(self._counts, 0.5),
                         p95=_quantile(self._counts, 0.95))

    def today(self) -> DriftToday:
        """The current day's statistics, for the score telemetry."""
        return DriftToday(**asdict(self._stats()), baseline_median=self.baseline_median)

    def advice(self) -> tuple[bool, str | None]:
        """(recalibration suggested, why) from the completed days."""
        rules = self.rules
        counted = [d for d in self.days if d.windows >= rules.min_windows][-rules.days:]
        medians = [d.median for d in counted if d.median is not None]
        p95s = [d.p95 for d in counted if d.p95 is not None]
        if len(counted) < rules.days or len(medians) < len(counted) or len(p95s) < len(counted):
            return False, None
        span = f"{counted[0].day} to {counted[-1].day}"
        if self.baseline_median is not None:
            shifts = [m - self.baseline_median for m in medians]
            if all(s > rules.median_shift for s in shifts) or all(s < -rules.median_shift for s in shifts):
                return True, (f"the daily median window score has been {min(shifts):+.2f} to {max(shifts):+.2f} "
                              f"held-out SD from calibration's {self.baseline_median:.2f} on {len(counted)} days "
                              f"({span}): the normal sound has changed")
        if all(p95 > self.threshold - rules.p95_margin for p95 in p95s):
            return True, (f"the daily 95th percentile of the window score has been within {rules.p95_margin:g} SD "
                          f"of the alarm threshold {self.threshold:.2f} or above it on {len(counted)} days ({span}): "
                          "false alarms are near")
        return False, None

    def save(self) -> None:
        """Keep the completed days and today's histogram across restarts (atomically; a failure is logged)."""
        if self.path is None:
            return
        state = {"bundle": self.bundle_id, "days": [asdict(d) for d in self.days], "day": self._day,
                 "counts": {str(i): int(c) for i, c in enumerate(self._counts) if c}}
        try:
            write_atomic(self.path, (json.dumps(state) + "\n").encode())
        except OSError as exc:
            log.warning("drift statistics not saved to %s: %s", self.path, exc.strerror or exc)

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            state = json.loads(self.path.read_text())
            if state.get("bundle") != self.bundle_id:
                return  # another calibration: its scores are on another scale
            self.days = [DayScores(**d) for d in state["days"]][-HISTORY_DAYS:]
            self._day = state["day"]
            for index, count in state["counts"].items():
                self._counts[int(index)] = int(count)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("drift statistics in %s ignored (%s); starting afresh", self.path, exc)
            self.days, self._day, self._counts[:] = [], None, 0
