"""The default pipeline on real recordings: the agent scores a stream as calibration defined the windows, and
`calibrate --add` teaches a bundle a new operating condition atomically, with rollback."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from humwatch.agent.model.bundle import Bundle
from humwatch.agent.model.pipeline import Pipeline, detector_gates, fuse_gated
from humwatch.agent.signal.audio import read_wav
from humwatch.agent.signal.frontend import clip_patches
from humwatch.calibration.calibrate import DEFAULT_PRESET, calibrate, extend_bundle
from humwatch.calibration.collect import wav_blocks
from humwatch.calibration.window_knn import rolling_means
from humwatch.cli import main as humwatch
from tests.plugins.recordings import window_scores


@pytest.fixture(scope="module")
def toycar(shared_dir) -> Path:
    return shared_dir / "audio" / "dcase2023-toycar"


@pytest.fixture(scope="module")
def source_bundle(tmp_path_factory, toycar, squeezenet_int8) -> Path:
    """A bundle from 30 source-domain training clips (6 min): one operating condition."""
    out = tmp_path_factory.mktemp("toycar") / "bundle"
    clips = sorted((toycar / "train").glob("section_00_source_train_normal_*.wav"))[::6][:30]
    calibrate(wav_blocks(clips), squeezenet_int8, out, machine="toycar", report=False)
    return out


def own_copy(bundle: Path, tmp_path: Path) -> Path:
    """A copy of the bundle's folder (link and versions) that a test may change."""
    shutil.copytree(bundle.parent, tmp_path / "state", symlinks=True)
    return tmp_path / "state" / bundle.name


def test_the_default_is_the_window_pipeline_and_the_stream_scores_as_a_recording(source_bundle, toycar):
    bundle = Bundle.load(source_bundle)
    assert DEFAULT_PRESET == "window-knn"
    assert [e.name for e in bundle.spec.detectors] == ["modulation-knn", "cnn-knn", "tone-knn"]
    assert [e.gate is not None for e in bundle.spec.detectors] == [False, False, True]  # the tone part is gated
    assert all(e.window_level for e in bundle.spec.detectors) and bundle.spec.timing is None
    pipeline = Pipeline(bundle)
    clip = read_wav(sorted((toycar / "test").glob("section_00_source_test_normal_*.wav"))[0])
    streamed = []
    pipeline.reset()
    for start in range(0, len(clip), 1024):  # as the microphone delivers it
        streamed += [r.window_score for r in pipeline.push(clip[start:start + 1024]) if r.window_score is not None]
    rows = pipeline.scorer.score(clip_patches(clip, bundle.spec.frontend))
    batch = fuse_gated(pipeline.scorer.read(rolling_means(rows)), detector_gates(bundle.spec.detectors),
                       bundle.spec.fusion)
    assert len(streamed) == len(batch) == 5  # 12 s: 22 patches, 5 windows of 18
    # equal up to float32 rounding: the projection is computed for one patch at a time in the stream
    np.testing.assert_allclose(streamed, batch, rtol=0, atol=1e-5)


def test_adding_a_new_condition_lowers_its_scores_and_rollback_restores_the_bundle(tmp_path, source_bundle, toycar,
                                                                                   capsys):
    link = own_copy(source_bundle, tmp_path)
    before = Bundle.load(link)
    target_train = sorted((toycar / "train").glob("section_00_target_train_normal_*.wav"))
    target_test = sorted((toycar / "test").glob("section_00_target_test_normal_*.wav"))[:10]
    old = [window_scores(Pipeline(before), read_wav(p)).max() for p in target_test]

    assert humwatch(["calibrate", "--add", *map(str, target_train), "--out", str(link)]) == 0
    after = Bundle.load(link)
    assert after.id != before.id and after.manifest["previous"] == before.path.name
    banks = {e.name: np.load(after.path / e.file)["bank"] for e in after.spec.detectors}
    added = 10 * 5  # ten 12 s clips, five windows each
    assert all(len(bank) == len(np.load(before.path / e.file)["bank"]) + added
               for e, bank in zip(after.spec.detectors, banks.values()))
    assert after.manifest["calibration"]["pipeline"]["added"] == [{"seconds": 120.0, "sources": 10}]
    new = [window_scores(Pipeline(after), read_wav(p)).max() for p in target_test]
    assert np.median(new) < np.median(old) - 0.3  # in normal standard deviations
    assert "added normal sound: 2.0 min from 10 source(s)" in capsys.readouterr().out

    assert humwatch(["calibrate", "--rollback", "--out", str(link)]) == 0
    assert Bundle.load(link).id == before.id


def test_a_failed_add_leaves_the_bundle_in_use(tmp_path, source_bundle, toycar, monkeypatch):
    link = own_copy(source_bundle, tmp_path)
    before = Bundle.load(link).id
    import humwatch.calibration.window_knn as window_knn

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(window_knn, "write_npz_atomic", disk_full)
    with pytest.raises(Exception, match="cannot write the bundle .*the bundle in use is unchanged"):
        extend_bundle(wav_blocks(sorted((toycar / "train").glob("*target*.wav"))[:2]), link)
    assert Bundle.load(link).id == before
    assert not list(link.with_name("bundle.versions").glob(".*.partial"))


def test_add_refuses_a_bundle_of_another_pipeline_in_one_line(tmp_path, normal_paths, squeezenet_int8, capsys):
    out = tmp_path / "bundle"
    calibrate(wav_blocks(normal_paths[:28]), squeezenet_int8, out, preset="paper", report=False)
    code = humwatch(["calibrate", "--add", str(normal_paths[30]), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "calibrate --add extends a bundle of the window-knn preset" in err[0] and "cnn-gmm80" in err[0]


def test_a_runtime_that_scores_the_reference_sound_otherwise_is_refused(tmp_path, source_bundle, toycar, capsys):
    """calibrate records the bundle's window scores of a fixed reference sound; score, run and calibrate --add
    compute them again at start and refuse a runtime that disagrees (here: a recorded answer one SD off)."""
    version = tmp_path / "version"
    shutil.copytree(Bundle.load(source_bundle).path, version)
    recorded = json.loads((version / "bundle.json").read_text())["known_answer"]
    assert len(recorded["window_scores"]) == 5 and recorded["tolerance"] == 0.1
    clip = sorted((toycar / "test").glob("*.wav"))[0]
    assert humwatch(["score", "--bundle", str(version), str(clip)]) in (0, 1)
    capsys.readouterr()

    manifest = json.loads((version / "bundle.json").read_text())
    manifest["known_answer"]["window_scores"][2] += 1.0
    (version / "bundle.json").write_text(json.dumps(manifest))
    assert humwatch(["score", "--bundle", str(version), str(clip)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scores the reference sound 1 normal standard deviations away" in err[0], err
