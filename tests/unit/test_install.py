"""`humwatch install-service`: the steps it plans, the files it writes under a staging root, and what it refuses."""
from __future__ import annotations

import pathlib
import shutil
import stat

import pytest

from humwatch.agent.config import load_config
from humwatch.agent.errors import ConfigError
from humwatch.agent.service.install import UNIT_NAME, service_executable
from humwatch.cli import main


def install(capsys, *args: str) -> tuple[int, list[str]]:
    code = main(["install-service", *args])
    return code, capsys.readouterr().out.splitlines()


def test_dry_run_prints_every_step_and_writes_nothing(tmp_path, program, capsys):
    root = tmp_path / "root"
    code, lines = install(capsys, "--dry-run", "--prefix", str(root), "--executable", str(program),
                          "--instance", "press3")
    assert code == 0
    assert lines[0].startswith(f"would write {root}/etc/systemd/system/{UNIT_NAME} (ExecStart={program} run ...;")
    assert lines[1:4] == [
        f"would write {root}/etc/humwatch/press3.toml from the example (humwatch.example.toml) (mode 0640 root:root)",
        f"would create directory {root}/var/lib/humwatch (mode 0755)",
        f"would create directory {root}/var/lib/humwatch/press3 (mode 0750)",
    ]
    assert not root.exists()


def test_live_dry_run_plans_user_unit_config_and_state(program, capsys):
    instance = "hwtest-dry-run"
    code, lines = install(capsys, "--dry-run", "--executable", str(program), "--instance", instance)
    assert code == 0
    text = "\n".join(lines)
    assert ("would run useradd --system --user-group --groups audio --home-dir /var/lib/humwatch" in text
            or "would run usermod --append --groups audio humwatch" in text)
    assert f"would write /etc/systemd/system/{UNIT_NAME} (ExecStart={program} run ...;" in text
    assert f"would write /etc/humwatch/{instance}.toml from the example" in text
    assert f"would create directory /var/lib/humwatch/{instance} (mode 0750 humwatch:humwatch)" in text
    assert "daemon-reload" in text
    assert f"systemctl enable --now humwatch@{instance}" in lines[-1]
    assert not pathlib.Path(f"/etc/humwatch/{instance}.toml").exists()


def test_prefix_install_writes_unit_example_config_and_state(tmp_path, program, capsys):
    root = tmp_path / "root"
    code, _ = install(capsys, "--prefix", str(root), "--executable", str(program), "--instance", "fan2")
    assert code == 0
    unit = (root / "etc/systemd/system" / UNIT_NAME).read_text()
    assert f"\nExecStart={program} run --config /etc/humwatch/%i.toml\n" in unit
    config_path = root / "etc/humwatch/fan2.toml"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o640
    config = load_config(config_path)
    assert config.machine.name == "fan2"
    assert config.model.bundle == pathlib.Path("/var/lib/humwatch/fan2/bundle")
    assert config.state.dir == pathlib.Path("/var/lib/humwatch/fan2")
    assert stat.S_IMODE((root / "var/lib/humwatch/fan2").stat().st_mode) == 0o750
    assert not list(root.rglob(".*"))  # no temporary files left behind


def test_existing_config_is_kept(tmp_path, program, capsys):
    root = tmp_path / "root"
    config_path = root / "etc/humwatch/pump1.toml"
    config_path.parent.mkdir(parents=True)
    config_path.write_text("# tuned on site\n")
    code, lines = install(capsys, "--prefix", str(root), "--executable", str(program))
    assert code == 0
    assert f"keep the existing {config_path}" in lines
    assert config_path.read_text() == "# tuned on site\n"


def test_config_src_is_checked_then_installed(tmp_path, program, capsys):
    root = tmp_path / "root"
    good = tmp_path / "good.toml"
    good.write_text('[machine]\nname = "mill"\n[model]\nbundle = "/var/lib/humwatch/mill/bundle"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[machine]\nname = "mill"\n[model]\nbundel = "/x"\n')
    assert main(["install-service", "--prefix", str(root), "--executable", str(program), "--instance", "mill",
                 "--config-src", str(bad)]) == 2
    assert "model.bundel: unknown key" in capsys.readouterr().err
    assert not root.exists()
    code, _ = install(capsys, "--prefix", str(root), "--executable", str(program), "--instance", "mill",
                      "--config-src", str(good))
    assert code == 0
    assert (root / "etc/humwatch/mill.toml").read_text() == good.read_text()


def test_uninstall_keeps_the_shared_unit_while_used_and_data_unless_purged(tmp_path, program, capsys):
    root = tmp_path / "root"
    for instance in ("pump1", "pump2"):
        assert install(capsys, "--prefix", str(root), "--executable", str(program), "--instance", instance)[0] == 0
    unit = root / "etc/systemd/system" / UNIT_NAME
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    for instance in ("pump1", "pump2"):  # what `systemctl enable humwatch@NAME` leaves behind
        (wants / f"humwatch@{instance}.service").symlink_to(f"/etc/systemd/system/{UNIT_NAME}")
    code, lines = install(capsys, "--prefix", str(root), "--uninstall", "--instance", "pump1")
    assert code == 0 and unit.exists()
    assert f"keep {unit}: still enabled for humwatch@pump2.service" in lines
    assert [p.name for p in wants.iterdir()] == ["humwatch@pump2.service"]
    code, lines = install(capsys, "--prefix", str(root), "--uninstall", "--instance", "pump2")
    assert code == 0 and not unit.exists() and not list(wants.iterdir())
    assert (root / "etc/humwatch/pump2.toml").exists() and (root / "var/lib/humwatch/pump2").is_dir()
    for instance in ("pump1", "pump2"):
        assert install(capsys, "--prefix", str(root), "--uninstall", "--purge", "--instance", instance)[0] == 0
    assert not (root / "etc/humwatch").exists() and not (root / "var/lib/humwatch").exists()


def test_a_program_or_its_python_under_home_is_refused(tmp_path, program):
    link = tmp_path / "humwatch"
    link.symlink_to("/home/pi/venv/bin/humwatch")
    with pytest.raises(ConfigError, match="ProtectHome=yes hides"):
        service_executable(link)
    python = tmp_path / "python3"
    python.symlink_to("/home/pi/.pyenv/bin/python3")  # a venv's bin/python3 links to the Python it was made from
    program.write_text(f"#!{python}\nimport sys\n")
    with pytest.raises(ConfigError, match=r"its Python /home/pi/\.pyenv/bin/python3 is hidden from the service"):
        service_executable(program)
    program.write_text("#!/usr/bin/python3\nimport sys\n")
    assert service_executable(program) == program.resolve()
    spaced = tmp_path / "my venv" / "humwatch"
    spaced.parent.mkdir()
    shutil.copy(program, spaced)
    with pytest.raises(ConfigError, match="a space or '%' in the path"):
        service_executable(spaced)


def test_bad_instance_name_is_refused(program, capsys):
    assert main(["install-service", "--dry-run", "--executable", str(program), "--instance", "../etc"]) == 2
    assert "--instance '../etc'" in capsys.readouterr().err


def test_installed_config_offers_a_wav_replay_by_uncommenting_three_lines(tmp_path, program, capsys):
    import wave

    root = tmp_path / "root"
    assert install(capsys, "--prefix", str(root), "--executable", str(program), "--instance", "fan2")[0] == 0
    text = (root / "etc/humwatch/fan2.toml").read_text()
    assert '\n#file = "/var/lib/humwatch/fan2/replay.wav"\n' in text and "\n#realtime = true\n" in text
    replay = tmp_path / "replay.wav"
    with wave.open(str(replay), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000), out.writeframes(b"\0\0" * 16000)
    text = (text.replace('\n#source = "device"\n', '\nsource = "file"\n')
                .replace('\n#file = "/var/lib/humwatch/fan2/replay.wav"\n', f'\nfile = "{replay}"\n')
                .replace("\n#realtime = true\n", "\nrealtime = false\n"))
    edited = tmp_path / "fan2.toml"
    edited.write_text(text)
    config = load_config(edited)
    assert (config.audio.source, config.audio.file, config.audio.realtime) == ("file", replay, False)
