

"""The MQTT publisher against a real mosquitto: alarms survive broker outages and SIGKILL, status and HA discovery."""

import dataclasses
import json
import logging
import pathlib
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import jinja2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from humwatch.agent.config import MqttConfig, TlsConfig
from humwatch.agent.transport.messages import DriftToday, ScoreMessage, StateMessage
from humwatch.agent.transport.outbox import Outbox
from humwatch.agent.transport.publish import MqttPublisher
from tests.plugins.broker import Mosquitto, make_tls_files
from tests.plugins.messages import MODEL, an_alarm

ROOT = pathlib.Path(__file__).resolve().parents[2]


MACHINE = "pump-1"


ALARM, STATUS, STATE, SCORE = (f"humwatch/{MACHINE}/{leaf}" for leaf in ("alarm", "status", "state", "score"))


# A publisher in its own process, so that it can be SIGKILLed: it queues `count` alarms and says "ready".
PUBLISHER_SCRIPT = """
import sys, threading
from humwatch.agent.config import MqttConfig
from humwatch.agent.transport.outbox import Outbox
from humwatch.agent.transport.publish import MqttPublisher
from tests.plugins.messages import an_alarm
outbox, port, count, wait_connected = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
publisher = MqttPublisher(MqttConfig(host="127.0.0.1", port=port, discovery=False, reconnect_min_s=0.2,
                                     reconnect_max_s=1), Outbox(outbox), "pump-1")
publisher.start()
if wait_connected and not publisher.wait_connected(20):
    sys.exit("the publisher did not connect")
for i in range(count):
    publisher.publish_alarm(an_alarm(id=f"alarm-{i}"))
print("ready", flush=True)
threading.Event().wait()
"""


def settings_for(broker: Mosquitto, **overrides) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0, **overrides)


def wait_until(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def publishers(tmp_path):
    """publishers(settings, outbox=None, **kw) -> started MqttPublisher; all stopped after the test."""
    made = []

    def make(settings: MqttConfig, outbox: Outbox | None = None, **kwargs) -> MqttPublisher:
        if outbox is None:
            outbox = Outbox(tmp_path / f"outbox{len(made)}.sqlite")
        publisher = MqttPublisher(settings, outbox, MACHINE, **kwargs)
        publisher.start()
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.stop(timeout=1)


def unique_ids(messages) -> list[str]:
    """Alarm ids in order of first arrival: what a subscriber de-duplicating by id sees."""
    return list(dict.fromkeys(m.json()["id"] for m in messages))


def publish_packet_size(topic: str, payload: bytes) -> int:
    """Bytes of an MQTT 3.1.1 QoS 1 PUBLISH: fixed header, topic, message id, payload."""
    remaining = 2 + len(topic.encode()) + 2 + len(payload)
    return 1 + (1 if remaining < 128 else 2 if remaining < 16384 else 3) + remaining


def broker_received(broker: Mosquitto, client_id: str, topic: str) -> list[str]:
    """The PUBLISH packets the broker logged from one client on one topic, e.g. '(d0, q1, r0, m3'."""
    pattern = re.compile(rf"Received PUBLISH from {re.escape(client_id)} \((d\d, q\d), r\d, m\d+, '{topic}'")
    return pattern.findall(broker.log())


def test_an_alarm_arrives_with_its_fields_and_leaves_the_outbox(mosquitto, subscribe, publishers):
    subscriber = subscribe([ALARM])
    publisher = publishers(settings_for(mosquitto))
    event = an_alarm(window_score=np.float64(3.25), threshold=np.float32(2.5),
                     detector_scores={"gmm": np.float64(3.25)}, reason="window score above threshold for 3 decisions")
    alarm_id = publisher.publish_alarm(event)
    [message] = subscriber.wait_on(ALARM)
    body = message.json()
    assert message.qos == 1 and not message.retain
    assert body["id"] == alarm_id and re.fullmatch(r"[0-9a-f]{32}", alarm_id)
    assert body["machine"] == MACHINE
    sent_at = datetime.fromisoformat(body["time"].replace("Z", "+00:00"))
    assert sent_at.tzinfo is not None and abs((datetime.now(timezone.utc) - sent_at).total_seconds()) < 60
    assert body["window_score"] == 3.25 and body["threshold"] == 2.5 and body["detector_scores"] == {"gmm": 3.25}
    assert (body["kind"], body["event"], body["reason"]) == ("anomaly", "raised", event.reason)
    assert body["model"] == {"bundle": MODEL.bundle, "extractor": MODEL.extractor, "detectors": ["gmm"]}
    wait_until(lambda: publisher.pending_alarms() == 0, what="the PUBACK removing the alarm")


def test_an_alarm_id_given_twice_is_stored_and_sent_once(mosquitto, subscribe, publishers, tmp_path):
    subscriber = subscribe([ALARM])
    outbox = Outbox(tmp_path / "outbox.sqlite")
    publisher = publishers(settings_for(mosquitto), outbox)
    assert publisher.publish_alarm(an_alarm(id="fixed", kind="sensor_fault")) == "fixed"
    publisher.publish_alarm(an_alarm(id="fixed", kind="sensor_fault"))
    publisher.publish_alarm(an_alarm(id="after", kind="sensor_fault"))
    subscriber.wait_on(ALARM, 2)
    wait_until(lambda: publisher.pending_alarms() == 0, what="both PUBACKs")
    assert [m.json()["id"] for m in subscriber.on(ALARM)] == ["fixed", "after"]


def test_alarms_raised_while_the_broker_is_down_arrive_once_each_in_order(mosquitto, subscribe, publishers):
    subscriber = subscribe([ALARM])
    publisher = publishers(settings_for(mosquitto))
    before = [publisher.publish_alarm(an_alarm(audio_time=i)) for i in range(2)]
    subscriber.wait_on(ALARM, 2)
    wait_until(lambda: publisher.pending_alarms() == 0, what="the first PUBACKs")
    mosquitto.stop()
    wait_until(lambda: not publisher.connected, what="the publisher noticing the outage")
    during = [publisher.publish_alarm(an_alarm(audio_time=i)) for i in range(2, 7)]
    assert publisher.pending_alarms() == 5
    mosquitto.start()
    subscriber.wait_for(lambda msgs: len(unique_ids([m for m in msgs if m.topic == ALARM])) == 7)
    assert unique_ids(subscriber.on(ALARM)) == before + during
    wait_until(lambda: publisher.pending_alarms() == 0, what="the outbox emptying")
    # the publisher itself sent every alarm exactly once (the broker may still redeliver to a subscriber)
    assert broker_received(mosquitto, publisher.client_id, ALARM) == ["d0, q1"] * 7


def test_alarms_lost_in_flight_on_a_dead_network_are_resent_in_order(mosquitto, link, subscribe, publishers,
                                                                    tmp_path):
    subscriber = subscribe([ALARM, STATUS])
    outbox = Outbox(tmp_path / "outbox.sqlite")
    publisher = publishers(MqttConfig(host=link.host, port=link.port, reconnect_min_s=0.2, reconnect_max_s=1.0,
                                        discovery=False), outbox)
    subscriber.wait_on(STATUS)  # connected, and the connect-time messages are through
    link.blackhole()  # the network silently loses what the agent sends: these alarms are in flight, unacknowledged
    in_flight = [publisher.publish_alarm(an_alarm(audio_time=i)) for i in range(5)]
    size = sum(publish_packet_size(e.topic, e.payload) for e in outbox.pending())
    wait_until(lambda: link.dropped_bytes >= size, what="all five alarms being sent into the black hole")
    link.cut()
    wait_until(lambda: not publisher.connected, what="the publisher noticing the cut")
    later = [publisher.publish_alarm(an_alarm(audio_time=i)) for i in range(5, 8)]
    subscriber.wait_for(lambda msgs: len(unique_ids([m for m in msgs if m.topic == ALARM])) == 8)
    assert unique_ids(subscriber.on(ALARM)) == in_flight + later
    wait_until(lambda: publisher.pending_alarms() == 0, what="the outbox emptying")
    # paho re-sent the in-flight ones (DUP set) first; the later ones went out once, after them
    assert broker_received(mosquitto, publisher.client_id, ALARM) == ["d1, q1"] * 5 + ["d0, q1"] * 3


def test_an_alarm_left_by_a_sigkilled_agent_is_delivered_after_restart(mosquitto, subscribe, publishers, tmp_path):
    outbox_path = tmp_path / "state" / "outbox.sqlite"
    mosquitto.stop()
    agent = subprocess.Popen([sys.executable, "-c", PUBLISHER_SCRIPT, str(outbox_path), str(mosquitto.port), "3", "0"],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "ready"
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    assert [e.alarm_id for e in Outbox(outbox_path).pending()] == ["alarm-0", "alarm-1", "alarm-2"]
    mosquitto.start()
    subscriber = subscribe([ALARM])
    publisher = publishers(settings_for(mosquitto), Outbox(outbox_path))
    subscriber.wait_on(ALARM, 3)
    assert unique_ids(subscriber.on(ALARM)) == ["alarm-0", "alarm-1", "alarm-2"]
    wait_until(lambda: publisher.pending_alarms() == 0, what="the outbox emptying")


def test_status_is_retained_online_then_offline_after_stop(mosquitto, subscribe, publishers):
    watcher = subscribe([STATUS])
    publisher = publishers(settings_for(mosquitto))
    assert [m.text for m in watcher.wait_on(STATUS)] == ["online"]
    late = subscribe([STATUS])  # joins after the fact: gets the retained value
    [online] = late.wait_on(STATUS)
    assert (online.text, online.retain) == ("online", True)
    publisher.stop()
    assert [m.text for m in watcher.wait_on(STATUS, 2)] == ["online", "offline"]
    [after] = subscribe([STATUS]).wait_on(STATUS)
    assert (after.text, after.retain) == ("offline", True)


def test_the_last_will_marks_a_killed_agent_offline(mosquitto, subscribe, tmp_path):
    watcher = subscribe([STATUS])
    agent = subprocess.Popen([sys.executable, "-c", PUBLISHER_SCRIPT, str(tmp_path / "outbox.sqlite"),
                              str(mosquitto.port), "0", "1"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "ready"
        assert watcher.wait_on(STATUS)[-1].text == "online"
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    assert watcher.wait_on(STATUS, 2)[-1].text == "offline"
    [retained] = subscribe([STATUS]).wait_on(STATUS)
    assert (retained.text, retained.retain) == ("offline", True)


def test_state_is_retained_and_score_is_sent(mosquitto, subscribe, publishers):
    watcher = subscribe([STATE])
    publisher = publishers(settings_for(mosquitto))
    publisher.publish_state(StateMessage(state="anomaly", detail="window score 3.3 above 2.5", machine_alarm=True))
    # before connecting: sent on connect
    watcher.wait_on(STATE)
    [state] = subscribe([STATE]).wait_on(STATE)  # a late subscriber gets the retained state
    assert state.retain and state.json()["state"] == "anomaly"
    assert state.json()["detail"] == "window score 3.3 above 2.5"
    live = subscribe([SCORE])
    publisher.publish_score(ScoreMessage(window_score=np.float64(1.25), threshold=2.5,
                                         detector_scores={"gmm": np.float32(1.25)}, state="anomaly", audio_time=20.0))
    [score] = live.wait_on(SCORE)
    assert score.qos == 0 and ScoreMessage.from_json(score.payload).window_score == 1.25
    with pytest.raises(ValueError, match="an alarm of machine 'pump-2' on the topics of 'pump-1'"):
        publisher.publish_alarm(an_alarm("pump-2"))


def render(template: str, payload: bytes) -> str:
    """Home Assistant renders value_template with Jinja2 and the payload parsed as value_json."""
    return jinja2.Template(template).render(value_json=json.loads(payload)).strip()


CONFIGS = 5  # discovery configs of an agent without evidence: anomaly, sensor fault, window score, 2 drift


def test_home_assistant_discovery_is_retained_and_resent_when_ha_comes_online(mosquitto, subscribe, publishers):
    discovery = subscribe(["homeassistant/+/+/+/config"])
    publishers(settings_for(mosquitto), device_info={"suggested_area": "hall 2"})
    discovery.wait_for(lambda ms: len(ms) >= CONFIGS)
    configs = {m.topic: m for m in subscribe(["homeassistant/#"]).wait_for(lambda ms: len(ms) >= CONFIGS)}
    node = "humwatch_pump-1"
    anomaly = configs[f"homeassistant/binary_sensor/{node}/anomaly/config"]
    fault = configs[f"homeassistant/binary_sensor/{node}/sensor_fault/config"]
    score = configs[f"homeassistant/sensor/{node}/window_score/config"]
    assert all(m.retain for m in (anomaly, fault, score))
    anomaly, fault, score = anomaly.json(), fault.json(), score.json()
    for config in (anomaly, fault, score):
        assert config["availability_topic"] == STATUS
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
        assert config["device"]["identifiers"] == [node] and config["device"]["suggested_area"] == "hall 2"
    assert anomaly["device_class"] == fault["device_class"] == "problem"
    assert anomaly["state_topic"] == fault["state_topic"] == STATE and score["state_topic"] == SCORE
    assert len({anomaly["unique_id"], fault["unique_id"], score["unique_id"]}) == 3
    anomalous = StateMessage(state="anomaly", machine_alarm=True).to_json()
    faulty = StateMessage(state="sensor_fault", detail="silence", machine_alarm=False).to_json()
    hidden = StateMessage(state="sensor_fault", detail="silence", machine_alarm=True).to_json()  # still raised
    assert [render(anomaly["value_template"], p) for p in (anomalous, faulty, hidden)] == ["ON", "OFF", "ON"]
    assert [render(fault["value_template"], p) for p in (anomalous, faulty, hidden)] == ["OFF", "ON", "ON"]
    score_message = ScoreMessage(window_score=1.5, threshold=2.5, detector_scores={}, state="normal", audio_time=1.0)
    assert render(score["value_template"], score_message.to_json()) == "1.5"
    drift = configs[f"homeassistant/binary_sensor/{node}/recalibration_suggested/config"].json()
    median = configs[f"homeassistant/sensor/{node}/daily_median_score/config"].json()
    for config in (drift, median):
        assert config["entity_category"] == "diagnostic" and config["availability_topic"] == STATUS
    advised = StateMessage(state="normal", machine_alarm=False, recalibration_suggested=True,
                           recalibration_reason="drifted").to_json()
    assert [render(drift["value_template"], p) for p in (advised, anomalous)] == ["ON", "OFF"]
    assert render(drift["json_attributes_template"], advised) == '{"reason": "drifted"}'
    today = DriftToday(day="2026-11-25", windows=8, median=0.35, p95=0.9, baseline_median=0.1)
    assert render(median["value_template"], dataclasses.replace(score_message, drift=today).to_json()) == "0.35"
    assert render(median["value_template"], score_message.to_json()) == "None"  # unknown to Home Assistant

    ha = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="home-assistant")
    ha.connect(mosquitto.host, mosquitto.port)
    ha.loop_start()
    ha.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
    ha.disconnect()
    ha.loop_stop()
    again = discovery.wait_for(lambda ms: len(ms) >= 2 * CONFIGS)[CONFIGS:]
    assert sorted(m.topic for m in again) == sorted(configs) and not any(m.retain for m in again)


def test_discovery_can_be_switched_off(mosquitto, subscribe, publishers):
    everything = subscribe(["#"])
    publisher = publishers(settings_for(mosquitto, discovery=False))
    publisher.publish_alarm(an_alarm())
    everything.wait_on(ALARM)
    assert not [m for m in everything.messages if m.topic.startswith("homeassistant/")]


def test_tls_with_a_generated_ca_delivers_alarms(mosquitto_tls, tls_files, publishers):
    publisher = publishers(settings_for(mosquitto_tls, tls=TlsConfig(ca_file=tls_files.ca)))
    assert publisher.wait_connected(15), "no TLS connection"
    publisher.publish_alarm(an_alarm())
    wait_until(lambda: publisher.pending_alarms() == 0, what="the PUBACK over TLS")
    assert publisher.settings.resolved_port == mosquitto_tls.port and publisher.settings.tls is not None


def test_a_broker_certificate_from_another_ca_is_reported_and_the_alarm_kept(mosquitto_tls, publishers, tmp_path,
                                                                             caplog):
    caplog.set_level(logging.WARNING, logger="humwatch.agent.transport.publish")
    other_ca = make_tls_files(tmp_path / "other").ca
    publisher = publishers(settings_for(mosquitto_tls, tls=TlsConfig(ca_file=other_ca)))
    publisher.publish_alarm(an_alarm())
    wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text, what="the certificate error in the log")
    assert not publisher.connected and publisher.pending_alarms() == 1
    [line] = {r.getMessage() for r in caplog.records if "CERTIFICATE_VERIFY_FAILED" in r.getMessage()}
    assert line.startswith(f"MQTT: cannot connect to 127.0.0.1:{mosquitto_tls.port}:") and "\n" not in line


def test_secrets_never_reach_the_logs(tmp_path, publishers, caplog):
    caplog.set_level(logging.DEBUG)
    broker = Mosquitto(tmp_path / "auth", anonymous=False, extra_config=[f"password_file {tmp_path / 'passwd'}"])
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(tmp_path / "passwd"), "agent", "s3cret-Pa55"], check=True)
    broker.start()
    try:
        good = settings_for(broker, username="agent", password="s3cret-Pa55")
        assert "s3cret-Pa55" not in repr(good) and "s3cret-Pa55" not in str(good)
        publisher = publishers(good)
        publisher.publish_alarm(an_alarm())
        wait_until(lambda: publisher.pending_alarms() == 0, what="the authenticated delivery")
        wrong = publishers(settings_for(broker, username="agent", password="wr0ng-Pa55", client_id="intruder"))
        wait_until(lambda: "refused the connection" in caplog.text, what="the refusal in the log")
        assert not wrong.connected
    finally:
        broker.stop()
    assert "s3cret-Pa55" not in caplog.text and "wr0ng-Pa55" not in caplog.text
