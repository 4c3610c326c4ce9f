

"""`humwatch listen` against a real mosquitto: one line per alarm, state and status message."""

import json
import pathlib
import subprocess
import sys

import pytest

from humwatch.agent.config import MqttConfig
from humwatch.agent.transport.messages import StateMessage
from humwatch.agent.transport.outbox import Outbox
from humwatch.agent.transport.publish import MqttPublisher
from tests.plugins.messages import an_alarm

ROOT = pathlib.Path(__file__).resolve().parents[2]


def listen(broker, *options: str) -> subprocess.Popen:
    """Start `humwatch listen` and return once it is subscribed."""
    process = subprocess.Popen([sys.executable, "-m", "humwatch", "listen", "--host", broker.host, "--port",
                                str(broker.port), *options], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    first = process.stderr.readline()
    if not first.startswith("listening on"):
        process.kill()
        pytest.fail(f"humwatch listen did not subscribe: {first}{process.stderr.read()}")
    return process


@pytest.fixture
def publisher(mosquitto, tmp_path):
    made = []

    def make(machine: str) -> MqttPublisher:
        settings = MqttConfig(host=mosquitto.host, port=mosquitto.port, discovery=False, reconnect_min_s=0.2)
        made.append(MqttPublisher(settings, Outbox(tmp_path / f"{machine}.sqlite"), machine))
        made[-1].start()
        return made[-1]

    yield make
    for p in made:
        p.stop(timeout=1)


def test_listen_prints_state_and_alarms_of_one_machine(mosquitto, publisher, subscribe):
    retained = subscribe(["humwatch/+/state"])
    pump = publisher("pump-1")
    pump.publish_state(StateMessage(state="normal", machine_alarm=False))
    retained.wait_on("humwatch/pump-1/state")  # status and state are on the broker
    process = listen(mosquitto, "--machine", "pump-1", "--count", "4")  # 2 retained, then 2 live
    pump.publish_alarm(an_alarm(id="a1", window_score=3.14159, threshold=2.5, reason="window score above threshold",
                                detector_scores={"cnn-gmm80": 0.5123, "logmel-dynamics-gmm-2s": 5.77}))
    pump.publish_state(StateMessage(state="anomaly", detail="score 3.14 above 2.5", machine_alarm=True))
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 4
    assert sorted(line.split(" ", 1)[1] for line in lines[:2]) == \
        ["pump-1 state normal [retained]", "pump-1 status online [retained]"]
    assert sorted(line.split(" ", 1)[1] for line in lines[2:]) == [  # alarm and state take separate paths
        "pump-1 ALARM anomaly raised score 3.142 threshold 2.5 (cnn-gmm80 0.512, logmel-dynamics-gmm-2s 5.77) "
        "- window score above threshold (id a1)",
        "pump-1 state anomaly (score 3.14 above 2.5)"]


def test_an_alarm_sent_while_listen_reconnects_is_still_printed(mosquitto, link, publisher):
    pump = publisher("pump-1")
    process = listen(link, "--machine", "pump-1", "--count", "2")  # the retained status, then the alarm
    link.cut()  # listen's connection drops; it reconnects within a second or two
    mosquitto.wait_log(r"Client humwatch-listen-[0-9a-f]+ closed its connection")  # the broker has seen it go
    pump.publish_alarm(an_alarm(id="a2", window_score=4.0, threshold=2.5, reason="above"))
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "reconnecting" in err and out.splitlines()[-1].endswith(
        "ALARM anomaly raised score 4 threshold 2.5 - above (id a2)")


def test_listen_json_lines_cover_every_machine(mosquitto, publisher, subscribe):
    retained = subscribe(["humwatch/+/state"])
    first, second = publisher("pump-1"), publisher("fan-2")
    first.publish_state(StateMessage(state="normal", machine_alarm=False))
    second.publish_state(StateMessage(state="sensor_fault", detail="silence", machine_alarm=False))
    retained.wait_for(lambda msgs: len(msgs) == 2)  # both statuses and states are on the broker
    process = listen(mosquitto, "--json", "--count", "4")  # two retained statuses and two retained states
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert {(r["machine"], r["type"]) for r in records} == \
        {("pump-1", "status"), ("pump-1", "state"), ("fan-2", "status"), ("fan-2", "state")}
    assert all(r["retained"] for r in records)
    fan_state = next(r for r in records if r["machine"] == "fan-2" and r["type"] == "state")
    assert fan_state["topic"] == "humwatch/fan-2/state"
    assert (fan_state["payload"]["state"], fan_state["payload"]["detail"]) == ("sensor_fault", "silence")
