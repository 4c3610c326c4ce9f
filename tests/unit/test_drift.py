"""Daily window-score statistics and the recalibration advice: documented rules, never an alarm."""
from __future__ import annotations

import datetime as dt

import numpy as np

from humwatch.agent.config import DriftConfig
from humwatch.agent.service.drift import BIN_WIDTH, DailyScoreStats

RULES = DriftConfig(days=3, median_shift=1.0, p95_margin=0.5, min_windows=100)
START = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)


def feed(stats: DailyScoreStats, days: int, centre: float, first_day: int = 0, per_day: int = 200) -> None:
    rng = np.random.default_rng(first_day)
    for day in range(first_day, first_day + days):
        for i, score in enumerate(rng.normal(centre, 0.3, per_day)):
            stats.add(float(score), START + dt.timedelta(days=day, seconds=i))


def test_daily_median_and_p95_are_read_from_the_histogram():
    stats = DailyScoreStats("b1", threshold=3.0, baseline_median=0.0, rules=RULES)
    scores = np.linspace(-1.0, 1.0, 2001)
    for i, score in enumerate(scores):
        stats.add(float(score), START + dt.timedelta(seconds=i))
    today = stats.today()
    assert today.windows == 2001 and today.unit == "held-out SD" and today.median is not None
    assert today.p95 is not None and abs(today.median - 0.0) <= BIN_WIDTH and abs(today.p95 - 0.9) <= BIN_WIDTH


def test_normal_sound_that_stays_put_suggests_nothing():
    stats = DailyScoreStats("b1", threshold=3.0, baseline_median=0.0, rules=RULES)
    feed(stats, 6, centre=0.2)
    stats.add(0.0, START + dt.timedelta(days=7))  # closes the sixth day
    assert len(stats.days) == 6 and stats.advice() == (False, None)


def test_a_median_drift_for_the_configured_days_suggests_recalibration():
    stats = DailyScoreStats("b1", threshold=4.0, baseline_median=0.0, rules=RULES)
    feed(stats, 2, centre=1.6)
    stats.add(0.0, START + dt.timedelta(days=2))
    assert stats.advice() == (False, None)  # two days are not three
    feed(stats, 1, centre=1.6, first_day=2)
    stats.add(0.0, START + dt.timedelta(days=3))
    suggested, reason = stats.advice()
    assert suggested and "daily median" in reason and "3 days" in reason


def test_days_with_too_few_windows_do_not_count():
    stats = DailyScoreStats("b1", threshold=4.0, baseline_median=0.0, rules=RULES)
    feed(stats, 3, centre=1.6, per_day=50)  # the machine ran a few minutes a day
    stats.add(0.0, START + dt.timedelta(days=3))
    assert stats.advice() == (False, None)


def test_a_tail_near_the_threshold_suggests_recalibration():
    stats = DailyScoreStats("b1", threshold=2.0, baseline_median=None, rules=RULES)
    feed(stats, 3, centre=1.4)  # p95 about 1.9: within 0.5 of the threshold
    stats.add(0.0, START + dt.timedelta(days=3))
    suggested, reason = stats.advice()
    assert suggested and "95th percentile" in reason


def test_statistics_survive_a_restart_but_not_a_new_bundle(tmp_path):
    path = tmp_path / "drift.json"
    stats = DailyScoreStats("b1", threshold=4.0, baseline_median=0.0, rules=RULES, path=path)
    feed(stats, 3, centre=1.6)
    stats.add(0.0, START + dt.timedelta(days=3))
    stats.save()
    again = DailyScoreStats("b1", threshold=4.0, baseline_median=0.0, rules=RULES, path=path)
    assert again.days == stats.days and again.today().windows == 1 and again.advice()[0]
    other = DailyScoreStats("b2", threshold=4.0, baseline_median=0.0, rules=RULES, path=path)
    assert other.days == [] and other.advice() == (False, None)
