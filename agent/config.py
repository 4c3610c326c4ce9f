"""The agent's configuration: one TOML file, checked completely at start into frozen dataclasses.

Every section is a dataclass whose fields carry their type, default, check and a one-line description, so the
checker, the generated reference (`docs/configuration.md`) and the error messages all read from one place. Unknown
keys are refused (a typo must not silently fall back to a default), and every problem is reported at once, one line
each, with its dotted name. Also the `humwatch check-config FILE` subcommand.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import ssl
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import tomllib

from humwatch.agent.errors import ConfigError, ModelError
from humwatch.agent.paths import data_dir
from humwatch.agent.typed import (
    Problem,
    describe,
    doc_of,
    documented,
    inner_dataclass,
    is_required,
    read,
    shown_default,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # safe as one MQTT topic level and a file name


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be at least {low}"


def _between(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _existing_file(path: pathlib.Path) -> str | None:
    return None if path.is_file() else f"no such file {path}"


def _topic(v: str) -> bool:
    return bool(v) and not re.search(r"[+#\x00]", v) and not v.startswith("/") and not v.endswith("/")


@dataclass(frozen=True)
class MachineConfig:
    """The machine this agent listens to."""

    name: str = documented(doc="the machine's name, used in MQTT topics (letters, digits, '_', '-', '.')",
                           check=lambda v: None if _NAME.match(v) else "must be 1-64 letters, digits, '_', '-' or '.'")


@dataclass(frozen=True)
class AudioConfig:
    """Where the sound comes from."""

    source: Literal["device", "file"] = documented("device", doc="'device' (a microphone) or 'file' (a WAV replay)")
    device: int | str | None = documented(None, doc="PortAudio input device: index, or part of its name (e.g. "
                                                    "'USB'); unset: the system's default input")
    rate: int = documented(16000, doc="rate the device is opened at (Hz); other rates are resampled to 16 kHz",
                           check=_between(8000, 192000))
    channels: int = documented(1, doc="channels the device is opened with", check=_between(1, 32))
    channel: int | Literal["mean"] = documented(0, doc="channel analysed (0-based index), or 'mean' of all channels")
    file: pathlib.Path | None = documented(None, doc="WAV file replayed when source = 'file' (required then)")
    realtime: bool = documented(True, doc="replay the file at its real pace (false: as fast as the analysis goes)")

    def problems(self) -> list[Problem]:
        found = []
        if isinstance(self.channel, int) and not 0 <= self.channel < self.channels:
            found.append(Problem("channel", f"must be below channels ({self.channels}) or 'mean'"))
        if self.source == "file" and self.file is None:
            found.append(Problem("file", "required when source = 'file'"))
        elif self.source == "file" and self.file is not None and not self.file.is_file():
            found.append(Problem("file", f"no such file {self.file}"))
        return found


@dataclass(frozen=True)
class ModelConfig:
    """The calibrated model the agent judges with."""

    bundle: pathlib.Path = documented(doc="calibrated model bundle directory (written by `humwatch calibrate`)")
    threads: int = documented(1, doc="TFLite interpreter threads", check=_between(1, 16))


@dataclass(frozen=True)
class AlarmConfig:
    """When the machine alarm is raised and cleared, and how often the score is sent."""

    raise_after: int = documented(3, doc="consecutive window scores above the high threshold that raise an alarm",
                                  check=_at_least(1))
    clear_after: int = documented(10, doc="consecutive window scores below the low threshold that clear it",
                                  check=_at_least(1))
    score_interval: float = documented(10.0, doc="seconds of audio between score messages (0: none)",
                                       check=_at_least(0))


@dataclass(frozen=True)
class SensorConfig:
    """When the microphone, not the machine, is at fault: a sensor fault instead of a machine alarm."""

    silence_dbfs: float = documented(-70.0, doc="level (dBFS RMS) below which the input counts as silent",
                                     check=_between(-150, 0))
    silence_seconds: float = documented(5.0, doc="silence lasting this long is a sensor fault (dead or unplugged "
                                                 "mic)", check=_positive)
    clipping_fraction: float = documented(0.01, doc="share of samples at full scale that counts as clipping",
                                          check=lambda v: None if 0 < v <= 1 else "must be above 0 and at most 1")
    clipping_seconds: float = documented(2.0, doc="span of audio over which that share is measured", check=_positive)
    stall_seconds: float = documented(3.0, doc="no audio for this long is a sensor fault (capture stalled)",
                                      check=_positive)


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the broker: on when this table is present (an empty one trusts the system's CA store)."""

    ca_file: pathlib.Path | None = documented(None, doc="CA certificate (PEM) that signed the broker's certificate; "
                                                        "unset: the system's CA store", check=_existing_file)
    certfile: pathlib.Path | None = documented(None, doc="client certificate (PEM), when the broker wants one",
                                               check=_existing_file)
    keyfile: pathlib.Path | None = documented(None, doc="the client certificate's key, if not inside certfile",
                                              check=_existing_file)
    insecure: bool = documented(False, doc="skip the broker host name check (the chain is still verified); only for "
                                           "a broker reached by an address its certificate lacks")

    def problems(self) -> list[Problem]:
        found = [] if self.keyfile is None or self.certfile is not None else \
            [Problem("certfile", "is needed with a keyfile")]
        try:
            self.context()  # reads the certificate files once, so a bad one is reported at start
        except ConfigError as exc:
            found += exc.problems
        return found

    def context(self) -> ssl.SSLContext:
        """The TLS context; a ConfigError names the file that cannot be used."""
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError([Problem("ca_file", f"not a PEM CA certificate file {self.ca_file} ({exc})")]) from None
        if self.certfile:
            try:
                context.load_cert_chain(self.certfile, self.keyfile)
            except (ssl.SSLError, OSError) as exc:
                with_key = f" with key {self.keyfile}" if self.keyfile else ""
                raise ConfigError([Problem("certfile", f"cannot load the client certificate {self.certfile}"
                                                       f"{with_key} ({exc})")]) from None
        context.check_hostname = not self.insecure
        return context


@dataclass(frozen=True)
class MqttConfig:
    """The broker that receives alarms, state and score (topics and messages: docs/mqtt.md)."""

    host: str = documented("localhost", doc="broker host name or address",
                           check=lambda v: None if v.strip() else "must not be empty")
    port: int | None = documented(None, doc="broker port", shown="unset: 1883, or 8883 with TLS",
                                  check=lambda v: None if 1 <= v <= 65535 else f"must be 1..65535, not {v}")
    prefix: str = documented("humwatch", doc="first topic level (may contain '/', no wildcards)",
                             check=lambda v: None if _topic(v) else
                             f"must be a topic without wildcards or leading/trailing '/', not {v!r}")
    username: str | None = documented(None, doc="broker login")
    password: str | None = documented(None, repr=False, doc="broker password; never logged or shown (keep the "
                                                            "config file mode 0640)")
    tls: TlsConfig | None = documented(None, doc="TLS settings: the `[mqtt.tls]` table; unset: plain TCP")
    keepalive: int = documented(60, doc="seconds between MQTT pings; the broker declares the agent dead (last will) "
                                        "after 1.5 times this",
                                check=lambda v: None if v >= 5 else f"must be at least 5 s, not {v}")
    client_id: str | None = documented(None, doc="MQTT client id (clean session: the outbox, not the broker, holds "
                                                 "pending alarms)", shown="unset: `humwatch-<machine>-<hostname>`")
    alarm_qos: int = documented(1, doc="QoS of alarm messages, 1 or 2; status and state use 1, score 0",
                                check=lambda v: None if v in (1, 2) else f"must be 1 or 2, not {v}")
    discovery: bool = documented(True, doc="publish Home Assistant discovery configs")
    discovery_prefix: str = documented("homeassistant", doc="Home Assistant's discovery topic prefix",
                                       check=lambda v: None if _topic(v) else
                                       f"must be a topic without wildcards, not {v!r}")
    reconnect_min_s: float = documented(1.0, doc="first wait before reconnecting (s); doubles up to reconnect_max_s")
    reconnect_max_s: float = documented(60.0, doc="longest wait between reconnects (s)")

    def problems(self) -> list[Problem]:
        found = []
        if self.password is not None and self.username is None:
            found.append(Problem("username", "is needed with a password"))
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            found.append(Problem("reconnect_min_s", f"must be > 0 and <= reconnect_max_s ({self.reconnect_max_s}), "
                                                    f"not {self.reconnect_min_s}"))
        return found

    @property
    def resolved_port(self) -> int:
        return self.port if self.port is not None else (8883 if self.tls is not None else 1883)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for the connection, or None for plain TCP."""
        if self.tls is None:
            return None
        try:
            return self.tls.context()
        except ConfigError as exc:
            raise ConfigError([p.under("mqtt.tls") for p in exc.problems]) from None


@dataclass(frozen=True)
class StateConfig:
    """Where the agent keeps what must survive a restart."""

    dir: pathlib.Path = documented(data_dir() / "state", doc="directory of the durable alarm outbox (outbox.sqlite)",
                                   shown="`$HUMWATCH_HOME/state` (`~/.local/share/humwatch/state`)")

    @property
    def outbox(self) -> pathlib.Path:
        return self.dir / "outbox.sqlite"


@dataclass(frozen=True)
class EvidenceConfig:
    """The sound and picture kept of every raised alarm, and what of them is published ([evidence.md](evidence.md))."""

    enabled: bool = documented(True, doc="keep the sound and a picture of every raised alarm under "
                                         "<state.dir>/evidence, and take verdicts on the command topic")
    max_mb: float = documented(200.0, doc="disk budget of all kept evidence (MB); the oldest is removed first",
                               check=_positive)
    pre_seconds: float = documented(30.0, doc="seconds of sound kept from before the alarm's decision",
                                    check=_between(0, 120))
    post_seconds: float = documented(10.0, doc="seconds of sound kept from after the decision",
                                     check=_between(0, 60))
    publish_image: bool = documented(True, doc="publish the picture (retained) on <prefix>/<machine>/evidence/image")
    publish_audio: bool = documented(False, doc="also publish the WAV (retained) on <prefix>/<machine>/evidence/audio")
    audio_max_kb: int = documented(2048, doc="a WAV larger than this (kB) is not published, only kept",
                                   check=_between(1, 65536))

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1_000_000)


@dataclass(frozen=True)
class DriftConfig:
    """When the daily window scores say the machine's normal sound has moved and a recalibration is due."""

    days: int = documented(3, doc="full days in a row a drift rule must hold before recalibration is suggested",
                           check=_between(1, 60))
    median_shift: float = documented(1.0, doc="a day's median window score this many held-out SDs away from the "
                                              "calibration's held-out median counts as drifted", check=_positive)
    p95_margin: float = documented(0.5, doc="a day's 95th percentile this close (held-out SDs) below the alarm "
                                            "threshold, or above it, counts as drifted", check=_at_least(0))
    min_windows: int = documented(1000, doc="window scores a day needs to count (about 2.3 h of sound)",
                                  check=_at_least(1))


@dataclass(frozen=True)
class Config:
    machine: MachineConfig
    model: ModelConfig
    audio: AudioConfig = AudioConfig()
    alarm: AlarmConfig = AlarmConfig()
    sensor: SensorConfig = SensorConfig()
    mqtt: MqttConfig = MqttConfig()
    state: StateConfig = StateConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    drift: DriftConfig = DriftConfig()
    path: pathlib.Path | None = None  # the file this was read from


SECTIONS: dict[str, type] = {
    "machine": MachineConfig, "audio": AudioConfig, "model": ModelConfig, "alarm": AlarmConfig,
    "sensor": SensorConfig, "mqtt": MqttConfig, "state": StateConfig,
    "evidence": EvidenceConfig, "drift": DriftConfig,
}
REQUIRED_SECTIONS = ("machine", "model")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check a config file; raise ConfigError listing every problem, one line each."""
    path = pathlib.Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(data, base_dir=path.parent, source=path)


def parse_config(data: dict[str, Any], base_dir: pathlib.Path, source: pathlib.Path | None = None) -> Config:
    """Check a parsed TOML document; relative paths are taken relative to `base_dir`."""
    problems = [Problem(name, f"unknown section (known: {', '.join(SECTIONS)})") for name in data
                if name not in SECTIONS]
    sections = {}
    for name, cls in SECTIONS.items():
        if name not in data:
            if name in REQUIRED_SECTIONS:
                problems.append(Problem(name, "missing section"))
            continue
        section, found = read_section(name, data[name], base_dir)
        problems += found
        if section is not None:
            sections[name] = section
    if problems:
        raise ConfigError(problems, where=f"{source}: " if source else "")
    return Config(**sections, path=source)


def read_section(name: str, table: Any, base_dir: pathlib.Path | None = None) -> tuple[Any, list[Problem]]:
    """One `[name]` table: (section, []) or (None, its problems, named by their dotted keys)."""
    if not isinstance(table, dict):
        return None, [Problem(name, f"must be a table ([{name}])")]
    section, problems = read(SECTIONS[name], table, refuse_unknown=True, base_dir=base_dir)
    return section, [p.under(name) for p in problems]


def reference() -> str:
    """Every section and key as Markdown tables (key, type, default, meaning): the body of docs/configuration.md."""
    lines: list[str] = []
    for name, cls in SECTIONS.items():
        lines += _section_reference(name, cls, required=name in REQUIRED_SECTIONS)
    return "\n".join(lines)


def _section_reference(name: str, cls: type, required: bool) -> list[str]:
    hints = typing.get_type_hints(cls)
    lines = [f"### `[{name}]`{' (required)' if required else ''}", "", (cls.__doc__ or "").strip(), "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    tables = []
    for f in dataclasses.fields(cls):
        inner = inner_dataclass(hints[f.name])
        if inner is not None:
            tables.append((f"{name}.{f.name}", inner))
            continue
        default = "required" if is_required(f) else shown_default(f) or _toml(f.default)
        lines.append(f"| `{f.name}` | {describe(hints[f.name])} | {default} | {doc_of(f)} |")
    lines.append("")
    for table_name, inner in tables:
        lines += _section_reference(table_name, inner, required=False)
    return lines


def _toml(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (str, pathlib.Path)):
        return f'`"{value}"`'
    return f"`{value}`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=pathlib.Path, nargs="?", help="the TOML configuration file to check")
    parser.add_argument("--reference", action="store_true", help="also print the reference of every setting")


def run(args: argparse.Namespace) -> int:
    from humwatch.agent.model.bundle import Bundle

    if args.file is None:
        if not args.reference:
            raise ConfigError("give the configuration FILE to check (or --reference for the table of settings)")
        sys.stdout.write(reference())
        return 0
    config = load_config(args.file)
    print(f"{args.file}: OK (machine {config.machine.name!r}, audio from {config.audio.source}, "
          f"bundle {config.model.bundle}, broker {config.mqtt.host}:{config.mqtt.resolved_port})")
    # The bundle is not part of the file (calibration writes it later), but the agent will not start without it.
    try:
        Bundle.load(config.model.bundle)
    except ModelError as exc:
        print(f"{args.file}: note: model.bundle: {exc}; `humwatch run` needs one "
              f"(`humwatch calibrate --config {args.file}`)", file=sys.stderr)
    if args.reference:
        sys.stdout.write(reference())
    return 0
