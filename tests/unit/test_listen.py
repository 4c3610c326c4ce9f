

"""`humwatch listen` against a real mosquitto: one line per alarm, state and status message."""

import json
import pathlib
import subprocess
import sys

import pytest

from humwatch.agent.errors import MessageError
from humwatch.agent.transport.listen import render
from humwatch.agent.transport.messages import AlarmMessage, ModelIds, ScoreMessage, StateMessage
from tests.plugins.broker import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_an_unreachable_broker_is_one_clear_line_and_exit_2():
    port = free_port()  # nothing listens here
    done = subprocess.run([sys.executable, "-m", "humwatch", "listen", "--host", "127.0.0.1", "--port", str(port)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == f"humwatch listen: error: cannot reach the MQTT broker at 127.0.0.1:{port}: " \
                          "Connection refused\n"


def test_a_bad_ca_file_is_named_by_its_option(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    done = subprocess.run([sys.executable, "-m", "humwatch", "listen", "--ca-file", str(ca)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith(f"humwatch listen: error: --ca-file: not a PEM CA certificate file {ca}")
    assert done.stderr.count("\n") == 1


def alarm(**fields) -> AlarmMessage:
    values = {"id": "a1", "machine": "m", "time": "T", "kind": "anomaly", "event": "raised", "window_score": 3.0,
              "threshold": 2.5, "model": ModelIds(bundle="b", extractor="e", detectors=("gmm",)),
              "reason": "above", "audio_time": 12.0, **fields}
    return AlarmMessage(**values)


def test_render_shows_detector_scores_when_an_alarm_has_them():
    def line(message: AlarmMessage) -> str:
        return render("humwatch/m/alarm", message.to_json(), False, False)

    assert line(alarm()) == "T m ALARM anomaly raised score 3 threshold 2.5 - above (id a1)"
    assert line(alarm(detector_scores={"spectrum": 0.5, "dynamics": 7.25})) == \
        "T m ALARM anomaly raised score 3 threshold 2.5 (spectrum 0.5, dynamics 7.25) - above (id a1)"
    assert line(alarm(kind="sensor_fault", window_score=None, reason="silence: -90 dBFS")) == \
        "T m ALARM sensor_fault raised threshold 2.5 - silence: -90 dBFS (id a1)"


def test_messages_round_trip_and_the_decoder_names_every_bad_field():
    message = alarm(detector_scores={"spectrum": 0.5})
    assert AlarmMessage.from_json(message.to_json()) == message
    state = StateMessage(state="sensor_fault", detail="silence", machine_alarm=True)
    assert StateMessage.from_json(state.to_json()) == state
    score = ScoreMessage(window_score=1.5, threshold=2.5, detector_scores={}, state="normal", audio_time=3.0)
    assert ScoreMessage.from_json(score.to_json()) == score
    newer = json.loads(state.to_json()) | {"drift": {"level": 0.1}}  # a field a newer agent adds is skipped
    assert StateMessage.from_json(json.dumps(newer)) == state
    bad = json.loads(message.to_json()) | {"window_score": "high", "detector_scores": [1, 2]}
    del bad["reason"]
    with pytest.raises(MessageError) as error:
        AlarmMessage.from_json(json.dumps(bad))
    assert str(error.value).splitlines() == [
        "alarm.window_score: must be a number, not 'high'",
        "alarm.detector_scores: must be a map from names to numbers, not [1, 2]",
        "alarm.reason: missing (required)"]
    with pytest.raises(MessageError, match="state.state: must be 'normal' or 'anomaly' or 'sensor_fault'"):
        StateMessage.from_json(b'{"state": "broken", "machine_alarm": false}')


def test_render_shows_an_invalid_message_as_it_came_with_what_is_wrong():
    line = render("humwatch/m/alarm", b'{"kind": "anomaly"}', False, False)
    assert line.endswith(' m alarm {"kind": "anomaly"} (not a valid message: alarm.machine: missing (required); '
                         'alarm.event: missing (required); alarm.window_score: missing (required); '
                         'alarm.threshold: missing (required); alarm.model: missing (required); '
                         'alarm.reason: missing (required); alarm.audio_time: missing (required))')
    assert render("humwatch/m/state", b"not json", True, False).endswith(
        " m state not json (not a valid message: state message: not JSON (Expecting value: line 1 column 1 "
        "(char 0))) [retained]")


def test_every_problem_of_the_options_is_its_own_error_line():
    done = subprocess.run([sys.executable, "-m", "humwatch", "listen", "--port", "0", "--password", "x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "humwatch listen: error: --port: must be 1..65535, not 0",
        "humwatch listen: error: --username: is needed with a password"]


def test_render_keeps_non_json_payloads_and_marks_retained():
    assert render("humwatch/m/status", b"offline", True, False).endswith(" m status offline [retained]")
    assert json.loads(render("humwatch/m/status", b"offline", False, True)) == \
        {"topic": "humwatch/m/status", "machine": "m", "type": "status", "retained": False, "payload": "offline"}
