"""Bundles: atomic versioned writes, rollback, refusal of damaged manifests, and the streaming pipeline."""
import json
import os

import numpy as np
import pytest

from humwatch.agent.contract import FrontEndParams, logmel_extractor_sha256
from humwatch.agent.errors import ModelError
from humwatch.agent.model.bundle import Bundle, PipelineSpec, rollback, write_bundle
from humwatch.agent.model.pipeline import PatchScorer, Pipeline, fuse, window_readings
from humwatch.agent.model.scorers import window_mean
from humwatch.agent.signal.audio import read_wav
from humwatch.agent.signal.frames import FRAME_SOURCES, frame_rows
from humwatch.agent.signal.frontend import clip_patches
from humwatch.calibration.detectors import fit_detector
from humwatch.cli import main as humwatch
from humwatch.evaluation.synth_cli import wav_bytes


@pytest.fixture(scope="module")
def normal_clips(shared_dir):
    paths = sorted((shared_dir / "audio" / "dcase2020-id00" / "train").glob("*.wav"))[:6]
    return [read_wav(p) for p in paths]


def fit_frame_detector(normal_clips, source: str):
    rows = np.concatenate([frame_rows(source, clip_patches(c).db) for c in normal_clips[:4]])
    return fit_detector("gmm", rows, logmel_extractor_sha256(), feature_source=source, n_components=4)


@pytest.fixture(scope="module")
def frame_detector(normal_clips):
    return fit_frame_detector(normal_clips, "logmel-frames")


def manifest(source: str = "logmel-frames", **changes):
    base = {"machine": "pump1", "frontend": FrontEndParams().to_dict(), "fusion": "mean", "window_patches": 18,
            "detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": source}],
            "threshold": {"high": 100.0, "low": 90.0}, "extractor": None}
    base.update(changes)
    return base


def spec(source: str = "logmel-frames", **changes) -> PipelineSpec:
    return PipelineSpec.from_json(manifest(source, **changes), "<test manifest>")


def write(link, detector, **changes):
    return write_bundle(link, spec(detector.feature_source, **changes), {"machine": "pump1"},
                        lambda d: detector.save(d / "frames.npz"))


@pytest.mark.parametrize("source", FRAME_SOURCES)
def test_streaming_pipeline_equals_offline_window_means(tmp_path, normal_clips, source):
    write(tmp_path / "bundle", fit_frame_detector(normal_clips, source))
    bundle = Bundle.load(tmp_path / "bundle")
    clip = np.concatenate(normal_clips[4:6])
    expected = fuse(window_readings(window_mean(PatchScorer(bundle).score(clip_patches(clip)), 18),
                                    bundle.spec.detectors), bundle.spec.fusion)
    pipeline, results = Pipeline(bundle), []
    for start in range(0, len(clip), 3000):
        results += pipeline.push(clip[start: start + 3000])
    windows = [r.window_score for r in results]
    assert len(results) == len(clip_patches(clip)) and windows[:17] == [None] * 17
    np.testing.assert_allclose(windows[17:], expected, rtol=1e-12)
    assert results[0].time == pytest.approx(16640 / 16000)
    # a manifest without detector names (written before they existed) calls a detector by its file's stem
    assert [r.readings for r in results[17:]] == [{"frames": w} for w in windows[17:]]
    assert np.diff([r.time for r in results]) == pytest.approx(0.512)


def test_two_readings_of_one_file_are_named_apart_and_fused_by_max(tmp_path, normal_clips, frame_detector):
    # a manifest from before names: the two-sided reading gets calibration's "-2s" name, not its file's stem
    entries = [{"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames"},
               {"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames", "window_centre": 0.5}]
    write(tmp_path / "bundle", frame_detector, detectors=entries, fusion="max")
    bundle = Bundle.load(tmp_path / "bundle")
    assert [d.name for d in bundle.spec.detectors] == ["frames", "frames-2s"]
    windows = [r for r in Pipeline(bundle).push(np.concatenate(normal_clips[4:6])) if r.window_score is not None]
    assert len(windows) > 10
    for result in windows:
        one, two = result.readings["frames"], result.readings["frames-2s"]
        assert two == pytest.approx(abs(one - 0.5), abs=1e-12)
        assert result.window_score == max(one, two)


def test_a_louder_machine_scores_higher(tmp_path, normal_clips, frame_detector):
    write(tmp_path / "bundle", frame_detector)
    scorer = PatchScorer(Bundle.load(tmp_path / "bundle"))
    normal = scorer.score(clip_patches(normal_clips[5])).mean()
    t = np.arange(len(normal_clips[5])) / 16000
    whine = normal_clips[5] + 0.05 * np.sin(2 * np.pi * 3100 * t).astype(np.float32)
    assert scorer.score(clip_patches(whine)).mean() > normal + 50


def test_a_capped_pipeline_limits_each_detectors_patch_score_before_fusing(tmp_path, normal_clips, frame_detector):
    """A knock: one patch far outside normal. Capped, it moves its window by at most cap / window_patches."""
    clip = normal_clips[5].copy()
    clip[80_000:80_400] += np.hanning(400).astype(np.float32) * 0.9
    scores = {}
    for cap in (None, 10.0):
        write(tmp_path / f"bundle-{cap}", frame_detector, patch_score_cap=cap, fusion="max")
        bundle = Bundle.load(tmp_path / f"bundle-{cap}")
        assert bundle.spec.patch_score_cap == cap
        scores[cap] = PatchScorer(bundle).score(clip_patches(clip))
    assert scores[None].max() > 10.0  # unstandardised scores of this GMM: the knock scores far out
    np.testing.assert_array_equal(scores[10.0], np.minimum(scores[None], 10.0))


def test_new_version_replaces_link_and_rollback_restores(tmp_path, frame_detector):
    link = tmp_path / "bundle"
    first = write(link, frame_detector)
    second = write(link, frame_detector, threshold={"high": 5.0, "low": 4.0})
    assert link.resolve() == second and Bundle.load(link).spec.threshold_high == 5.0
    assert Bundle.load(link).manifest["previous"] == first.name
    assert rollback(link) == first and Bundle.load(link).spec.threshold_high == 100.0
    with pytest.raises(ModelError, match="no previous bundle"):
        rollback(link)


def test_rollback_from_a_damaged_bundle_goes_to_the_newest_other_version(tmp_path, frame_detector, monkeypatch):
    link = tmp_path / "bundle"
    first = write(link, frame_detector)
    second = write(link, frame_detector, threshold={"high": 5.0, "low": 4.0})
    os.utime(first, (1, 1))  # the oldest
    third = write(link, frame_detector, threshold={"high": 7.0, "low": 6.0})
    (third / "bundle.json").write_text('{"previous": "')  # cut short: it cannot say what it replaced
    monkeypatch.chdir(tmp_path)  # named relative to here, as on a command line
    assert rollback("bundle").name == second.name and Bundle.load(link).spec.threshold_high == 5.0


def test_interrupted_write_leaves_the_bundle_in_use_untouched(tmp_path, frame_detector):
    link = tmp_path / "bundle"
    first = write(link, frame_detector)

    def crash(directory):
        frame_detector.save(directory / "frames.npz")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_bundle(link, spec(), {}, crash)
    assert link.resolve() == first and Bundle.load(link).id == first.name
    assert [p.name for p in (tmp_path / "bundle.versions").iterdir()] == [first.name]


def test_a_partial_version_left_by_a_killed_calibration_is_cleared(tmp_path, frame_detector):
    (tmp_path / "bundle.versions" / ".20260101T000000Z-abcdef.partial").mkdir(parents=True)
    version = write(tmp_path / "bundle", frame_detector)
    assert [p.name for p in (tmp_path / "bundle.versions").iterdir()] == [version.name]


def test_a_bundle_the_agent_would_refuse_is_never_written(tmp_path, frame_detector):
    with pytest.raises(ModelError, match="threshold"):
        write(tmp_path / "bundle", frame_detector, threshold={"high": 1.0, "low": 2.0})
    assert not (tmp_path / "bundle").exists()


def test_old_versions_are_pruned(tmp_path, frame_detector):
    for _ in range(5):
        write(tmp_path / "bundle", frame_detector)
    assert len(list((tmp_path / "bundle.versions").iterdir())) == 3


def test_plain_directory_bundle_is_adopted(tmp_path, frame_detector):
    plain = write(tmp_path / "made" , frame_detector)
    link = tmp_path / "bundle"
    import shutil
    shutil.copytree(plain, link)
    write(link, frame_detector)
    assert link.is_symlink() and rollback(link).name.startswith("adopted-")


@pytest.mark.parametrize("change, message", [
    ({"schema_version": 99}, "schema_version 99"),
    ({"frontend": {**FrontEndParams().to_dict(), "n_mels": 128}}, "n_mels=128"),
    ({"threshold": {"high": "x", "low": 1}}, "threshold.high"),
    ({"detectors": []}, "no detector"),
    ({"detectors": [{"file": "../x.npz", "kind": "gmm", "feature_source": "logmel-frames"}]}, "file name inside"),
    ({"detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": "cnn"}]}, "extractor.sha256"),
    ({"detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames",
                     "window_centre": "high"}]}, r"detectors\[0\] is malformed \(window_centre 'high' is not a finite"),
    ({"detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames",
                     "window_centre": float("nan")}]}, "window_centre nan is not a finite number"),
    ({"detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames",
                     "score_std": 0}]}, "non-positive score_std"),
    ({"detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames",
                     "two_sided_centre": 1.0}]}, "two_sided_centre is from an earlier humwatch.*recalibrate"),
    ({"detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames", "name": ""}]},
     r"detectors\[0\] is malformed \(name '' is not a plain"),
    ({"detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames", "name": 3}]},
     "name 3 is not a plain"),
    ({"detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames", "name": " spectrum"}]},
     "name ' spectrum' is not a plain"),
    ({"detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames"},
                    {"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames", "score_std": 2.0}]},
     r"detectors\[1\] is named 'frames' like an earlier detector"),
    ({"detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames", "gate": -1.0}]},
     "negative gate"),
    ({"detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames", "gate": 4.0}]},
     "every detector is gated"),
    ({"fusion": "median"}, "fusion"),
    ({"patch_score_cap": 0}, "patch_score_cap"),
    ({"patch_score_cap": "10"}, "patch_score_cap"),
    ({"timing": "timing.npz"}, "timing must be an object"),
    ({"timing": {"file": "../timing.npz", "gate": 4.0}}, "timing.file must be a file name inside"),
    ({"timing": {"file": "timing.npz", "gate": -1}}, "timing.gate must be a number of at least 0, not -1"),
    ({"timing": {"file": "timing.npz", "gate": True}}, "timing.gate must be a number"),
    ({"timing": {"file": "timing.npz", "gate": 4.0}, "window_patches": 9}, "reads windows of 18 patches, not 9"),
    ({"timing": {"file": "timing.npz", "gate": 4.0},
      "detectors": [{"file": "frames.npz", "kind": "gmm", "feature_source": "logmel-frames", "name": "timing"}]},
     "a detector is named 'timing'"),
])
def test_damaged_manifests_are_refused_naming_the_field(tmp_path, frame_detector, change, message):
    version = write(tmp_path / "bundle", frame_detector)
    path = version / "bundle.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ModelError, match=message) as info:
        Bundle.load(tmp_path / "bundle")
    assert "bundle.json" in str(info.value)


def test_missing_or_unreadable_bundles(tmp_path, frame_detector):
    with pytest.raises(ModelError, match="no bundle here"):
        Bundle.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="missing"):
        Bundle.load(tmp_path / "empty")
    version = write(tmp_path / "bundle", frame_detector)
    (version / "frames.npz").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="frames.npz"):
        PatchScorer(Bundle.load(tmp_path / "bundle"))


def test_a_detector_fitted_on_other_frame_features_is_refused_at_start(tmp_path, frame_detector):
    version = write(tmp_path / "bundle", frame_detector)
    path = version / "bundle.json"
    manifest_now = json.loads(path.read_text())
    manifest_now["detectors"][0]["feature_source"] = "logmel-dynamics"
    path.write_text(json.dumps(manifest_now))
    with pytest.raises(ModelError, match=r"frames\.npz: fitted on 64-d logmel-frames features, but the bundle "
                                         r"scores it on 128-d logmel-dynamics"):
        PatchScorer(Bundle.load(tmp_path / "bundle"))


def test_a_damaged_timing_file_stops_the_agent_and_score_with_one_line(tmp_path, frame_detector, normal_clips,
                                                                       capsys):
    """A bundle whose timing.npz was truncated (a full disk, a copy cut short): one error naming it, exit 2."""
    version = write(tmp_path / "bundle", frame_detector, timing={"file": "timing.npz", "gate": 4.0})
    (version / "timing.npz").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ModelError, match="timing.npz: not a readable timing .npz"):
        Pipeline(Bundle.load(tmp_path / "bundle"))
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes(normal_clips[0]))
    assert humwatch(["score", "--bundle", str(tmp_path / "bundle"), str(clip)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "timing.npz" in err[0], err
