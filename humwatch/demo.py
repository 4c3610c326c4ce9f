"""`humwatch demo`: the whole product on one synthetic pump, with no hardware.

It synthesises a healthy pump (evaluation.synth: synthetic sound, not a recording), calibrates on it with the
converted SqueezeNet 1.1 model, starts a local mosquitto, runs the real agent on a stream in which a bearing fault
develops, and prints the alarm as an MQTT subscriber receives it, with the time from fault onset to alarm.
"""
from __future__ import annotations

import argparse
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import paho.mqtt.client as mqtt
from scipy.io import wavfile

from humwatch.agent.config import parse_config
from humwatch.agent.contract import SAMPLE_RATE
from humwatch.agent.durable import refuse_unwritable
from humwatch.agent.errors import HumwatchError
from humwatch.agent.paths import default_model
from humwatch.agent.service.run import Agent
from humwatch.agent.transport.messages import AlarmMessage
from humwatch.calibration.calibrate import calibrate
from humwatch.calibration.collect import split_blocks
from humwatch.evaluation.synth import Anomaly, synth_clip

log = logging.getLogger(__name__)

MACHINE = "demo-pump"
CALIBRATION_CLIPS = 30  # 5 minutes of healthy pump: one 10 s block in four is held out for the threshold
NORMAL_BEFORE_FAULT_S = 60
FAULT_STAGES = (0.5, 0.75, 1.0)  # bearing damage growing, 20 s at each severity
FAULT_STAGE_S = 20
BROKER_WAIT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=pathlib.Path, default=None,
                        help="feature extractor (default: the converted SqueezeNet 1.1 int8 model)")
    parser.add_argument("--broker", metavar="HOST:PORT", default=None,
                        help="use this MQTT broker instead of starting a local mosquitto")
    parser.add_argument("--workdir", type=pathlib.Path, default=None,
                        help="keep the demo's audio, bundle and outbox here (default: a temporary folder)")
    parser.add_argument("--realtime", action="store_true",
                        help="replay the stream at its real pace (about 2 minutes) instead of as fast as possible")


def run(args: argparse.Namespace) -> int:
    model = args.model or default_model("int8")
    if not model.exists():
        raise HumwatchError(f"{model}: no feature extractor; convert one first with "
                            "`humwatch convert --arch squeezenet1_1` (scripts/setup does this)")
    # Everything that can fail is checked before the synthesis and the calibration, not after them.
    broker = _reachable_broker(args.broker) if args.broker else None
    if broker is None and shutil.which("mosquitto") is None:
        raise HumwatchError("mosquitto is not installed: `sudo apt-get install mosquitto` "
                            "(or point the demo at a broker with --broker HOST:PORT)")
    if args.workdir:
        refuse_unwritable(f"--workdir {args.workdir}", args.workdir)
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _demo(model, args.workdir, broker, args.realtime)
    with tempfile.TemporaryDirectory(prefix="humwatch-demo-") as workdir:
        return _demo(model, pathlib.Path(workdir), broker, args.realtime)


def _reachable_broker(address: str) -> tuple[str, int]:
    """--broker HOST:PORT, parsed and tried once."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise HumwatchError(f"--broker {address!r}: expected HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise HumwatchError(f"--broker {address}: cannot connect ({exc.strerror or exc})") from None
    return host, int(port)


def _demo(model: pathlib.Path, workdir: pathlib.Path, broker: tuple[str, int] | None, realtime: bool) -> int:
    say(f"humwatch demo: a synthetic pump, model {model.name}, working folder {workdir}")
    say(f"1/4 synthesising {CALIBRATION_CLIPS * 10 / 60:.0f} minutes of a healthy pump (synthetic sound)")
    blocks = [block for i in range(CALIBRATION_CLIPS)
              for block in split_blocks(f"healthy pump clip {i}", synth_clip("pump", 0, i)[0])]
    say("2/4 calibrating: front end, SqueezeNet features, the pipeline chosen for this pump by synthetic faults, "
        "threshold for one false alarm a week")
    result = calibrate(blocks, model, workdir / "bundle", machine=MACHINE, report_dir=workdir / "report")
    say(f"    {result.selection.summary_lines()[0]}")
    say(f"    threshold {result.threshold.high:.4g} (clear below {result.threshold.low:.4g}); "
        f"report in {workdir / 'report'}")
    stream = workdir / "stream.wav"
    onset_s = _write_stream(stream)
    with _broker(broker, workdir) as (host, port):
        say(f"3/4 MQTT broker at {host}:{port}; subscribing to humwatch/{MACHINE}/#")
        with _Subscriber(host, port, f"humwatch/{MACHINE}/#") as subscriber:
            say(f"4/4 running the agent on {_mmss(_duration(stream))} of pump sound; "
                f"a bearing fault starts at {_mmss(onset_s)} and grows")
            config = parse_config({
                "machine": {"name": MACHINE},
                "model": {"bundle": str(workdir / "bundle")},
                "audio": {"source": "file", "file": str(stream), "realtime": realtime},
                "mqtt": {"host": host, "port": port, "discovery": False},
                "state": {"dir": str(workdir / "state")},
            }, workdir)
            Agent(config).run()
            alarms = subscriber.wait_for_alarm(BROKER_WAIT_S)
    raised = [a for a in alarms if a.kind == "anomaly" and a.event == "raised"]
    if not raised:
        say("no alarm arrived: the demo failed (see the log above)")
        return 1
    first = raised[0]
    delay = first.audio_time - onset_s
    say(f"alarm after {delay:.1f} s of faulty sound (one window is 10 s; alarms need "
        f"{config.alarm.raise_after} window scores in a row above the threshold)")
    early = [a for a in raised if a.audio_time < onset_s]
    if early:
        say(f"note: {len(early)} alarm(s) came before the fault began (false alarms)")
    return 0


def _write_stream(path: pathlib.Path) -> float:
    """A continuous stream: healthy pump, then the same pump with growing bearing damage. Returns the onset (s)."""
    healthy, _ = synth_clip("pump", 0, 10_000, seconds=NORMAL_BEFORE_FAULT_S)
    faulty = [synth_clip("pump", 0, 10_001 + i, abnormal=True, seconds=FAULT_STAGE_S,
                         anomaly=Anomaly("bearing", severity))[0] for i, severity in enumerate(FAULT_STAGES)]
    samples = np.concatenate([healthy, *faulty])
    wavfile.write(path, SAMPLE_RATE, (samples * 32767).astype(np.int16))
    return NORMAL_BEFORE_FAULT_S


def _duration(path: pathlib.Path) -> float:
    rate, data = wavfile.read(path, mmap=True)
    return len(data) / rate


class _Subscriber:
    """Prints every alarm and state change as it arrives, and keeps the alarms."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.alarms: list[AlarmMessage] = []
        self._arrived = threading.Event()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"humwatch-demo-{os.getpid()}")
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def __enter__(self) -> "_Subscriber":
        self._client.connect(self._host, self._port)
        self._client.loop_start()
        if not self._subscribed.wait(BROKER_WAIT_S):
            raise HumwatchError(f"could not subscribe at {self._host}:{self._port}")
        return self

    def __exit__(self, *exc) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        text = message.payload.decode(errors="replace")
        if message.topic.endswith("/alarm"):
            self.alarms.append(AlarmMessage.from_json(message.payload))
            say(f"    subscriber got {message.topic}:\n      {text}")
            self._arrived.set()
        elif message.topic.endswith("/state"):
            say(f"    subscriber got {message.topic}: {text}")

    def wait_for_alarm(self, timeout: float) -> list[AlarmMessage]:
        self._arrived.wait(timeout)
        time.sleep(0.5)  # let a clear that follows the raise arrive too
        return self.alarms


@contextmanager
def _broker(address: tuple[str, int] | None, workdir: pathlib.Path) -> Iterator[tuple[str, int]]:
    if address:
        yield address
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    + ("user root\n" if os.geteuid() == 0 else ""))
    process = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        _wait_listening(process, port)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(10)


def _wait_listening(process: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + BROKER_WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HumwatchError(f"mosquitto exited at start: {process.stderr.read().decode(errors='replace').strip()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise HumwatchError(f"mosquitto did not listen on 127.0.0.1:{port} within {BROKER_WAIT_S:.0f} s")


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def say(line: str) -> None:
    """The demo talks to the person running it on stdout; the agent's own log goes to stderr as usual."""
    print(line, flush=True)
