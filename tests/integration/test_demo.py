

"""`humwatch demo` end to end: the smoke test of the whole product (synth → calibrate → agent → MQTT → subscriber)."""

import re
import shutil

from humwatch.agent.transport.messages import AlarmMessage
from humwatch.cli import main


def test_demo_runs_to_the_alarm(squeezenet_int8, tmp_path, capsys):
    code = main(["demo", "--model", str(squeezenet_int8), "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    alarm = next(AlarmMessage.from_json(line) for line in out.splitlines() if line.strip().startswith("{"))
    assert (alarm.kind, alarm.event, alarm.machine) == ("anomaly", "raised", "demo-pump")
    assert alarm.window_score > alarm.threshold and len(alarm.id) >= 16
    delay = float(re.search(r"alarm after (-?[\d.]+) s of faulty sound", out).group(1))
    assert 0 < delay <= 60
    assert (tmp_path / "bundle" / "bundle.json").exists() and any((tmp_path / "report").iterdir())


def test_demo_without_mosquitto_says_what_is_missing(squeezenet_int8, tmp_path, capsys, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "mosquitto" else real_which(name))
    assert main(["demo", "--model", str(squeezenet_int8), "--workdir", str(tmp_path)]) == 2
    assert "mosquitto is not installed" in capsys.readouterr().err


def test_demo_checks_its_broker_and_folder_before_any_work(squeezenet_int8, tmp_path, capsys):
    from tests.plugins.broker import free_port

    (tmp_path / "a-file").write_text("")
    for options, message in [(["--broker", "localhost"], "--broker 'localhost': expected HOST:PORT"),
                             (["--broker", f"127.0.0.1:{free_port()}"], "cannot connect (Connection refused)"),
                             (["--workdir", str(tmp_path / "a-file")], "is a file, not a folder")]:
        assert main(["demo", "--model", str(squeezenet_int8), *options]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and "1/4" not in captured.out, captured  # nothing was synthesised
