"""A real mosquitto broker on 127.0.0.1 for tests, that a test can stop and start again on the same port.

Persistence is on (in the test's tmp dir) and a stop is a clean SIGTERM, so retained messages and the QoS 1 messages
queued for persistent sessions survive a restart, as they would on a plant's broker.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest

READY_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    """One mosquitto process with a generated config; `stop()` and `start()` keep host, port and data."""

    def __init__(self, directory: pathlib.Path, extra_config: Iterable[str] = (), anonymous: bool = True) -> None:
        if shutil.which("mosquitto") is None:
            pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "mosquitto.log"
        self.config_path = self.dir / "mosquitto.conf"
        self.config_path.write_text("\n".join([
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.log_path}",
            "log_type all",
            "user root" if os.geteuid() == 0 else "",
            *extra_config,
        ]) + "\n")
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        assert self._process is None, "the broker is already running"
        self._process = subprocess.Popen(["mosquitto", "-c", str(self.config_path)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode(errors="replace")
                self._process = None
                pytest.fail(f"mosquitto exited at start: {error} {self.log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"mosquitto did not listen on {self.host}:{self.port} within {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        """A clean shutdown: mosquitto writes its persistence file, clients see the connection drop."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stderr.close()
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait until the broker's log shows `pattern`: what the broker itself has seen (a client gone, a packet)."""
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern, self.log())) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not log {pattern!r} within {timeout} s:\n{self.log()}")
            time.sleep(0.02)
        return found


class Link:
    """A TCP relay to the broker that a test can black-hole or cut, like a failing network between agent and broker."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self._server = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._server.getsockname()
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._blackholed = threading.Event()
        self.dropped_bytes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection((self.broker.host, self.broker.port))
            except OSError:
                return
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._relay, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(upstream, client, False), daemon=True).start()

    def _relay(self, source: socket.socket, target: socket.socket, outbound: bool) -> None:
        try:
            while data := source.recv(65536):
                if outbound and self._blackholed.is_set():
                    self.dropped_bytes += len(data)
                    continue
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                _shut(sock)

    def blackhole(self) -> None:
        """From now on, what clients send is silently lost (connections stay open)."""
        self._blackholed.set()

    def cut(self) -> None:
        """Drop every connection through the link; new ones work normally again."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._blackholed.clear()
        for sock in connections:
            _shut(sock)

    def close(self) -> None:
        self._server.close()
        self.cut()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread
    except OSError:
        pass
    sock.close()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    def json(self) -> dict:
        return json.loads(self.payload)

    @property
    def text(self) -> str:
        return self.payload.decode()


class Subscriber:
    """A paho client that collects messages on some topics; its session is persistent (QoS 1 queued while away)."""

    def __init__(self, broker: Mosquitto, topics: Iterable[str], client_id: str | None = None) -> None:
        self.topics = list(topics)
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"sub-{uuid.uuid4().hex}",
                                  clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(READY_TIMEOUT_S):
            pytest.fail("the test subscriber could not subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(message.topic, message.payload, bool(message.retain), message.qos))
            self._cond.notify_all()

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, done: Callable[[list[Received]], bool], timeout: float = 15.0) -> list[Received]:
        """Wait until `done(messages)` holds; fail with what arrived if it does not within `timeout`."""
        with self._cond:
            if not self._cond.wait_for(lambda: done(list(self.messages)), timeout):
                pytest.fail(f"expected messages did not arrive within {timeout} s; got "
                            f"{[(m.topic, m.payload[:80]) for m in self.messages]}")
            return list(self.messages)

    def wait_on(self, topic: str, count: int = 1, timeout: float = 15.0) -> list[Received]:
        """The messages on `topic` once at least `count` have arrived."""
        self.wait_for(lambda msgs: sum(m.topic == topic for m in msgs) >= count, timeout)
        return self.on(topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mosquitto(tmp_path_factory):
    """A running broker on a free port; tests may stop() and start() it."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def subscribe(mosquitto):
    """subscribe(topics) -> Subscriber on the `mosquitto` broker; closed after the test."""
    subscribers: list[Subscriber] = []

    def make(topics: Iterable[str]) -> Subscriber:
        subscriber = Subscriber(mosquitto, topics)
        subscribers.append(subscriber)
        return subscriber

    yield make
    for subscriber in subscribers:
        subscriber.close()


@pytest.fixture
def link(mosquitto):
    """A relay to `mosquitto` that the test can black-hole and cut."""
    relay = Link(mosquitto)
    yield relay
    relay.close()


@dataclass(frozen=True)
class TlsFiles:
    ca: pathlib.Path
    ca_key: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path


def make_tls_files(directory: pathlib.Path) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "ca.key", directory / "server.pem", directory / "server.key")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=humwatch test CA",
            "-keyout", str(files.ca_key), "-out", str(files.ca))
    csr = directory / "server.csr"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(files.server_key), "-out", str(csr))
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(files.ca), "-CAkey", str(files.ca_key), "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", str(files.server_cert))
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def mosquitto_tls(tmp_path_factory, tls_files):
    """A broker that speaks only TLS (server certificate for 127.0.0.1 signed by `tls_files.ca`)."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto-tls"), extra_config=[
        f"cafile {tls_files.ca}", f"certfile {tls_files.server_cert}", f"keyfile {tls_files.server_key}",
    ])
    broker.start()
    yield broker
    broker.stop()
