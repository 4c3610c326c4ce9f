"""The timing detector: a machine at the wrong speed or pace, on synthetic machines whose speed we set, streamed
exactly as calibrated, and damaged timing files refused."""
from __future__ import annotations

import numpy as np
import pytest

from humwatch.agent.contract import PATCH_HOP_SAMPLES, WINDOW_SAMPLES
from humwatch.agent.errors import ModelError
from humwatch.agent.model.timing import (
    CYCLE_GRID,
    DEFAULT_GATE,
    SPEED_GRID,
    Profiles,
    StreamProfiles,
    TimingModel,
    fit_timing,
    window_ends,
    window_profiles,
)
from humwatch.calibration.export import write_npz_atomic
from humwatch.calibration.selection import clip_timing
from humwatch.evaluation.synth import Anomaly, synth_clip


def profiles_of(machine_type: str, indices, anomaly: Anomaly | None = None) -> Profiles:
    return Profiles.stack([clip_timing(synth_clip(machine_type, 0, i, abnormal=anomaly is not None,
                                                  anomaly=anomaly)[0]) for i in indices])


@pytest.mark.parametrize("machine_type", ["valve", "fan"])  # a cycle to time; a shaft to hear
def test_a_machine_at_the_wrong_speed_reads_past_the_gate_and_normal_ones_do_not(machine_type):
    model = fit_timing(profiles_of(machine_type, range(12)), profiles_of(machine_type, range(12, 18)))
    unheard = model.score(profiles_of(machine_type, range(18, 24)))
    # severity 0.6-1: the machine runs 10-15 % fast or slow, where a healthy one wanders by 2 %
    wrong = np.array([model.score(profiles_of(machine_type, [i], Anomaly("speed", 0.6 + 0.1 * i)))[0]
                      for i in range(5)])
    assert np.all(unheard < DEFAULT_GATE), unheard
    assert np.sum(wrong > DEFAULT_GATE) >= 3 and np.median(wrong) > np.max(unheard) + 1.5, (wrong, unheard)


def test_a_window_at_normal_speed_and_pace_reads_zero_however_far_the_centre_sits():
    """A fan has no cycle: its cycle reading is noise and the held-out centre sits well above 0. A window at
    normal speed and pace (both readings 0, inside the tolerance) must read 0, not the centre's distance."""
    model = fit_timing(profiles_of("fan", range(12)), profiles_of("fan", range(12, 18)))
    unheard = profiles_of("fan", range(18, 24))
    raw, score = model.raw(unheard), model.score(unheard)
    assert model.centre[1] > 0.05
    at_normal = np.all(raw <= model.centre, axis=1)
    assert at_normal.any() and np.all(score[at_normal] == 0)
    np.testing.assert_allclose(score, np.max(np.maximum(0, raw - model.centre) / model.scale, axis=1))


def test_streamed_profiles_equal_the_clip_profiles_whatever_the_block_size():
    samples = np.concatenate([synth_clip("slider", 0, i)[0] for i in range(2)])
    ends = window_ends(len(samples))
    assert ends[0] == WINDOW_SAMPLES and np.all(np.diff(ends) == PATCH_HOP_SAMPLES) and ends[-1] <= len(samples)
    whole = window_profiles(samples, ends)
    for block in (1000, 8192, 77_777, len(samples)):
        stream, got = StreamProfiles(), []
        for start in range(0, len(samples), block):
            chunk = samples[start:start + block]
            got += stream.push(chunk, ends[(ends > start) & (ends <= start + len(chunk))])
        streamed = Profiles.stack([p for p in got if p is not None])
        np.testing.assert_array_equal(streamed.speed, whole.speed)
        np.testing.assert_array_equal(streamed.cycle, whole.cycle)


def test_a_clip_shorter_than_a_window_has_no_profile():
    assert len(clip_timing(np.zeros(WINDOW_SAMPLES - 1, np.float32))) == 0
    assert len(clip_timing(np.zeros(WINDOW_SAMPLES, np.float32))) == 1


GOOD = {"speed_template": np.zeros(SPEED_GRID.size), "cycle_template": np.zeros(CYCLE_GRID.size),
        "centre": np.zeros(2), "scale": np.ones(2)}


@pytest.mark.parametrize("damage, field", [
    ({"scale": np.array([1.0, 0.0])}, "scale"),
    ({"centre": np.array([np.nan, 0.0])}, "centre"),
    ({"speed_template": np.zeros(10)}, "speed_template"),
    ({"cycle_template": None}, r"not a timing file \(no cycle_template\)"),
])
def test_a_damaged_timing_file_is_refused_naming_the_file_and_array(tmp_path, damage, field):
    arrays = {k: v for k, v in {**GOOD, **damage}.items() if v is not None}
    path = tmp_path / "timing.npz"
    write_npz_atomic(path, arrays)
    with pytest.raises(ModelError, match=rf"timing\.npz.*{field}"):
        TimingModel.load(path)
    write_npz_atomic(path, GOOD)
    assert TimingModel.load(path).scale.tolist() == [1.0, 1.0]


def truncated(path):
    write_npz_atomic(path, GOOD)
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize("damage", [
    lambda path: path.write_bytes(b""),
    lambda path: path.write_bytes(b"not numpy"),
    truncated,
    lambda path: np.save(open(path, "wb"), np.zeros(3)),
    lambda path: path.mkdir(),
], ids=["empty", "text", "truncated", "single .npy", "directory"])
def test_a_damaged_or_missing_timing_file_is_one_model_error_naming_it(tmp_path, damage):
    path = tmp_path / "timing.npz"
    damage(path)
    with pytest.raises(ModelError, match="timing.npz: not a readable timing .npz"):
        TimingModel.load(path)
    with pytest.raises(ModelError, match="missing.npz: no such timing file"):
        TimingModel.load(tmp_path / "missing.npz")
