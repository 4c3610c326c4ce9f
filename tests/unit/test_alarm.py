"""The alarm and sensor-health state machines, driven with plain numbers and timestamps."""
import math

import numpy as np
import pytest

from humwatch.agent.service.alarm import AlarmPolicy, ChunkStats, SensorHealth

RATE = 16000


def run(policy: AlarmPolicy, scores):
    return [(i, e.kind) for i, s in enumerate(scores) if (e := policy.update(float(i), s)) is not None]


def test_raises_after_n_consecutive_scores_above_the_high_threshold():
    policy = AlarmPolicy(threshold_high=10.0, threshold_low=8.0, raise_after=3, clear_after=4)
    events = run(policy, [5, 11, 12, 5, 11, 12, 13, 14])
    assert events == [(6, "raised")]
    assert policy.active


def test_raised_event_carries_score_threshold_and_run_length():
    policy = AlarmPolicy(10.0, 8.0, raise_after=2, clear_after=2)
    assert policy.update(0.0, 11.0) is None
    event = policy.update(0.512, 12.5)
    assert (event.kind, event.time, event.window_score, event.threshold, event.consecutive) == \
        ("raised", 0.512, 12.5, 10.0, 2)


def test_hysteresis_scores_between_thresholds_neither_clear_nor_raise():
    policy = AlarmPolicy(10.0, 8.0, raise_after=1, clear_after=3)
    assert run(policy, [11, 9, 9, 9, 9, 7, 7, 9, 7, 7, 7]) == [(0, "raised"), (10, "cleared")]
    assert not policy.active


def test_no_flapping_around_a_single_threshold():
    policy = AlarmPolicy(10.0, 10.0, raise_after=3, clear_after=3)
    assert run(policy, [11, 9, 11, 9, 11, 9, 11, 11]) == []


def test_alarm_can_be_raised_again_after_clearing_and_reset_forgets_runs():
    policy = AlarmPolicy(1.0, 0.0, raise_after=2, clear_after=2)
    assert run(policy, [2, 2, -1, -1, 2, 2]) == [(1, "raised"), (3, "cleared"), (5, "raised")]
    policy.reset()
    assert not policy.active
    assert policy.update(0.0, 2.0) is None


def test_invalid_policy_and_scores_are_refused():
    with pytest.raises(ValueError):
        AlarmPolicy(1.0, 2.0)
    with pytest.raises(ValueError):
        AlarmPolicy(1.0, 0.0, raise_after=0)
    with pytest.raises(ValueError):
        AlarmPolicy(1.0, 0.0).update(0.0, math.nan)


def chunk(level: float, seconds: float = 0.5, clipped: float = 0.0) -> ChunkStats:
    n = int(RATE * seconds)
    x = np.random.default_rng(0).standard_normal(n) * level
    x[: int(n * clipped)] = 1.0
    return ChunkStats.of(np.clip(x, -1, 1), RATE)


def test_chunk_stats():
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)
    stats = ChunkStats.of(tone, RATE)
    assert stats.seconds == 1.0
    assert stats.rms_dbfs == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.01)
    assert stats.clipped_fraction == 0.0
    assert ChunkStats.of(np.zeros(100), RATE).rms_dbfs == -math.inf
    assert ChunkStats.of(np.array([1.0, -1.0, 0.0, 0.2]), RATE).clipped_fraction == 0.5


def test_silence_fault_after_its_duration_and_recovery_on_sound():
    health = SensorHealth(silence_dbfs=-60, silence_seconds=2.0)
    events = []
    for i in range(8):  # 4 s of silence in 0.5 s chunks
        events += health.observe(i * 0.5, chunk(1e-5))
    assert [(e.kind, e.reason, e.time) for e in events] == [("fault", "silence", 1.5)]
    assert health.faults == {"silence"}
    events = health.observe(4.0, chunk(0.1))
    assert [(e.kind, e.reason) for e in events] == [("recovered", "silence")]
    assert health.faults == set()


def test_short_silence_is_not_a_fault():
    health = SensorHealth(silence_dbfs=-60, silence_seconds=2.0)
    events = []
    for i in range(12):
        events += health.observe(i * 0.5, chunk(1e-5 if i % 3 else 0.1))
    assert events == []


def test_clipping_fault_over_its_window():
    health = SensorHealth(clipping_fraction=0.05, clipping_seconds=1.0)
    events = []
    for i in range(4):
        events += health.observe(i * 0.5, chunk(0.1, clipped=0.02))
    assert events == []
    events += health.observe(2.0, chunk(0.1, clipped=0.2))
    assert [(e.kind, e.reason) for e in events] == [("fault", "clipping")]
    assert "%" in events[0].detail
    for i in range(5, 8):
        events += health.observe(i * 0.5, chunk(0.1))
    assert [(e.kind, e.reason) for e in events] == [("fault", "clipping"), ("recovered", "clipping")]


def test_stall_from_arrival_times():
    health = SensorHealth(stall_seconds=3.0)
    assert health.check(100.0) == []
    health.observe(101.0, chunk(0.1))
    assert health.check(103.9) == []
    events = health.check(104.0)
    assert [(e.kind, e.reason, e.time) for e in events] == [("fault", "stalled", 104.0)]
    assert health.check(110.0) == []  # reported once
    events = health.observe(111.0, chunk(0.1))
    assert [(e.kind, e.reason) for e in events] == [("recovered", "stalled")]
