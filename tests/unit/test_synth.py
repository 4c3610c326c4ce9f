"""The synthetic machine-sound generator, the fault injector and `humwatch synth`."""
import numpy as np
import pytest

from humwatch.agent.contract import SAMPLE_RATE
from humwatch.agent.signal.audio import read_wav
from humwatch.calibration import faults
from humwatch.cli import main
from humwatch.evaluation import synth
from humwatch.evaluation.synth_cli import parse_ids, write_dataset


def test_clips_are_deterministic_from_their_seeds():
    a, fault_a = synth.synth_clip("pump", 2, 5, abnormal=True, seconds=2, seed=7)
    b, fault_b = synth.synth_clip("pump", 2, 5, abnormal=True, seconds=2, seed=7)
    c, _ = synth.synth_clip("pump", 2, 6, abnormal=True, seconds=2, seed=7)
    d, _ = synth.synth_clip("pump", 2, 5, abnormal=True, seconds=2, seed=8)
    assert np.array_equal(a, b) and fault_a == fault_b
    assert not np.allclose(a, c) and not np.allclose(a, d)
    assert a.dtype == np.float32 and a.shape == (2 * SAMPLE_RATE,) and np.abs(a).max() <= 1.0


@pytest.mark.parametrize("machine_type", synth.MACHINE_TYPES)
def test_snr_is_measured_on_the_machine_signal(machine_type):
    # Same seed, same machine part: the difference between a -6 dB and a +60 dB mix is (almost all) noise.
    noisy, _ = synth.synth_clip(machine_type, 0, 3, seconds=4, snr_db=-6)
    clean, _ = synth.synth_clip(machine_type, 0, 3, seconds=4, snr_db=60)
    noise = noisy.astype(np.float64) - clean
    snr = 20 * np.log10(synth.rms(clean) / synth.rms(noise))
    assert snr == pytest.approx(-6.0, abs=0.1)
    # nominal machine level within the per-clip level variation of +-1.5 dB
    assert 20 * np.log10(synth.rms(clean) / synth.MACHINE_RMS) == pytest.approx(0.0, abs=1.6)


def test_each_id_has_its_own_character():
    pumps = [synth.Machine.create("pump", i) for i in (0, 2, 4)]
    assert len({round(p.rot_hz, 3) for p in pumps}) == 3
    assert synth.Machine.create("fan", 2) == synth.Machine.create("fan", 2)
    quiet = [synth.synth_clip("fan", i, 0, seconds=4, snr_db=60)[0] for i in (0, 2)]
    spectra = [np.abs(np.fft.rfft(q))[: 2000 * 4] for q in quiet]  # below 2 kHz
    assert np.corrcoef(np.log(spectra[0] + 1e-9), np.log(spectra[1] + 1e-9))[0, 1] < 0.9


def test_normal_clips_vary_within_bounds():
    levels = []
    for i in range(12):
        rng = synth.clip_rng(0, "valve", 0, i, False)
        cond = synth.Conditions.draw(rng)
        assert 0.85 <= cond.load <= 1.15 and 0.98 <= cond.speed <= 1.02 and -1.5 <= cond.level_db <= 1.5
        levels.append(cond.level_db)
    assert np.std(levels) > 0.3


@pytest.mark.parametrize("kind", synth.ANOMALY_KINDS)
def test_every_anomaly_kind_changes_the_machine_sound(kind):
    machine_type = next(t for t, kinds in synth.TYPE_ANOMALIES.items() if kind in kinds)
    normal, _ = synth.synth_clip(machine_type, 0, 1, abnormal=False, seconds=3, snr_db=60)
    weak, _ = synth.synth_clip(machine_type, 0, 1, True, 3, 60, anomaly=synth.Anomaly(kind, 0.2))
    strong, fault = synth.synth_clip(machine_type, 0, 1, True, 3, 60, anomaly=synth.Anomaly(kind, 1.0))
    assert fault == synth.Anomaly(kind, 1.0)
    assert synth.rms(strong - weak) > 0.002
    if kind in ("bearing", "leak", "rubbing", "loose", "cavitation"):
        # an additive fault at severity 1 adds -8 dB relative to the machine level, at 0.2 about -22 dB
        # (a vanishing clogging draws the same healthy machine and adds nothing)
        base, _ = synth.synth_clip(machine_type, 0, 1, True, 3, 60, anomaly=synth.Anomaly("clogging", 1e-9))
        added = 20 * np.log10(synth.rms(strong - base) / synth.MACHINE_RMS)
        assert added == pytest.approx(synth.FAULT_DB_LOW + synth.FAULT_DB_SPAN, abs=2.5)
    assert synth.rms(strong - normal) > 0.002


def test_abnormal_clips_draw_type_specific_faults():
    kinds = {synth.synth_clip("slider", 0, i, True, seconds=1)[1].kind for i in range(30)}
    assert kinds <= set(synth.TYPE_ANOMALIES["slider"]) and len(kinds) >= 3


def test_bad_anomalies_are_refused():
    with pytest.raises(ValueError, match="kind"):
        synth.Anomaly("melting", 0.5)
    with pytest.raises(ValueError, match="severity"):
        synth.Anomaly("leak", 0.0)
    with pytest.raises(ValueError, match="machine type"):
        synth.Machine.create("robot", 0)


def test_eight_channels_keep_channel_zero_as_the_reference():
    mono, _ = synth.synth_clip("fan", 0, 0, seconds=2)
    multi, _ = synth.synth_clip("fan", 0, 0, seconds=2, channels=8)
    assert multi.shape == (2 * SAMPLE_RATE, 8)
    assert np.array_equal(multi[:, 0], mono)
    assert all(0.2 < np.corrcoef(multi[:, 0], multi[:, c])[0, 1] < 0.999 for c in range(1, 8))


# ---------------------------------------------------------------- faults


@pytest.fixture(scope="module")
def normal_clip():
    return synth.synth_clip("pump", 0, 0, seconds=4)[0]


@pytest.mark.parametrize("kind", ["tone", "band_noise", "impacts"])
def test_additive_faults_have_the_stated_level(normal_clip, kind):
    for strength in faults.STRENGTHS:
        y = faults.inject(normal_clip, faults.Fault(kind, strength, seed=3))
        relative = 20 * np.log10(synth.rms(y.astype(np.float64) - normal_clip) / synth.rms(normal_clip))
        assert relative == pytest.approx(faults.ADDITIVE_DB_LOW + strength * faults.ADDITIVE_DB_SPAN, abs=0.3)


def test_amplitude_modulation_depth(normal_clip):
    y = faults.inject(normal_clip, faults.Fault("am", 1.0, seed=1))
    ratio = synth.rms(y.astype(np.float64) - normal_clip) / synth.rms(normal_clip)
    assert ratio == pytest.approx(faults.AM_MAX_DEPTH / np.sqrt(2), rel=0.1)


def test_speed_fault_lowers_and_wanders_the_pitch():
    t = np.arange(10 * SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    crossings = lambda x: np.count_nonzero(np.diff(np.signbit(x)))  # noqa: E731
    for strength in (0.5, 1.0):
        y = faults.inject(tone, faults.Fault("speed", strength, seed=2))
        change = crossings(y) / crossings(tone) - 1
        mean_slowdown = faults.SPEED_MAX_DEV * strength * 0.5
        assert -mean_slowdown - faults.SPEED_MAX_DEV * strength <= change < -mean_slowdown / 4


def test_faults_are_deterministic_and_validated(normal_clip):
    grid = faults.fault_grid(seed=4)
    assert len(grid) == len(faults.FAULT_KINDS) * len(faults.STRENGTHS)
    assert len({f.seed for f in grid}) == len(grid)
    for fault in grid:
        a, b = faults.inject(normal_clip, fault), faults.inject(normal_clip, fault)
        assert np.array_equal(a, b) and not np.array_equal(a, normal_clip)
        assert a.dtype == np.float32 and a.shape == normal_clip.shape
    with pytest.raises(ValueError, match="kind"):
        faults.Fault("smoke", 0.5)
    with pytest.raises(ValueError, match="strength"):
        faults.Fault("tone", 1.5)
    with pytest.raises(ValueError, match="mono"):
        faults.inject(np.zeros((10, 2), np.float32), grid[0])


# ---------------------------------------------------------------- humwatch synth


def test_parse_ids():
    assert parse_ids("2") == [0, 2]
    assert parse_ids("0,4,6") == [0, 4, 6]


def test_synth_writes_the_mimii_layout_reproducibly(tmp_path):
    out = tmp_path / "data"
    assert main(["synth", str(out), "--types", "valve,slider", "--ids", "1", "--normal", "2", "--abnormal", "1",
                 "--seconds", "2.5", "--seed", "3"]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav"))
    assert files == [f"-6_dB_{t}/{t}/id_00/{label}/{i:08d}.wav" for t in ("slider", "valve")
                     for label, n in (("abnormal", 1), ("normal", 2)) for i in range(n)]
    audio = read_wav(out / "-6_dB_valve/valve/id_00/normal/00000001.wav")
    expected, _ = synth.synth_clip("valve", 0, 1, seconds=2.5, seed=3)
    assert np.abs(audio - expected).max() < 1.0 / 32767 + 1e-6
    manifest = (out / "synth_manifest.csv").read_text().splitlines()
    assert manifest[0] == "file,type,id,label,fault,severity" and len(manifest) == 7
    abnormal_row = next(r for r in manifest if "valve/id_00/abnormal" in r)
    assert abnormal_row.split(",")[4] in synth.TYPE_ANOMALIES["valve"]
    first = (out / files[0]).read_bytes()
    (out / files[0]).unlink()
    write_dataset(out, ["valve", "slider"], [0], 2, 1, seconds=2.5, seed=3)
    assert (out / files[0]).read_bytes() == first
    assert not list(out.rglob(".*"))  # no temporary files left behind


def test_synth_eight_channels_and_bad_arguments(tmp_path, capsys):
    assert main(["synth", str(tmp_path), "--types", "fan", "--ids", "3", "--normal", "1", "--abnormal", "0",
                 "--seconds", "2.1", "--channels", "8", "--snr", "0"]) == 0
    wav = tmp_path / "0_dB_fan/fan/id_04/normal/00000000.wav"
    assert read_wav(wav, channel=7).shape == (int(2.1 * SAMPLE_RATE),)
    assert main(["synth", str(tmp_path), "--types", "robot"]) == 2
    assert "robot" in capsys.readouterr().err
    for option, value, message in [("--channels", "3", None), ("--channels", "9", "--channels 9: must be 1 to 8"),
                                   ("--snr", "nan", "--snr nan: must be a number of dB"),
                                   ("--seconds", "0.01", "--seconds 0.01: must be at least 1.04, one patch")]:
        out = tmp_path / f"bad{option}{value}"
        code = main(["synth", str(out), "--types", "fan", "--ids", "0,", "--normal", "1", "--abnormal", "0",
                     "--seconds", "2", option, value])
        err = capsys.readouterr().err
        assert (code, err.count("\n")) == ((0, 0) if message is None else (2, 1)), err
        assert message is None and out.exists() or message in err and not out.exists()


def test_synth_refuses_a_folder_it_would_misdescribe(tmp_path, capsys):
    out = tmp_path / "data"
    base = ["synth", str(out), "--types", "pump", "--ids", "0,", "--normal", "1", "--abnormal", "1", "--seconds", "2"]
    assert main(base) == 0 and main(base) == 0  # the same arguments: resumes (nothing left to do)
    clip = (out / "-6_dB_pump/pump/id_00/abnormal/00000000.wav").read_bytes()
    manifest = (out / "synth_manifest.csv").read_text()
    assert main([*base, "--seed", "7"]) == 2
    assert capsys.readouterr().err.strip().endswith("holds a dataset made with other arguments (seed 0 -> 7); use a "
                                                   "new folder")
    assert (out / "synth_manifest.csv").read_text() == manifest
    assert (out / "-6_dB_pump/pump/id_00/abnormal/00000000.wav").read_bytes() == clip
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["synth", str(tmp_path / "other"), "--types", "pump"]) == 2
    assert "not empty and not a dataset of humwatch synth" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main(["synth", str(tmp_path / "a-file" / "data"), "--types", "pump"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
