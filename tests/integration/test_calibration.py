"""Calibration on real machine sound: the bundle the agent loads, thresholds that separate faults from normal sound,
atomic bundle replacement and rollback, and clear refusals of unusable audio."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from humwatch.agent.contract import SAMPLE_RATE
from humwatch.agent.errors import AudioError, ConfigError, ModelError
from humwatch.agent.model.bundle import Bundle
from humwatch.agent.model.pipeline import Pipeline
from humwatch.agent.signal.audio import read_wav
from humwatch.calibration.calibrate import calibrate
from humwatch.calibration.collect import record, wav_blocks, wav_paths
from humwatch.calibration.faults import Fault, inject
from humwatch.calibration.report import PNG_NAME, TEXT_NAME
from humwatch.cli import main as humwatch
from tests.plugins.recordings import CALIBRATION_CLIPS, window_scores, windows

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, normal_paths, squeezenet_int8):
    """A bundle calibrated from the first 40 real normal clips."""
    out = tmp_path_factory.mktemp("calibrated") / "bundle"
    result = calibrate(wav_blocks(normal_paths[:CALIBRATION_CLIPS]), squeezenet_int8, out, machine="fan1")
    return result, out


def test_the_agent_loads_the_bundle_and_scores_as_calibration_did(calibrated, normal_paths):
    result, out = calibrated
    bundle = Bundle.load(out)
    assert bundle.machine == "fan1"
    assert bundle.spec.extractor_sha256 == (result.extractor_sha256 if result.selection.uses_cnn else None)
    assert (bundle.spec.threshold_high, bundle.spec.threshold_low) == (result.threshold.high, result.threshold.low)
    assert bundle.spec.threshold_low < bundle.spec.threshold_high
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["calibration"]["fit_patches"] == 40 * 18  # every patch is in the bank
    # each part is standardised on the leave-out references, so their fused scores are centred on 0
    assert len(result.heldout_window_scores) == 40 and abs(result.heldout_window_scores.mean()) < 1e-9


def test_normal_clips_never_heard_stay_mostly_below_the_threshold(calibrated, normal_paths):
    result, out = calibrated
    pipeline = Pipeline(Bundle.load(out))
    scores = np.array([window_scores(pipeline, read_wav(p))[-1] for p in normal_paths[CALIBRATION_CLIPS:]])
    assert len(scores) == 35
    assert np.mean(scores > result.threshold.high) <= 0.1


@pytest.fixture(scope="module")
def calibrated_paper(tmp_path_factory, normal_paths, squeezenet_int8):
    """The same clips calibrated with the paper's configuration alone (GMM-80 on the CNN features)."""
    out = tmp_path_factory.mktemp("calibrated_paper") / "bundle"
    return calibrate(wav_blocks(normal_paths[:CALIBRATION_CLIPS]), squeezenet_int8, out, preset="paper"), out


def test_a_preset_with_held_out_blocks_sets_its_threshold_on_the_agents_own_scores(calibrated_paper, normal_paths):
    """The 4th, 8th, ... clip is held out; the agent's streaming pipeline gives it the score calibration saw, up to
    float32 rounding (the board scores a patch at a time, calibration a clip at a time)."""
    result, out = calibrated_paper
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["calibration"]["fit_patches"] == 30 * 18 and manifest["calibration"]["heldout_patches"] == 10 * 18
    pipeline = Pipeline(Bundle.load(out))
    held = [window_scores(pipeline, read_wav(normal_paths[i]))[-1] for i in range(3, CALIBRATION_CLIPS, 4)]
    np.testing.assert_allclose(held, result.heldout_window_scores, rtol=1e-6, atol=1e-6)


def test_the_real_anomalous_clip_scores_above_the_paper_presets_threshold(calibrated_paper, dcase):
    result, out = calibrated_paper
    assert [d.kind for d in Bundle.load(out).spec.detectors] == ["gmm"]
    scores = window_scores(Pipeline(Bundle.load(out)), read_wav(dcase / "test" / "anomaly_id_00_00000000.wav"))
    assert scores.max() > result.threshold.high


def test_the_real_anomalous_clip_alarms_and_outranks_every_unheard_normal_clip_by_default(calibrated, dcase,
                                                                                          normal_paths):
    result, out = calibrated
    pipeline = Pipeline(Bundle.load(out))
    anomaly = window_scores(pipeline, read_wav(dcase / "test" / "anomaly_id_00_00000000.wav")).max()
    normal = [window_scores(pipeline, read_wav(p))[-1] for p in normal_paths[CALIBRATION_CLIPS:]]
    assert anomaly > result.threshold.high and anomaly > max(normal) + 1.0


@pytest.fixture(scope="module")
def unheard(normal_paths) -> list[np.ndarray]:
    return [read_wav(p) for p in normal_paths[CALIBRATION_CLIPS:CALIBRATION_CLIPS + 8]]


def test_a_whine_in_unheard_normal_clips_scores_above_the_defaults_threshold(calibrated, unheard):
    """A steady whine 6 dB under the machine: the default's gated tone part hears it at 3 and 4 kHz in every clip.
    At 2 kHz the slider's own normal clips carry lines of up to 10 dB, its tone reading stays about at its gate,
    and the whine is caught where it moves the modulation and CNN parts enough: 4 of 8 clips
    (docs/performance.md). Clean clips stay under, their tone readings under the gate."""
    result, out = calibrated
    pipeline = Pipeline(Bundle.load(out))
    gate = next(e.gate for e in pipeline.bundle.spec.detectors if e.name == "tone-knn")
    t = np.arange(len(unheard[0])) / SAMPLE_RATE
    caught = {hz: 0 for hz in (2000, 3000, 4000)}
    for clip in unheard:
        clean = windows(pipeline, clip)[-1]
        assert clean.window_score < result.threshold.high and clean.readings["tone-knn"] < gate
        level = np.sqrt(np.mean(clip.astype(np.float64) ** 2)) * 10 ** (-6 / 20)  # 6 dB under the machine
        for hz in caught:
            whine = (clip + level * np.sqrt(2) * np.sin(2 * np.pi * hz * t)).astype(np.float32)
            caught[hz] += windows(pipeline, whine)[-1].window_score > result.threshold.high
    assert caught[3000] == caught[4000] == len(unheard) and caught[2000] >= 3, caught


def test_library_faults_at_full_strength_are_often_caught_and_clean_clips_never(calibrated, unheard):
    """calibration.faults at strength 1 (additive faults 12 dB under the machine) against the default. Impacts and
    amplitude modulation change how the bands pulse, which it measures; a steady tone stands out of the fine
    spectrum (the gated tone part); band noise and speed changes that keep the spectrum's shape are missed at one
    false alarm a week (docs/quality.md)."""
    result, out = calibrated
    pipeline = Pipeline(Bundle.load(out))
    clean = np.array([window_scores(pipeline, c)[-1] for c in unheard])
    assert np.all(clean < result.threshold.high)
    caught = {kind: np.mean([window_scores(pipeline, inject(c, Fault(kind, 1.0, seed=i)))[-1] > result.threshold.high
                             for i, c in enumerate(unheard)]) for kind in ("impacts", "am", "tone")}
    assert caught["impacts"] >= 0.5 and caught["am"] >= 0.5 and caught["tone"] >= 0.5, caught



def test_the_report_shows_scores_threshold_and_summary(calibrated):
    result, out = calibrated
    png = (out / PNG_NAME).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    text = (out / TEXT_NAME).read_text()
    assert "audio used: 6.7 min from 40 source(s)" in text
    assert f"alarm threshold: {result.threshold.high:.4g}" in text
    assert "expected at this threshold" in text and "pipeline: " in text


def test_rollback_restores_the_bundle_the_last_calibration_replaced(tmp_path, calibrated, normal_paths,
                                                                    squeezenet_int8, capsys):
    first_dir, link = calibrated[1].resolve(), tmp_path / "bundle"
    code = humwatch(["calibrate", "--model", str(squeezenet_int8), "--out", str(link), "--machine", "fan1",
                     *map(str, normal_paths[:28])])
    assert code == 0
    first = Bundle.load(link)
    code = humwatch(["calibrate", "--model", str(squeezenet_int8), "--out", str(link), "--detector", "ocsvm",
                     "--false-alarms-per-day", "1", "--report-dir", str(tmp_path / "report"),
                     *map(str, normal_paths[28:56])])
    assert code == 0
    second = Bundle.load(link)
    assert second.spec.detectors[0].kind == "ocsvm" and second.id != first.id
    assert (tmp_path / "report" / PNG_NAME).exists()
    assert "alarm threshold" in capsys.readouterr().out
    assert humwatch(["calibrate", "--rollback", "--out", str(link)]) == 0
    assert Bundle.load(link).id == first.id and Bundle.load(link).spec.detectors[0].kind == "knn"
    assert first_dir.exists()  # other bundles are not touched


def test_an_exception_while_writing_leaves_the_previous_bundle_in_use(tmp_path, calibrated, normal_paths,
                                                                      squeezenet_int8, monkeypatch):
    link = tmp_path / "bundle"
    link.symlink_to(calibrated[1].resolve())  # an existing bundle in use
    before = Bundle.load(link)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("humwatch.calibration.calibrate.shutil.copyfile", disk_full)
    with pytest.raises(ModelError, match=r"bundle: cannot write the bundle \(No space left on device\); the bundle "
                                         "in use is unchanged"):
        calibrate(wav_blocks(normal_paths[:24]), squeezenet_int8, link)
    assert Bundle.load(link).id == before.id and link.resolve() == before.path
    versions = tmp_path / "bundle.versions"
    assert not [p for p in versions.iterdir() if p.name.startswith(".")]  # no half-written version left


def test_a_report_folder_that_cannot_be_written_leaves_the_bundle_in_use(tmp_path, calibrated, normal_paths,
                                                                         squeezenet_int8):
    link = tmp_path / "bundle"
    link.symlink_to(calibrated[1].resolve())
    before = Bundle.load(link)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="a-file/report: cannot write the report there"):
        calibrate(wav_blocks(normal_paths[:24]), squeezenet_int8, link, report_dir=tmp_path / "a-file" / "report")
    assert link.resolve() == before.path and not (tmp_path / "bundle.versions").exists()


@pytest.mark.parametrize("option", ["--out", "--report-dir"])
def test_an_unwritable_destination_is_refused_before_any_audio_is_read(tmp_path, squeezenet_int8, capsys, option):
    (tmp_path / "a-file").write_text("")
    where = {"--out": tmp_path / "bundle", "--report-dir": tmp_path / "report", option: tmp_path / "a-file" / "x"}
    code = humwatch(["calibrate", "--model", str(squeezenet_int8), "--out", str(where["--out"]),
                     "--report-dir", str(where["--report-dir"]), str(tmp_path / "not-recorded-yet.wav")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{option} {tmp_path / 'a-file' / 'x'}: {tmp_path / 'a-file'} is a file, not a folder" in err


KILL_MID_WRITE = """
import os, signal, shutil, sys
import calibration.calibrate as c
from calibration.collect import wav_blocks
real_copy = shutil.copyfile
def copy_then_die(src, dst, *a, **k):
    real_copy(src, dst, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)  # killed with the new version half written
c.shutil.copyfile = copy_then_die
c.calibrate(wav_blocks(sys.argv[3:]), sys.argv[1], sys.argv[2])
"""


def test_a_calibration_killed_mid_write_leaves_the_previous_bundle_in_use(tmp_path, calibrated, normal_paths,
                                                                          squeezenet_int8):
    link = tmp_path / "bundle"
    link.symlink_to(calibrated[1].resolve())
    before = Bundle.load(link)
    child = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(squeezenet_int8), str(link),
                            *map(str, normal_paths[:24])], cwd=REPO, capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    staged = [p for p in (tmp_path / "bundle.versions").iterdir()]
    assert staged and all(p.name.endswith(".partial") for p in staged)  # it did die while writing
    after = Bundle.load(link)
    assert after.id == before.id and after.spec.threshold_high == before.spec.threshold_high
    assert link.resolve() == before.path


def write_wav(path: Path, samples: np.ndarray) -> Path:
    from scipy.io import wavfile

    wavfile.write(path, SAMPLE_RATE, (np.clip(samples, -1, 1) * 32767).astype(np.int16))
    return path


def calibrate_cli(tmp_path, model, sources, capsys) -> tuple[int, str]:
    code = humwatch(["calibrate", "--model", str(model), "--out", str(tmp_path / "bundle"), *map(str, sources)])
    return code, capsys.readouterr().err


def test_silent_input_is_refused_naming_the_file(tmp_path, normal_paths, squeezenet_int8, capsys):
    silent = write_wav(tmp_path / "silent.wav", np.zeros(10 * SAMPLE_RATE))
    code, err = calibrate_cli(tmp_path, squeezenet_int8, [*normal_paths[:30], silent], capsys)
    assert code == 2 and "silent.wav: silent" in err and "dBFS" in err
    assert not (tmp_path / "bundle").exists()


def test_clipped_input_is_refused_naming_the_file(tmp_path, normal_paths, squeezenet_int8, capsys):
    loud = write_wav(tmp_path / "loud.wav", read_wav(normal_paths[0]) * 40)
    code, err = calibrate_cli(tmp_path, squeezenet_int8, [*normal_paths[:30], loud], capsys)
    assert code == 2 and "loud.wav: clipped" in err and "input gain" in err


def test_recordings_named_as_anomalies_are_refused_before_anything_is_read(tmp_path, normal_paths, dcase,
                                                                           squeezenet_int8, capsys):
    fault = dcase / "test" / "anomaly_id_00_00000000.wav"
    code, err = calibrate_cli(tmp_path, squeezenet_int8, [*normal_paths[:30], fault], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{fault}: named as an anomaly; calibration learns normal sound only" in err
    assert not (tmp_path / "bundle").exists()
    (tmp_path / "abnormal").mkdir()
    shutil.copyfile(normal_paths[0], tmp_path / "abnormal" / "clip.wav")  # a folder of faults, whatever the names
    code, err = calibrate_cli(tmp_path, squeezenet_int8, [*normal_paths[:30], tmp_path / "abnormal"], capsys)
    assert code == 2 and "abnormal/clip.wav: named as an anomaly" in err
    # folders above the one named are the user's own filing: an "anomaly" project folder is no fault
    (tmp_path / "anomaly" / "pump1").mkdir(parents=True)
    shutil.copyfile(normal_paths[0], tmp_path / "anomaly" / "pump1" / "clip.wav")
    assert wav_paths([tmp_path / "anomaly" / "pump1"]) == [tmp_path / "anomaly" / "pump1" / "clip.wav"]
    assert wav_paths([tmp_path / "anomaly" / "pump1" / "clip.wav"]) == [tmp_path / "anomaly" / "pump1" / "clip.wav"]


def test_too_little_audio_is_refused_saying_how_much_is_needed(tmp_path, normal_paths, squeezenet_int8, capsys):
    code, err = calibrate_cli(tmp_path, squeezenet_int8, normal_paths[:5], capsys)
    assert code == 2 and "too little calibration audio: 5 reference windows" in err and "at least 1 min" in err
    assert not (tmp_path / "bundle").exists()


def test_a_threshold_on_few_held_out_windows_comes_with_a_warning(calibrated_paper):
    result, _ = calibrated_paper  # 40 clips of 10 s: 10 held-out windows
    assert result.threshold.heldout_windows == 10
    assert any(w.startswith("the threshold rests on 10 held-out windows") for w in result.warnings)


def test_recording_captures_the_device_with_progress_and_level_meter(alsa_device):
    import io

    device = alsa_device(speed=4.0)  # a real ALSA capture device, fed 4 times faster than real time
    t = np.arange(8 * SAMPLE_RATE) / SAMPLE_RATE
    device.play(0.1 * np.sqrt(2) * np.sin(2 * np.pi * 1000 * t))  # a 1 kHz tone at -20 dBFS
    meter = io.StringIO()
    samples = record(0.1, device.name, out=meter)
    assert samples.dtype == np.float32 and len(samples) == 6 * SAMPLE_RATE
    rms = np.sqrt(np.mean(samples[SAMPLE_RATE:].astype(np.float64) ** 2))
    assert 20 * np.log10(rms) == pytest.approx(-20.0, abs=0.5)
    spectrum = np.abs(np.fft.rfft(samples[SAMPLE_RATE:]))
    assert np.argmax(spectrum) / 5.0 == pytest.approx(1000.0, abs=1.0)  # 5 s analysed: 0.2 Hz per bin
    lines = meter.getvalue().split("\r")[1:]  # each redraw starts with a carriage return
    assert lines[-1] == "recording 00:06 / 00:06  level -20 dBFS ▮▮▮▮▮▯▯▯\n"
    shown = [re.fullmatch(r"recording (00:0\d) / 00:06  level +-?\d+ dBFS [▮▯]{8}\n?", line) for line in lines]
    assert all(shown), lines
    # each redraw is one meter line whose time never goes back (how many there are depends on how the device
    # hands over its audio, which the test does not control)
    assert [m.group(1) for m in shown] == sorted(m.group(1) for m in shown)


def test_an_unknown_input_device_is_named_in_the_error(alsa_device):
    alsa_device()
    with pytest.raises(AudioError, match="audio.device: no input device named like 'no-such-mic'"):
        record(0.1, "no-such-mic")


def test_a_device_that_delivers_nothing_ends_the_recording_with_an_error(alsa_device):
    import io

    device = alsa_device()  # open, but nothing is played into it
    started = time.monotonic()
    with pytest.raises(AudioError, match=r"no audio for 3 s after 00:00; is the microphone connected"):
        record(0.5, device.name, out=io.StringIO())
    assert time.monotonic() - started < 10


def test_calibrate_records_the_configured_device_and_writes_the_configured_bundle(tmp_path, alsa_device, normal_paths,
                                                                                   squeezenet_int8, capsys):
    device = alsa_device(speed=8.0)
    machine_sound = np.concatenate([read_wav(p) for p in normal_paths[:24]])  # 4 min of the real machine
    device.play(machine_sound)
    config = tmp_path / "fan1.toml"
    config.write_text(f'[machine]\nname = "fan1"\n[model]\nbundle = "{tmp_path / "state" / "bundle"}"\n'
                      f'[audio]\ndevice = "{device.name}"\n')
    code = humwatch(["calibrate", "--config", str(config), "--model", str(squeezenet_int8), "--record", "4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # the last meter line shows the level of the machine (about -40 dBFS; 0.1 s chunks vary by a few dB)
    assert re.search(r"\rrecording 04:00 / 04:00  level -(3[5-9]|4[0-5]) dBFS ▮▮▮?▯+\n", captured.err)
    bundle = Bundle.load(tmp_path / "state" / "bundle")
    assert bundle.machine == "fan1"
    stats = bundle.manifest["calibration"]
    assert stats["seconds"] == 240.0 and stats["sources"] == 1
    # 12 blocks of 20 s of one recording (38 patches, 21 bank windows each), left out in 4 stretches of 3 blocks,
    # each stretch giving its non-overlapping bank windows as references: 0, 18, 36 and 54 of its 63
    assert stats["fit_patches"] == 12 * 38 and bundle.manifest["threshold"]["heldout_windows"] == 4 * 4
    assert stats["pipeline"]["leave_out_groups"] == 4
