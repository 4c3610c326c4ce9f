

"""Calibration on real machine sound: the bundle the agent loads, thresholds that separate faults from normal sound,
atomic bundle replacement and rollback, and clear refusals of unusable audio."""



import numpy as np
import pytest

from humwatch.agent.contract import SAMPLE_RATE
from humwatch.agent.errors import AudioError
from humwatch.agent.model.bundle import Bundle
from humwatch.agent.model.pipeline import Pipeline
from humwatch.agent.signal.audio import read_wav
from humwatch.calibration.calibrate import calibrate
from humwatch.calibration.collect import Block, meter_line, split_blocks, survey, wav_blocks
from humwatch.calibration.threshold import choose_threshold, decisions_per_day, heldout_mask
from humwatch.cli import main as humwatch
from tests.plugins.recordings import CALIBRATION_CLIPS, window_scores


def test_a_recording_too_short_to_calibrate_is_refused_before_it_starts(tmp_path, capsys):
    code = humwatch(["calibrate", "--out", str(tmp_path / "bundle"), "--device", "no-such-mic", "--record", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err == ("humwatch calibrate: error: --record 2: calibration needs at least 4 min of normal "
                                 "sound (15 or more give a steadier threshold)\n")


def test_a_level_jump_halfway_is_refused(normal_paths):
    blocks = wav_blocks(normal_paths[:24])
    for block in blocks[12:]:
        block.samples = block.samples * 4.0  # +12 dB: the machine changed state halfway
    with pytest.raises(AudioError, match=r"level changes by 12\.0 dB .* not steady enough"):
        survey(blocks)


def test_a_spectral_change_halfway_is_refused_even_at_the_same_level(normal_paths):
    from scipy.signal import butter, sosfilt

    blocks = wav_blocks(normal_paths[:24])
    lowpass = butter(8, 1000, fs=SAMPLE_RATE, output="sos")
    for block in blocks[12:]:
        muffled = sosfilt(lowpass, block.samples)
        block.samples = (muffled * np.std(block.samples) / np.std(muffled)).astype(np.float32)
    with pytest.raises(AudioError, match=r"spectrum changes by .* dB between the first half"):
        survey(blocks)


def test_steady_real_sound_passes_the_checks_without_warnings(normal_paths):
    found = survey(wav_blocks(normal_paths[:24]))
    assert found.warnings == [] and found.seconds == 240.0


def test_a_long_recording_is_cut_into_blocks_and_named_by_time():
    blocks = split_blocks("recording", np.zeros(65 * SAMPLE_RATE, np.float32))
    assert [b.seconds for b in blocks] == [20.0, 20.0, 25.0]
    assert blocks[2].name == "recording 00:40–01:05"
    assert split_blocks("a.wav", np.zeros(10 * SAMPLE_RATE))[0].name == "a.wav"
    assert [b.name for b in split_blocks("long.wav", np.zeros(45 * SAMPLE_RATE))] == ["long.wav 00:00–00:20",
                                                                                    "long.wav 00:20–00:45"]
    silent = Block("recording", 40.0, np.zeros(SAMPLE_RATE, np.float32))
    with pytest.raises(AudioError, match="recording 00:40–00:41: silent"):
        survey([silent])


def test_the_level_meter_line():
    assert meter_line(83, 300, -23.4) == "recording 01:23 / 05:00  level -23 dBFS ▮▮▮▮▮▯▯▯"
    assert meter_line(0, 60, -200) == "recording 00:00 / 01:00  level -99 dBFS ▯▯▯▯▯▯▯▯"
    assert meter_line(1, 60, -40.4) == meter_line(1, 60, -39.6)  # one number shown, one drawing


def test_threshold_extrapolates_a_gaussian_tail_to_the_stated_rate():
    rng = np.random.default_rng(1)
    scores = rng.normal(2.0, 0.5, 20)
    weekly = choose_threshold(scores, 20, 1 / 7)
    daily = choose_threshold(scores, 20, 1.0)
    assert weekly.method == "gaussian" and decisions_per_day() == pytest.approx(86400 / (18 * 0.512))
    from scipy import stats
    z = stats.norm.isf(1 / 7 / decisions_per_day())
    assert weekly.high == pytest.approx(scores.mean() + z * scores.std(ddof=1))
    assert weekly.high > daily.high > scores.max()
    assert weekly.expected_false_alarms_per_day == pytest.approx(1 / 7)
    assert scores.mean() < weekly.low < weekly.high


def test_threshold_fits_a_generalized_pareto_tail_when_the_sample_is_large():
    rng = np.random.default_rng(0)
    scores = rng.exponential(1.0, 20_000)  # exponential tail: exceeded with probability p at -ln(p)
    chosen = choose_threshold(scores, 20_000, 1 / 7)
    assert chosen.method == chosen.governed_by == "gpd" and abs(chosen.tail["shape"]) < 0.1
    # extrapolating 15 times beyond the sample's tail: within 10 % (a Gaussian fit would be off by far more)
    assert chosen.high == pytest.approx(-np.log(1 / 7 / decisions_per_day()), rel=0.1)
    assert chosen.high > scores.max()


def test_threshold_is_never_below_the_largest_held_out_score():
    scores = np.r_[np.zeros(19), 100.0]
    chosen = choose_threshold(scores, 20)
    assert chosen.high == 100.0 and chosen.governed_by == "heldout-max"
    assert chosen.expected_false_alarms_per_day < 1 / 7


def test_heldout_blocks_are_every_fourth_block_that_holds_a_window():
    mask = heldout_mask([18, 18, 5, 18, 18, 18, 38, 18, 18, 18])
    assert np.flatnonzero(mask).tolist() == [4, 8]


def test_a_saturating_detector_gets_a_threshold_it_can_reach():
    scores = np.random.default_rng(3).normal(0.0, 1.0, 20)
    chosen = choose_threshold(scores, 20, 1 / 7, ceiling=scores.max() + 1.0)  # e.g. an OC-SVM's -intercept
    assert chosen.governed_by == "ceiling" and chosen.high == pytest.approx(scores.max() + 0.5)
    assert chosen.expected_false_alarms_per_day > 1 / 7  # and calibration warns that the rate is not met
    assert choose_threshold(scores, 20, 1 / 7, ceiling=100.0).governed_by == "gaussian"


def test_a_pipeline_without_the_cnn_needs_no_model_and_its_bundle_carries_none(tmp_path, normal_paths, dcase):
    """The log-Mel presets never load TFLite: calibrate without a converted model, and the agent with none.
    The pipeline is the spectrum and dynamics GMMs (`logmel-sd`)."""
    out = tmp_path / "bundle"
    result = calibrate(wav_blocks(normal_paths[:CALIBRATION_CLIPS]), tmp_path / "not-converted.tflite", out,
                       preset="logmel-sd", report=False)
    bundle = Bundle.load(out)
    assert bundle.spec.extractor_sha256 is None and not (out / "extractor.tflite").exists()
    assert [(d.kind, d.feature_source) for d in bundle.spec.detectors] == [("gmm", "logmel-frames"),
                                                                      ("gmm", "logmel-dynamics")]
    assert "feature extractor: none" in "\n".join(result.summary_lines())
    pipeline = Pipeline(bundle)
    assert pipeline.scorer.extractor is None
    anomaly = window_scores(pipeline, read_wav(dcase / "test" / "anomaly_id_00_00000000.wav")).max()
    normal = [window_scores(pipeline, read_wav(p))[-1] for p in normal_paths[CALIBRATION_CLIPS:]]
    assert np.mean(anomaly > np.array(normal)) >= 0.9
