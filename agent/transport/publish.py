"""Alarms, state and score telemetry to an MQTT broker, without ever losing an alarm.

Alarms go through the durable `Outbox` first and leave it only when the broker acknowledges them (QoS 1 PUBACK), so
a broker outage, a network cut or a SIGKILLed agent delays an alarm but never drops it. One sender thread owns the
hand-over to paho-mqtt, which keeps alarms in the order they happened: after a reconnect, paho first re-sends what
it still holds, and the outbox's later alarms follow once those are acknowledged.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import queue
import re
import socket
import ssl
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import paho.mqtt.client as mqtt

from humwatch.agent.errors import ConfigError
from humwatch.agent.transport.outbox import Outbox, OutboxEntry

log = logging.getLogger(__name__)


class _QuietRetries(logging.Filter):
    """paho 2.2 logs an ERROR on every retry while the broker is unreachable; our own warning already says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


paho_log = logging.getLogger(f"{__name__}.paho")
paho_log.addFilter(_QuietRetries())

STATES = ("normal", "anomaly", "sensor_fault")
ONLINE, OFFLINE = "online", "offline"

# How errors name each field: the TOML key by default (humwatch listen passes its command-line flags instead).
TOML_NAMES = {
    "host": "mqtt.host", "port": "mqtt.port", "prefix": "mqtt.prefix", "username": "mqtt.username",
    "password": "mqtt.password", "tls": "mqtt.tls", "ca_file": "mqtt.tls.ca_file", "certfile": "mqtt.tls.certfile",
    "keyfile": "mqtt.tls.keyfile", "tls_insecure": "mqtt.tls.insecure", "keepalive": "mqtt.keepalive",
    "client_id": "mqtt.client_id", "alarm_qos": "mqtt.alarm_qos", "discovery": "mqtt.discovery",
    "discovery_prefix": "mqtt.discovery_prefix", "reconnect_min_s": "mqtt.reconnect_min_s",
    "reconnect_max_s": "mqtt.reconnect_max_s",
}
_TLS_KEYS = {"ca_file": "ca_file", "certfile": "certfile", "keyfile": "keyfile", "insecure": "tls_insecure"}


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to reach the broker; validated on construction (a ConfigError names every field at fault, one
    line each)."""

    host: str = "localhost"
    port: int | None = None  # None: 8883 with TLS, 1883 without
    prefix: str = "humwatch"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False  # switched on by ca_file or certfile; without ca_file the system CAs are trusted
    ca_file: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    tls_insecure: bool = False  # skip the server host name check (certificate chain still verified)
    keepalive: int = 60
    client_id: str | None = None  # None: humwatch-<machine>-<hostname>
    alarm_qos: int = 1
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    names: Mapping[str, str] = field(default_factory=lambda: TOML_NAMES, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.ca_file or self.certfile:
            object.__setattr__(self, "tls", True)
        problems = self._problems()
        if problems:
            raise ConfigError("\n".join(f"{self._label(name)}: {reason}" for name, reason in problems.items()))
        self.ssl_context()  # reads the certificate files once, so a bad one is reported now

    def _problems(self) -> dict[str, str]:
        """Every field at fault, by field name, with what is wrong."""
        checks = {
            "host": (bool(self.host.strip()), "must not be empty"),
            "port": (self.port is None or 1 <= self.port <= 65535, f"must be 1..65535, not {self.port}"),
            "prefix": (_valid_prefix(self.prefix),
                       f"must be a topic without wildcards or leading/trailing '/', not {self.prefix!r}"),
            "discovery_prefix": (_valid_prefix(self.discovery_prefix),
                                 f"must be a topic without wildcards, not {self.discovery_prefix!r}"),
            "username": (self.password is None or self.username is not None, "is needed with a password"),
            "certfile": (self.keyfile is None or self.certfile is not None, "is needed with a keyfile"),
            "keepalive": (self.keepalive >= 5, f"must be at least 5 s, not {self.keepalive}"),
            "alarm_qos": (self.alarm_qos in (1, 2), f"must be 1 or 2, not {self.alarm_qos}"),
            "reconnect_min_s": (0 < self.reconnect_min_s <= self.reconnect_max_s,
                                f"must be > 0 and <= reconnect_max_s ({self.reconnect_max_s}), "
                                f"not {self.reconnect_min_s}"),
        }
        problems = {name: reason for name, (ok, reason) in checks.items() if not ok}
        for name in ("ca_file", "certfile", "keyfile"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                problems.setdefault(name, f"no such file {path}")
        return problems

    def _label(self, name: str) -> str:
        return self.names.get(name, name)

    @property
    def resolved_port(self) -> int:
        return self.port if self.port is not None else (8883 if self.tls else 1883)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for the connection, or None for plain TCP."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{self._label('ca_file')}: not a PEM CA certificate file {self.ca_file} ({exc})") \
                from None
        if self.certfile:
            try:
                context.load_cert_chain(self.certfile, self.keyfile)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"{self._label('certfile')}: cannot load the client certificate {self.certfile}"
                                  f"{' with key ' + self.keyfile if self.keyfile else ''} ({exc})") from None
        context.check_hostname = not self.tls_insecure
        return context

    @classmethod
    def from_table(cls, table: Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> MqttSettings:
        """Settings from the `[mqtt]` TOML table; TLS is on when a `[mqtt.tls]` table is present.

        Relative certificate paths are taken relative to `base_dir` (the config file's folder)."""
        flat: dict[str, Any] = {}
        problems: dict[str, str] = {}  # TOML name -> what is wrong: every one is reported, not the first
        for key, value in table.items():
            if key == "tls":
                if not isinstance(value, Mapping):
                    problems["mqtt.tls"] = "must be a table ([mqtt.tls])"
                    continue
                flat["tls"] = True
                for tls_key, tls_value in value.items():
                    if tls_key in _TLS_KEYS:
                        flat[_TLS_KEYS[tls_key]] = tls_value
                    else:
                        problems[f"mqtt.tls.{tls_key}"] = f"unknown key (known: {', '.join(_TLS_KEYS)})"
            elif key in TOML_NAMES and key not in _TLS_KEYS.values():
                flat[key] = value
            else:
                known = sorted(k for k in TOML_NAMES if k not in _TLS_KEYS.values())
                problems[f"mqtt.{key}"] = f"unknown key (known: {', '.join(known)})"
        hints = {f.name: f.type for f in fields(cls)}
        for name, value in list(flat.items()):
            wrong = _type_problem(hints[name], value)
            if wrong:
                problems[TOML_NAMES[name]] = wrong
                del flat[name]
            elif name in ("ca_file", "certfile", "keyfile") and base_dir is not None:
                flat[name] = str(pathlib.Path(base_dir, value))
        try:
            settings = cls(**flat)
        except ConfigError as exc:  # the values' own checks, when their types were right
            if not problems:
                raise
            for line in str(exc).splitlines():
                name, _, reason = line.partition(": ")
                problems.setdefault(name, reason)
        if problems:
            raise ConfigError("\n".join(f"{name}: {reason}" for name, reason in problems.items()))
        return settings


def _type_problem(hint: str, value: Any) -> str | None:
    """What is wrong with a TOML value of the wrong type, or None (bool is not taken for a number)."""
    if "bool" in hint:
        ok, wanted = isinstance(value, bool), "true or false"
    elif "int" in hint:
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif "float" in hint:
        ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        ok, wanted = isinstance(value, str), "a string"
    return None if ok else f"must be {wanted}, not {value!r}"


def _valid_prefix(prefix: str) -> bool:
    return bool(prefix) and not re.search(r"[+#\x00]", prefix) and not prefix.startswith("/") \
        and not prefix.endswith("/")


@dataclass(frozen=True)
class Topics:
    """The topics of one machine (or of all machines with machine "+", for subscribers)."""

    prefix: str
    machine: str

    def _topic(self, leaf: str) -> str:
        return f"{self.prefix}/{self.machine}/{leaf}"

    @property
    def status(self) -> str:
        return self._topic("status")

    @property
    def state(self) -> str:
        return self._topic("state")

    @property
    def alarm(self) -> str:
        return self._topic("alarm")

    @property
    def score(self) -> str:
        return self._topic("score")

    # The evidence of the last alarm (JSON, PNG, WAV; retained) and the operator's commands to the board.
    evidence = property(lambda self: self._topic("evidence"))
    evidence_image = property(lambda self: self._topic("evidence/image"))
    evidence_audio = property(lambda self: self._topic("evidence/audio"))
    command = property(lambda self: self._topic("command"))


def make_client(settings: MqttSettings, client_id: str, clean_session: bool = True,
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


def utc_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. 2026-11-25T12:33:44.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json(payload: Mapping[str, Any]) -> bytes:
    """Compact JSON; numpy scalars and arrays become plain numbers and lists."""
    def plain(value: Any) -> Any:
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return json.dumps(payload, default=plain, separators=(",", ":"), allow_nan=False).encode()


def describe_detector_scores(scores: Mapping[str, Any]) -> str:
    """A message's per-detector window readings as one short phrase for a person ("cnn-gmm80 0.41, ...")."""
    return ", ".join(f"{name} {value:.3g}" if isinstance(value, (int, float)) else f"{name} ?"
                     for name, value in scores.items())


def node_id(machine: str) -> str:
    """The machine name reduced to what Home Assistant accepts in ids and discovery topics."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", machine)


def discovery_messages(settings: MqttSettings, topics: Topics, device_info: Mapping[str, Any] | None = None,
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


def _drift_entities(settings: MqttSettings, topics: Topics, node: str, common: dict) -> dict[str, dict[str, Any]]:
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
            "value_template": "{{ value_json.drift.median if value_json.drift is defined else none }}",
            "json_attributes_topic": topics.score, "json_attributes_template": "{{ value_json.drift | tojson }}",
            **common,
        },
    }


def _evidence_entities(settings: MqttSettings, topics: Topics, node: str, common: dict) -> dict[str, dict[str, Any]]:
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

    def __init__(self, settings: MqttSettings, outbox: Outbox, machine: str,
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
        self._client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
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
                 self.client_id, "on" if self.settings.tls else "off",
                 self.settings.username or "none", self.pending_alarms())
        self._client.connect_async(self.settings.host, self.settings.resolved_port, self.settings.keepalive)
        self._client.loop_start()

    def publish_alarm(self, event: Mapping[str, Any]) -> str:
        """Persist an alarm event, then send it (QoS 1) on <prefix>/<machine>/alarm; returns its id.

        The event gets an `id` (uuid4), `time` (ISO 8601 UTC) and `machine` if it lacks them."""
        event = dict(event)
        event.setdefault("id", uuid.uuid4().hex)
        event.setdefault("time", utc_now())
        event.setdefault("machine", self.topics.machine)
        if not isinstance(event["id"], str) or not event["id"]:
            raise ValueError(f"an alarm id must be a non-empty string, not {event['id']!r}")
        self._outbox.add(event["id"], self.topics.alarm, to_json(event))
        self._events.put(("wake", 0))
        log.info("alarm %s (%s) queued for %s, %d pending", event["id"], event.get("kind", "?"),
                 self.topics.alarm, self.pending_alarms())
        return event["id"]

    def publish_state(self, state: str, detail: str | None = None, machine_alarm: bool | None = None,
                      extra: Mapping[str, Any] | None = None) -> None:
        """Retain the machine's state (normal/anomaly/sensor_fault); the latest is re-sent on every connect.
        `machine_alarm`: whether the machine alarm is raised, which a sensor fault hides from `state` but does not
        clear (by default, state == "anomaly"). `extra`: more fields (the drift advice)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, not {state!r}")
        alarm = state == "anomaly" if machine_alarm is None else machine_alarm
        payload = to_json({"state": state, "detail": detail, "machine_alarm": alarm, **(extra or {}),
                           "time": utc_now()})
        with self._state_lock:
            self._state_payload = payload
        if self.connected:
            self._client.publish(self.topics.state, payload, qos=1, retain=True)

    def publish_score(self, payload: Mapping[str, Any]) -> None:
        """Send score telemetry (must carry `window_score`) at QoS 0; skipped while offline."""
        if "window_score" not in payload:
            raise ValueError("a score payload needs a 'window_score' field")
        if self.connected:
            self._client.publish(self.topics.score, to_json({"time": utc_now(), **payload}), qos=0)

    def publish_evidence(self, evidence: Mapping[str, Any], picture: bytes | None, audio: bytes | None) -> None:
        """Retain the last alarm's evidence object, picture and (when given) WAV at QoS 1; kept for the next
        connection while offline (only the latest of each)."""
        payloads = {self.topics.evidence: to_json({"time": utc_now(), **evidence})}
        if picture is not None:
            payloads[self.topics.evidence_image] = picture
        if audio is not None:
            payloads[self.topics.evidence_audio] = audio
        with self._state_lock:
            if not self.connected:
                self._unsent_evidence.update(payloads)
                return
        for topic, payload in payloads.items():
            self._client.publish(topic, payload, qos=1, retain=True)

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
            client.publish(self.topics.state, state, qos=1, retain=True)
        for topic, payload in evidence.items():
            client.publish(topic, payload, qos=1, retain=True)
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
