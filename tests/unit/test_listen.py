

"""`humwatch listen` against a real mosquitto: one line per alarm, state and status message."""

import json
import pathlib
import subprocess
import sys

from humwatch.agent.transport.listen import render
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


def test_render_shows_detector_scores_when_an_alarm_has_them():
    def alarm(**fields) -> str:
        event = {"id": "a1", "kind": "anomaly", "event": "raised", "window_score": 3.0, "threshold": 2.5, **fields}
        return render("humwatch/m/alarm", json.dumps(event).encode(), False, False)

    assert alarm().endswith(" m ALARM anomaly raised score 3 threshold 2.5 (id a1)")
    assert alarm(detector_scores={"spectrum": "loud", "dynamics": 7.25}).endswith(
        " m ALARM anomaly raised score 3 threshold 2.5 (spectrum ?, dynamics 7.25) (id a1)")
    assert alarm(detector_scores=[1, 2], time=5).startswith("5 m ALARM anomaly raised score 3 threshold 2.5 (id a1)")


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
