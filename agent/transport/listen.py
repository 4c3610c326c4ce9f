"""`humwatch listen`: print one machine's (or every machine's) alarms, state changes and online status as they arrive.

One line per message, readable by a technician, or JSON lines (`--json`) for scripts. Retained messages (the last
known state and status) are shown first and marked as such.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from humwatch.agent.config import MqttConfig, TlsConfig
from humwatch.agent.errors import ConfigError, HumwatchError, MessageError
from humwatch.agent.transport.messages import AlarmMessage, StateMessage, utc_now
from humwatch.agent.transport.publish import Topics, describe_detector_scores, make_client
from humwatch.agent.typed import Problem, check

# While `listen` reconnects, the broker keeps its session (and the alarms that arrive) this long: an MQTT 5 session
# expiry. On its way out, listen sets it to 0, so a finished listener leaves nothing on the broker.
SESSION_EXPIRY_S = 300
# How settings errors name the fields here: the command-line flags.
OPTION_NAMES = {"host": "--host", "port": "--port", "prefix": "--prefix", "username": "--username",
                "password": "--password", "tls.ca_file": "--ca-file"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="localhost", help="MQTT broker host (default: localhost)")
    parser.add_argument("--port", type=int, help="broker port (default: 8883 with --ca-file, else 1883)")
    parser.add_argument("--username", help="broker user name")
    parser.add_argument("--password", default=os.environ.get("HUMWATCH_MQTT_PASSWORD"),
                        help="broker password (default: $HUMWATCH_MQTT_PASSWORD, which keeps it out of `ps`)")
    parser.add_argument("--ca-file", help="CA certificate (PEM) of the broker: connect with TLS")
    parser.add_argument("--prefix", default="humwatch", help="topic prefix (default: humwatch)")
    parser.add_argument("--machine", default="+", help="machine name, or + for every machine (default: +)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    parser.add_argument("--count", type=int, default=0, metavar="N", help="exit after N messages (default: never)")


def run(args: argparse.Namespace) -> int:
    if args.machine != "+" and (not args.machine or re.search(r"[/+#]", args.machine)):
        raise ConfigError(f"--machine: must be a machine name or +, not {args.machine!r}")
    settings = settings_from(args)
    topics = Topics(settings.prefix, args.machine)
    client = make_client(settings, f"humwatch-listen-{uuid.uuid4().hex[:12]}", protocol=mqtt.MQTTv5)
    where = f"{settings.host}:{settings.resolved_port}"
    outcome: dict[str, Any] = {"refused": None, "printed": 0}
    leaving = Properties(PacketTypes.DISCONNECT)
    leaving.SessionExpiryInterval = 0

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            outcome["refused"] = str(reason_code)
            client.disconnect()
            return
        if not flags.session_present:  # a resumed session keeps its subscriptions (and the retained are not re-sent)
            client.subscribe([(topics.status, 1), (topics.state, 1), (topics.alarm, 1)])

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        print(f"listening on {where} to {topics.prefix}/{topics.machine}/(status|state|alarm)", file=sys.stderr,
              flush=True)

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        print(render(message.topic, message.payload, bool(message.retain), args.json), flush=True)
        outcome["printed"] += 1
        if outcome["printed"] == args.count:
            client.disconnect(properties=leaving)

    def on_disconnect(client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        finished = args.count and outcome["printed"] >= args.count
        if outcome["refused"] is None and not finished:
            print(f"lost the connection to {where} ({reason_code}); reconnecting", file=sys.stderr)

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_message, client.on_disconnect = on_message, on_disconnect
    try:
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = SESSION_EXPIRY_S
        client.connect(settings.host, settings.resolved_port, keepalive=30,
                       clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=session)
    except OSError as exc:
        raise HumwatchError(f"cannot reach the MQTT broker at {where}: {exc.strerror or exc}") from None
    try:
        client.loop_forever()
    except KeyboardInterrupt:
        client.disconnect(properties=leaving)
        raise
    if outcome["refused"] is not None:
        raise HumwatchError(f"the MQTT broker at {where} refused the connection: {outcome['refused']}")
    return 0


def settings_from(args: argparse.Namespace) -> MqttConfig:
    """The broker settings the options give, checked as the agent checks its `[mqtt]` table; problems are named by
    the options."""
    tls = TlsConfig(ca_file=pathlib.Path(args.ca_file)) if args.ca_file else None
    settings = MqttConfig(host=args.host, port=args.port, prefix=args.prefix, username=args.username,
                          password=args.password, tls=tls, discovery=False)
    problems = check(settings)
    if problems:
        raise ConfigError([Problem(OPTION_NAMES.get(p.field, p.field), p.message) for p in problems])
    return settings


def render(topic: str, payload: bytes | bytearray, retained: bool, as_json: bool) -> str:
    """One line for one message on a <prefix>/<machine>/<status|state|alarm> topic; a message that is not what its
    topic promises is shown as it came, with what is wrong."""
    parts = topic.split("/")
    machine, what = parts[-2], parts[-1]
    text = payload.decode(errors="replace")
    if as_json:
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return json.dumps({"topic": topic, "machine": machine, "type": what, "retained": retained, "payload": body})
    try:
        if what == "alarm":
            alarm = AlarmMessage.from_json(payload)
            line = " ".join([alarm.time, machine, "ALARM", *_alarm_words(alarm)])
        elif what == "state":
            state = StateMessage.from_json(payload)
            line = f"{state.time} {machine} state {state.state}" + (f" ({state.detail})" if state.detail else "")
        else:
            line = f"{utc_now()} {machine} {what} {text}"
    except MessageError as exc:
        line = f"{utc_now()} {machine} {what} {text} (not a valid message: {'; '.join(map(str, exc.problems)) or exc})"
    return line + (" [retained]" if retained else "")


def _alarm_words(alarm: AlarmMessage) -> list[str]:
    words: list[str] = [alarm.kind, alarm.event]
    if alarm.window_score is not None:
        words.append(f"score {alarm.window_score:.4g}")
    words.append(f"threshold {alarm.threshold:.4g}")
    if alarm.detector_scores:
        words.append(f"({describe_detector_scores(alarm.detector_scores)})")
    return [*words, f"- {alarm.reason}", f"(id {alarm.id})"]
