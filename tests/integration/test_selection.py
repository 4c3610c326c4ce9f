

"""Per-machine pipeline selection on real normal clips (the shared DCASE recordings) with the real int8 extractor."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from humwatch.agent.contract import WINDOW_PATCHES, FrontEndParams
from humwatch.agent.model.bundle import Bundle, PipelineSpec, write_bundle
from humwatch.agent.model.extractor import Extractor
from humwatch.agent.model.pipeline import PatchScorer, Pipeline, window_reading
from humwatch.agent.model.timing import DEFAULT_GATE
from humwatch.agent.signal.audio import read_wav
from humwatch.agent.signal.frontend import clip_patches
from humwatch.calibration.candidates import CANDIDATES
from humwatch.calibration.selection import Injection, choose_pipeline, prepare_clip
from humwatch.calibration.threshold import heldout_mask

N_CLIPS = 16  # 12 fitted (216 patches), 4 held out


def louder(samples: np.ndarray) -> np.ndarray:
    """+12 dB (twice the clip-to-clip level spread of these recordings): every Mel band up by the same amount,
    which per-patch min-max images cannot show."""
    return np.clip(samples * 4.0, -1.0, 1.0).astype(np.float32)


GAIN = [Injection("gain", louder)]


@pytest.fixture(scope="module")
def extractor(squeezenet_int8) -> Extractor:
    return Extractor(squeezenet_int8)


@pytest.fixture(scope="module")
def normal_files(shared_dir) -> list:
    return sorted((shared_dir / "audio" / "dcase2020-id00" / "train").glob("normal_*.wav"))[:N_CLIPS]


@pytest.fixture(scope="module")
def clips(normal_files, extractor) -> list:
    return [prepare_clip(read_wav(f), extractor, FrontEndParams()) for f in normal_files]


@pytest.fixture(scope="module")
def held(clips) -> np.ndarray:
    return heldout_mask([len(c.db) for c in clips])


def choose(clips, held, extractor, **options):
    return choose_pipeline(clips, held, extractor.sha256, extractor, FrontEndParams(), **options)


def test_a_level_change_the_cnn_cannot_see_picks_the_logmel_candidate(clips, held, extractor):
    selection = choose(clips, held, extractor, candidates=("paper", "cnn-ocsvm", "logmel-gmm"), default="paper",
                       injections=GAIN)
    aucs = {s.name: s.auc for s in selection.table}
    assert selection.chosen.name == "logmel-gmm"
    assert aucs["logmel-gmm"] > 0.95
    # the images of a louder clip are the same images: the CNN candidates score the faulted copies as normal
    assert aucs["paper"] < 0.75 and aucs["cnn-ocsvm"] < 0.75
    assert selection.fault_clips == int(held.sum())


def test_the_same_seed_gives_the_same_choice_and_scores(clips, held, extractor):
    options = dict(candidates=("cnn-ocsvm", "logmel-gmm", "fusion-max"), default="cnn-ocsvm", max_fault_clips=8)
    first = choose(clips, held, extractor, seed=3, **options)
    second = choose(clips, held, extractor, seed=3, **options)
    assert first.chosen.name == second.chosen.name
    assert first.table == second.table
    assert first.fault_clips == 8


def test_a_small_margin_keeps_the_default(clips, held, extractor):
    options = dict(candidates=("cnn-ocsvm", "logmel-gmm"), default="cnn-ocsvm", injections=GAIN)
    lead = choose(clips, held, extractor, margin=0.0, **options)
    aucs = {s.name: s.auc for s in lead.table}
    assert lead.chosen.name == "logmel-gmm" and aucs["logmel-gmm"] > aucs["cnn-ocsvm"]
    kept = choose(clips, held, extractor, margin=aucs["logmel-gmm"] - aucs["cnn-ocsvm"] + 0.001, **options)
    assert kept.chosen.name == "cnn-ocsvm"
    assert kept.reason.startswith("default")


def test_a_single_candidate_is_fitted_without_faults(clips, held, extractor):
    selection = choose(clips, held, extractor, candidates=("paper",))
    assert selection.chosen.name == "paper" and selection.fault_clips == 0 and selection.table == []


@pytest.mark.parametrize("candidate", ["fusion-timing", "fusion-2s", "logmel-gmm"])
def test_the_chosen_pipeline_is_a_bundle_the_agent_scores_identically(clips, held, extractor, squeezenet_int8,
                                                                      tmp_path, candidate):
    selection = choose(clips, held, extractor, candidates=(candidate,))
    spec = PipelineSpec(frontend=FrontEndParams(), threshold_high=3.0, threshold_low=2.0,
                        window_patches=WINDOW_PATCHES, extractor_sha256=extractor.sha256 if selection.uses_cnn else None,
                        **selection.spec_fields())
    version = write_bundle(tmp_path / "bundle", spec, {"machine": "fan1", "calibration": selection.report()},
                           selection.fill, extractor=squeezenet_int8 if selection.uses_cnn else None)
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.spec == spec
    timing = ["timing.npz"] if candidate == "fusion-timing" else []
    assert (bundle.spec.timing is not None) == bool(timing)
    known = ["extractor.tflite.known.npz"] if selection.uses_cnn else []  # the extractor's known answers
    assert sorted(p.name for p in version.glob("*.npz")) == sorted({d.file for d in bundle.spec.detectors}
                                                                   | set(timing) | set(known))
    assert (bundle.extractor_path is None) == (candidate == "logmel-gmm")
    clip = clips[int(np.flatnonzero(held)[0])]
    board = PatchScorer(bundle).score(clip_patches(clip.samples, bundle.spec.frontend))
    np.testing.assert_allclose(board, selection.detector_scores(clip), rtol=1e-6, atol=1e-6)
    streamed = [r for r in Pipeline(bundle).push(clip.samples) if r.window_score is not None]
    np.testing.assert_allclose([r.window_score for r in streamed], selection.window_scores(clip), rtol=1e-6,
                               atol=1e-6)
    # each detector's reading is named after its part (the two-sided one apart from its file), and the window
    # score is their mean, plus the timing reading beyond its gate
    parts = list(CANDIDATES[candidate].parts)
    assert [d.name for d in bundle.spec.detectors] == parts
    for result in streamed:
        readings = dict(result.readings)
        timing_term = max(0.0, readings.pop("timing") - bundle.spec.timing.gate) if bundle.spec.timing else 0.0
        assert list(readings) == parts
        assert np.mean(list(readings.values())) + timing_term == pytest.approx(result.window_score, abs=1e-12)
    # standardised on the held-out normal patches: mean 0 and unit spread there
    held_scores = np.concatenate([selection.detector_scores(c) for c, h in zip(clips, held) if h])
    if candidate == "logmel-gmm":
        assert abs(held_scores.mean()) < 1e-9 and abs(held_scores.std() - 1) < 1e-9


def test_a_real_machine_running_faster_lifts_the_timing_reading_past_its_gate(clips, held, extractor):
    """Two held-out real fan clips played 5 % fast: the spectrum keeps its shape, the comb moves. 2 % fast is
    within the speed a healthy motor wanders by, and stays under the gate."""
    selection = choose(clips, held, extractor, candidates=("fusion-timing",))
    normal = np.concatenate([c.samples for c, h in zip(clips, held) if h][:2])

    def played(up: int, down: int):
        return prepare_clip(signal.resample_poly(normal, up, down).astype(np.float32), extractor, FrontEndParams())

    fast, tolerated, same = played(20, 21), played(50, 51), played(1, 1)
    assert selection.timing.score(same.timing).max() < DEFAULT_GATE < selection.timing.score(fast.timing).min()
    assert selection.timing.score(tolerated.timing).max() < DEFAULT_GATE
    # the fused score rises by the timing reading beyond the gate, and only by that
    lift = selection.window_scores(fast) - selection.window_scores(fast, "fusion-2s")
    np.testing.assert_allclose(lift, selection.timing.score(fast.timing) - DEFAULT_GATE, atol=1e-9)
    np.testing.assert_allclose(selection.window_scores(same), selection.window_scores(same, "fusion-2s"), atol=1e-12)


def steadier(samples: np.ndarray) -> np.ndarray:
    """The clip's average spectrum with none of its frame-to-frame change: one 256-sample period (the hop) with the
    clip's mean magnitude spectrum, repeated, so every frame is the same (an extreme of a clogged pump's steadier
    sound)."""
    blocks = samples[: len(samples) // 256 * 256].reshape(-1, 256)
    magnitude = np.abs(np.fft.rfft(blocks, axis=1)).mean(axis=0)
    phases = np.random.default_rng(0).uniform(0, 2 * np.pi, magnitude.size)
    period = np.fft.irfft(magnitude * np.exp(1j * phases), n=256)
    return np.tile(period, len(blocks)).astype(np.float32)


def test_the_two_sided_dynamics_reading_flags_a_sound_steadier_than_normal(clips, held, extractor):
    selection = choose(clips, held, extractor, candidates=("fusion", "fusion-2s"), injections=GAIN)
    one, two = selection.entries["logmel-dynamics-gmm"], selection.entries["logmel-dynamics-gmm-2s"]
    assert one.window_centre is None and two.window_centre is not None
    # one fit serves both readings
    assert selection.fitted["logmel-dynamics-gmm"] is selection.fitted["logmel-dynamics-gmm-2s"]
    normal = clips[int(np.flatnonzero(held)[0])]
    steady = prepare_clip(steadier(normal.samples), extractor, FrontEndParams())
    dynamics = selection.detector_scores(steady, "fusion")[:, 2].mean(keepdims=True)
    # a one-sided likelihood calls the steady copy far more normal than normal; the two-sided reading, abnormal
    assert window_reading(dynamics, one)[0] < -2.0 and window_reading(dynamics, two)[0] > 2.0
    lift = selection.clip_score(steady, "fusion-2s") - selection.clip_score(steady, "fusion")
    usual = selection.clip_score(normal, "fusion-2s") - selection.clip_score(normal, "fusion")
    assert lift > 2.0 > abs(usual)


def test_a_capped_fusion_is_bounded_by_its_cap_and_an_uncapped_gmm_is_not(clips, held, extractor):
    selection = choose(clips, held, extractor, candidates=("fusion",))
    cap = CANDIDATES["fusion"].patch_score_cap
    assert cap is not None and max(selection.detector_scores(c).max() for c in clips) <= cap
    ceiling = selection.score_ceiling()
    assert ceiling is not None and max(selection.window_scores(c).max() for c in clips) <= ceiling
    assert selection.score_ceiling("paper") is None  # its GMM-80 part alone, uncapped


def test_held_out_must_be_a_proper_part(clips, extractor):
    with pytest.raises(ValueError, match="held"):
        choose(clips, np.zeros(len(clips), bool), extractor)
    with pytest.raises(ValueError, match="unknown candidate"):
        choose(clips, heldout_mask([len(c.db) for c in clips]), extractor, candidates=("resnet-magic",))
