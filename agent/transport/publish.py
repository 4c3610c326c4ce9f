"""Alarms, state and score telemetry to an MQTT broker, without ever losing an alarm.

Alarms go through the durable `Outbox` first and leave it only when the broker acknowledges them (QoS 1 PUBACK), so
a broker outage, a network cut or a SIGKILLed agent delays an alarm but never drops it. One sender thread owns the
hand-over to paho-mqtt, which keeps alarms in the order they happened: after a reconnect, paho first re-sends what
it still holds, and the outbox's later alarms follow once those are acknowledged.
"""
from __future__ import annotations

import logging
import queue
import re
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import paho.mqtt.client as mqtt

from humwatch.agent.config import MqttConfig
from humwatch.agent.errors import ConfigError
from humwatch.agent.transport.messages import AlarmMessage, EvidenceMessage, ScoreMessage, StateMessage, to_json
from humwatch.agent.transport.outbox import Outbox, OutboxEntry

log = logging.getLogger(__name__)


class _QuietRetries(logging.Filter):
    """paho 2.2 logs an ERROR on every retry while the broker is unreachable; our own warning already says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


paho_log = logging.getLogger(f"{__name__}.paho")
paho_log.addFilter(_QuietRetries())

ONLINE, OFFLINE = "online", "offline"

@dataclass(frozen=True)
class Topics:
    """The topics of one machine (or of all machines with machine "+", for subscribers)."""

    prefix: str
    machine: str

    def leaf(self, name: str) -> str:
        """The topic <prefix>/<machine>/<name>."""
        return f"{self.prefix}/{self.machine}/{name}"

    @property
    def status(self) -> str:
        return self.leaf("status")

    @property
    def state(self) -> str:
        return self.leaf("state")

    @property
    def alarm(self) -> str:
        return self.leaf("alarm")

    @property
    def score(self) -> str:
        return self.leaf("score")

    @property
    def evidence(self) -> str:
        """The last alarm's evidence (JSON); its picture (PNG) and sound (WAV) below it."""
        return self.leaf("evidence")

    @property
    def evidence_image(self) -> str:
        return self.leaf("evidence/image")

    @property
    def evidence_audio(self) -> str:
        return self.leaf("evidence/audio")

    @property
    def command(self) -> str:
        """The operator's commands to the board (verdicts on alarms)."""
        return self.leaf("command")


def make_client(settings: MqttConfig, client_id: str, clean_session: bool = True,
                protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv311) -> mqtt.Client:
    """A paho client (VERSION2 callbacks, MQTT 3.1.1 unless asked for 5) with the settings' credentials and TLS.
    MQTT 5 has no clean_session: its session is set at connect (clean_start, session expiry)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                         clean_session=None if protocol == mqtt.MQTTv5 else clean_session)
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    context = settings.ssl_context()
    if context is not None:
        client.tls_set_context(context)
    return client


def describe_detector_scores(scores: Mapping[str, float]) -> str:
    """A message's per-detector window readings as one short phrase for a person ("cnn-gmm80 0.41, ...")."""
    return ", ".join(f"{name} {value:.3g}" for name, value in scores.items())


def node_id(machine: str) -> str:
    """The machine name reduced to what Home Assistant accepts in ids and discovery topics."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", machine)


def discovery_messages(settings: MqttConfig, topics: Topics, device_info: Mapping[str, Any] | None = None,
                       evidence: bool = False) -> dict[str, dict[str, Any]]:
    """Home Assistant discovery configs by config topic: anomaly and sensor-fault problems, window score, drift
    diagnostics; with `evidence`, the last alarm's picture and the "last alarm was normal" button."""
    node = f"humwatch_{node_id(topics.machine)}"
    device: dict[str, Any] = {"identifiers": [node], "name": f"humwatch {topics.machine}", "manufacturer": "humwatch",
                              "model": "acoustic anomaly detector"}
    try:
        device["sw_version"] = metadata.version("humwatch")
    except metadata.PackageNotFoundError:
        pass
    device.update(device_info or {})
    common = {"availability_topic": topics.status, "payload_available": ONLINE, "payload_not_available": OFFLINE,
              "device": device}
    # The anomaly stays on through a sensor fault that hides it from `state`: one alarm, one onset in automations.
    problems = {"anomaly": ("Anomaly", "{{ 'ON' if value_json.machine_alarm else 'OFF' }}"),
                "sensor_fault": ("Sensor fault", "{{ 'ON' if value_json.state == 'sensor_fault' else 'OFF' }}")}
    messages = {
        f"{settings.discovery_prefix}/binary_sensor/{node}/{state}/config": {
            "name": name, "unique_id": f"{node}_{state}", "device_class": "problem",
            "state_topic": topics.state, "json_attributes_topic": topics.state, "value_template": template, **common,
        }
        for state, (name, template) in problems.items()
    }
    messages[f"{settings.discovery_prefix}/sensor/{node}/window_score/config"] = {
        "name": "Window score", "unique_id": f"{node}_window_score", "state_class": "measurement",
        "state_topic": topics.score, "json_attributes_topic": topics.score,
        "value_template": "{{ value_json.window_score }}", **common,
    }
    messages.update(_drift_entities(settings, topics, node, common))
    if evidence:
        messages.update(_evidence_entities(settings, topics, node, common))
    return messages


# What the "last alarm was normal" button sends: `last` stands for the newest alarm the board holds evidence of.
LAST_ALARM_NORMAL = {"command": "feedback", "alarm_id": "last", "verdict": "normal", "note": "Home Assistant button"}


def _drift_entities(settings: MqttConfig, topics: Topics, node: str, common: dict) -> dict[str, dict[str, Any]]:
    prefix = settings.discovery_prefix
    return {
        f"{prefix}/binary_sensor/{node}/recalibration_suggested/config": {
            "name": "Recalibration suggested", "unique_id": f"{node}_recalibration_suggested",
            "entity_category": "diagnostic", "state_topic": topics.state,
            "value_template": "{{ 'ON' if value_json.recalibration_suggested else 'OFF' }}",
            "json_attributes_topic": topics.state,
            "json_attributes_template": "{{ {'reason': value_json.recalibration_reason} | tojson }}", **common,
        },
        f"{prefix}/sensor/{node}/daily_median_score/config": {
            "name": "Daily median window score", "unique_id": f"{node}_daily_median_score",
            "entity_category": "diagnostic", "state_class": "measurement", "state_topic": topics.score,
            # "None" is what Home Assistant's MQTT sensor takes for unknown (no window scored yet today)
            "value_template": "{{ value_json.drift.median if value_json.drift else none }}",
            "json_attributes_topic": topics.score, "json_attributes_template": "{{ value_json.drift | tojson }}",
            **common,
        },
    }


def _evidence_entities(settings: MqttConfig, topics: Topics, node: str, common: dict) -> dict[str, dict[str, Any]]:
    prefix = settings.discovery_prefix
    return {
        f"{prefix}/image/{node}/evidence/config": {
            "name": "Last alarm picture", "unique_id": f"{node}_evidence", "image_topic": topics.evidence_image,
            "content_type": "image/png", **common,
        },
        f"{prefix}/button/{node}/last_alarm_normal/config": {
            "name": "Last alarm was normal", "unique_id": f"{node}_last_alarm_normal",
            "command_topic": topics.command, "payload_press": to_json(LAST_ALARM_NORMAL).decode(), "qos": 1,
            **common,
        },
    }


class MqttPublisher:
    """Publishes one machine's status, state, score and alarms; alarms survive outages and restarts.

    Nothing here blocks the caller on the network: `publish_alarm` returns once the alarm is on disk."""

    def __init__(self, settings: MqttConfig, outbox: Outbox, machine: str,
                 device_info: Mapping[str, Any] | None = None, evidence: bool = False,
                 on_command: Callable[[bytes], None] | None = None) -> None:
        if not machine or re.search(r"[/+#\x00]", machine):
            raise ConfigError(f"machine: must be a name without '/', '+' or '#', not {machine!r}")
        self.settings = settings
        self.topics = Topics(settings.prefix, machine)
        self._outbox = outbox
        self._device_info = dict(device_info or {})
        self._evidence = evidence
        self._on_command = on_command  # called on paho's thread with each payload on the command topic
        self._unsent_evidence: dict[str, bytes] = {}  # retained evidence published while offline: sent on connect
        self.client_id = settings.client_id or f"humwatch-{node_id(machine)}-{socket.gethostname()}"
        self._client = make_client(settings, self.client_id)
        self._client.enable_logger(paho_log)
        self._client.suppress_exceptions = True  # a failing callback is logged; the network thread lives on
        self._client.will_set(self.topics.status, OFFLINE, qos=1, retain=True)
        # paho declares whole seconds but computes with any number; the tests reconnect within 0.2 s
        self._client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        if settings.discovery:
            self._client.message_callback_add(self._ha_status_topic, self._on_ha_status)
        if on_command is not None:
            self._client.message_callback_add(self.topics.command, self._on_command_message)
        self._events: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-alarm-sender", daemon=True)
        self._connected = threading.Event()
        self._acked = threading.Condition()
        self._state_lock = threading.Lock()
        self._state_payload: bytes | None = None
        self._last_failure = ""
        self._started = self._stopping = False

    @property
    def _ha_status_topic(self) -> str:
        return f"{self.settings.discovery_prefix}/status"

    @property
    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.resolved_port}"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the broker connection; True once connected."""
        return self._connected.wait(timeout)

    def pending_alarms(self) -> int:
        """Alarms written but not yet acknowledged by the broker."""
        return self._outbox.count()

    def start(self) -> None:
        """Connect in the background; until the broker answers, alarms wait in the outbox."""
        self._started = True
        self._sender.start()
        log.info("MQTT: connecting to %s as %s (tls %s, user %s), %d alarm(s) pending", self._where,
                 self.client_id, "on" if self.settings.tls is not None else "off",
                 self.settings.username or "none", self.pending_alarms())
        self._client.connect_async(self.settings.host, self.settings.resolved_port, self.settings.keepalive)
        self._client.loop_start()

    def publish_alarm(self, alarm: AlarmMessage) -> str:
        """Persist an alarm, then send it (QoS 1) on <prefix>/<machine>/alarm; returns its id."""
        if alarm.machine != self.topics.machine:
            raise ValueError(f"an alarm of machine {alarm.machine!r} on the topics of {self.topics.machine!r}")
        self._outbox.add(alarm.id, self.topics.alarm, alarm.to_json())
        self._events.put(("wake", 0))
        log.info("alarm %s (%s) queued for %s, %d pending", alarm.id, alarm.kind, self.topics.alarm,
                 self.pending_alarms())
        return alarm.id

    def publish_state(self, state: StateMessage) -> None:
        """Retain the machine's state; the latest is re-sent on every connect."""
        payload = state.to_json()
        with self._state_lock:
            self._state_payload = payload
        if self.connected:
            self._client.publish(self.topics.state, payload, qos=StateMessage.QOS, retain=StateMessage.RETAINED)

    def publish_score(self, score: ScoreMessage) -> None:
        """Send score telemetry at QoS 0; skipped while offline."""
        if self.connected:
            self._client.publish(self.topics.score, score.to_json(), qos=ScoreMessage.QOS,
                                 retain=ScoreMessage.RETAINED)

    def publish_evidence(self, evidence: EvidenceMessage, picture: bytes | None, audio: bytes | None) -> None:
        """Retain the last alarm's evidence object, picture and (when given) WAV; kept for the next connection
        while offline (only the latest of each)."""
        payloads = {self.topics.evidence: evidence.to_json()}
        if picture is not None:
            payloads[self.topics.evidence_image] = picture
        if audio is not None:
            payloads[self.topics.evidence_audio] = audio
        with self._state_lock:
            if not self.connected:
                self._unsent_evidence.update(payloads)
                return
        for topic, payload in payloads.items():
            self._client.publish(topic, payload, qos=EvidenceMessage.QOS, retain=EvidenceMessage.RETAINED)

    def stop(self, timeout: float = 3.0) -> None:
        """Give in-flight alarms `timeout` seconds for their PUBACK, publish `offline` and disconnect cleanly."""
        if not self._started:
            return
        self._stopping = True
        with self._acked:
            self._acked.wait_for(lambda: not self.connected or not self.pending_alarms(), timeout)
        if self.connected:
            info = self._client.publish(self.topics.status, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass  # the connection went away meanwhile: the broker publishes the same last will
        self._client.disconnect()
        self._client.loop_stop()
        self._events.put(("stop", 0))
        self._sender.join(timeout)
        log.info("MQTT: stopped, %d alarm(s) left in the outbox for the next start", self.pending_alarms())

    # paho callbacks: they run on paho's network thread and must not block.

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT: %s refused the connection: %s", self._where, reason_code)
            return
        log.info("MQTT: connected to %s, %d alarm(s) pending", self._where, self.pending_alarms())
        self._last_failure = ""
        self._connected.set()
        client.publish(self.topics.status, ONLINE, qos=1, retain=True)
        if self.settings.discovery:
            client.subscribe(self._ha_status_topic, qos=1)
            self._publish_discovery()
        if self._on_command is not None:
            client.subscribe(self.topics.command, qos=1)
        with self._state_lock:
            state = self._state_payload
            evidence, self._unsent_evidence = self._unsent_evidence, {}
        if state is not None:
            client.publish(self.topics.state, state, qos=StateMessage.QOS, retain=StateMessage.RETAINED)
        for topic, payload in evidence.items():
            client.publish(topic, payload, qos=EvidenceMessage.QOS, retain=EvidenceMessage.RETAINED)
        self._events.put(("connected", 0))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        reason = str(sys.exc_info()[1] or "unknown error")  # paho calls this inside its `except OSError`
        level = logging.WARNING if reason != self._last_failure else logging.DEBUG
        self._last_failure = reason
        log.log(level, "MQTT: cannot connect to %s: %s; retrying with backoff %g..%g s, %d alarm(s) kept in the outbox",
                self._where, reason, self.settings.reconnect_min_s, self.settings.reconnect_max_s,
                self.pending_alarms())

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        was_connected = self.connected
        self._connected.clear()
        self._events.put(("disconnected", 0))
        with self._acked:
            self._acked.notify_all()
        if was_connected and not self._stopping:
            log.warning("MQTT: lost the connection to %s (%s); reconnecting, alarms wait in the outbox",
                        self._where, reason_code)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self._events.put(("acked", mid))

    def _on_ha_status(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.payload.decode(errors="replace").strip() == ONLINE:
            log.info("MQTT: Home Assistant is online, re-sending discovery")
            self._publish_discovery()

    def _on_command_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._on_command is None:
            return
        try:
            self._on_command(bytes(message.payload))
        except Exception:  # noqa: BLE001 - a bad command must not reach paho's network thread
            log.exception("MQTT: handling a message on %s failed", self.topics.command)

    def _publish_discovery(self) -> None:
        for topic, config in discovery_messages(self.settings, self.topics, self._device_info,
                                                self._evidence).items():
            self._client.publish(topic, to_json(config), qos=1, retain=True)

    # The sender thread: the only code that hands alarms to paho and removes them from the outbox.

    def _send_loop(self) -> None:
        in_flight: dict[int, OutboxEntry] = {}  # paho message id -> alarm handed over on this client
        last_seq = 0  # highest outbox sequence number handed over
        connected = resending = False
        while True:
            event, mid = self._events.get()
            if event == "stop":
                return
            if event == "connected":
                connected, resending = True, bool(in_flight)  # paho re-sends those first, in order
            elif event == "disconnected":
                connected = False
            elif event == "acked" and mid in in_flight:
                entry = in_flight.pop(mid)
                self._forget(entry)
                resending = resending and bool(in_flight)
            if connected and not resending:
                last_seq = self._hand_over(in_flight, last_seq)

    def _forget(self, entry: OutboxEntry) -> None:
        try:
            self._outbox.remove(entry.seq)
        except Exception:  # the sender must outlive a disk error; the alarm is re-sent after a restart
            log.exception("alarm %s was acknowledged but could not be removed from %s", entry.alarm_id,
                          self._outbox.path)
        else:
            log.info("alarm %s delivered (PUBACK), %d pending", entry.alarm_id, self.pending_alarms())
        with self._acked:
            self._acked.notify_all()

    def _hand_over(self, in_flight: dict[int, OutboxEntry], last_seq: int) -> int:
        """Give paho every outbox alarm after `last_seq`, in order, while the connection is up."""
        while self._client.is_connected() and (batch := self._outbox.after(last_seq)):
            for entry in batch:
                info = self._client.publish(entry.topic, entry.payload, qos=self.settings.alarm_qos)
                in_flight[info.mid] = entry  # paho keeps it even on MQTT_ERR_NO_CONN and re-sends it
                last_seq = entry.seq
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    return last_seq
        return last_seq
