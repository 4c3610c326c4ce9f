"""`humwatch listen`: print one machine's (or every machine's) alarms, state changes and online status as they arrive.

One line per message, readable by a technician, or JSON lines (`--json`) for scripts. Retained messages (the last
known state and status) are shown first and marked as such.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from humwatch.agent.errors import ConfigError, HumwatchError
from humwatch.agent.transport.publish import MqttSettings, Topics, describe_detector_scores, make_client, utc_now

# While `listen` reconnects, the broker keeps its session (and the alarms that arrive) this long: an MQTT 5 session
# expiry. On its way out, listen sets it to 0, so a finished listener leaves nothing on the broker.
SESSION_EXPIRY_S = 300
# How settings errors name the fields here: the command-line flags.
OPTION_NAMES = {"host": "--host", "port": "--port", "prefix": "--prefix", "username": "--username",
                "password": "--password", "ca_file": "--ca-file"}


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
    settings = MqttSettings(host=args.host, port=args.port, prefix=args.prefix, username=args.username,
                            password=args.password, ca_file=args.ca_file, discovery=False, names=OPTION_NAMES)
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


def render(topic: str, payload: bytes, retained: bool, as_json: bool) -> str:
    """One line for one message on a <prefix>/<machine>/<status|state|alarm> topic."""
    parts = topic.split("/")
    machine, what = parts[-2], parts[-1]
    text = payload.decode(errors="replace")
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    if as_json:
        return json.dumps({"topic": topic, "machine": machine, "type": what, "retained": retained, "payload": body})
    if not isinstance(body, dict):
        line = f"{utc_now()} {machine} {what} {text}"
    elif what == "alarm":
        line = " ".join([str(body.get("time", "?")), machine, "ALARM", *_alarm_words(body)])
    else:
        line = f"{body.get('time', '?')} {machine} {what} {body.get('state', text)}"
        line += f" ({body['detail']})" if body.get("detail") else ""
    return line + (" [retained]" if retained else "")


def _alarm_words(event: dict) -> list[str]:
    words = [str(event.get("kind", "?")), str(event.get("event", ""))]
    if isinstance(event.get("window_score"), (int, float)):
        words.append(f"score {event['window_score']:.4g}")
    if isinstance(event.get("threshold"), (int, float)):
        words.append(f"threshold {event['threshold']:.4g}")
    if isinstance(event.get("detector_scores"), dict) and event["detector_scores"]:
        words.append(f"({describe_detector_scores(event['detector_scores'])})")
    if event.get("reason"):
        words.append(f"- {event['reason']}")
    words.append(f"(id {event.get('id', '?')})")
    return [w for w in words if w]
