"""The agent's configuration: one TOML file, checked completely at start into frozen dataclasses.

Every section is a dataclass whose fields carry their default, bounds and a one-line description, so the checker,
the README's reference and the error messages all read from one place. Unknown keys are refused (a typo must not
silently fall back to a default), and every problem is reported at once, one line each, with its dotted name.
Also the `humwatch check-config FILE` subcommand.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import tomllib

from humwatch.agent.errors import ConfigError, ModelError
from humwatch.agent.paths import data_dir
from humwatch.agent.transport.publish import TOML_NAMES, MqttSettings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # safe as one MQTT topic level and a file name


def setting(default: Any = dataclasses.MISSING, *, doc: str, check=None):
    """A config field: its default (none = required), a description, and an optional check returning a reason."""
    return field(default=default, metadata={"doc": doc, "check": check})


def _at_least(low: float):
    return lambda v: None if v >= low else f"must be at least {low}"


def _between(low: float, high: float):
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


@dataclass(frozen=True)
class MachineConfig:
    name: str = setting(doc="the machine's name, used in MQTT topics (letters, digits, '_', '-', '.')",
                        check=lambda v: None if _NAME.match(v) else "must be 1-64 letters, digits, '_', '-' or '.'")


@dataclass(frozen=True)
class AudioConfig:
    source: Literal["device", "file"] = setting("device", doc="'device' (a microphone) or 'file' (a WAV replay)")
    device: int | str | None = setting(None, doc="PortAudio input device: index, or part of its name; "
                                                 "default: the system's default input")
    rate: int = setting(16000, doc="rate the device is opened at (Hz); other rates are resampled to 16 kHz",
                        check=_between(8000, 192000))
    channels: int = setting(1, doc="channels the device is opened with", check=_between(1, 32))
    channel: int | Literal["mean"] = setting(0, doc="channel analysed (0-based index), or 'mean' of all channels")
    file: pathlib.Path | None = setting(None, doc="WAV file replayed when source = 'file'")
    realtime: bool = setting(True, doc="replay the file at its real pace (false: as fast as the analysis goes)")

    def problems(self) -> dict[str, str]:
        found = {}
        if isinstance(self.channel, int) and not 0 <= self.channel < self.channels:
            found["channel"] = f"must be below channels ({self.channels}) or 'mean'"
        if self.source == "file" and self.file is None:
            found["file"] = "required when source = 'file'"
        elif self.source == "file" and not self.file.is_file():
            found["file"] = f"no such file {self.file}"
        return found


@dataclass(frozen=True)
class ModelConfig:
    bundle: pathlib.Path = setting(doc="calibrated model bundle directory (written by `humwatch calibrate`)")
    threads: int = setting(1, doc="TFLite interpreter threads", check=_between(1, 16))


@dataclass(frozen=True)
class AlarmConfig:
    raise_after: int = setting(3, doc="consecutive window scores above the high threshold that raise an alarm",
                               check=_at_least(1))
    clear_after: int = setting(10, doc="consecutive window scores below the low threshold that clear it",
                               check=_at_least(1))
    score_interval: float = setting(10.0, doc="seconds between score telemetry messages (0: none)",
                                    check=_at_least(0))


@dataclass(frozen=True)
class SensorConfig:
    silence_dbfs: float = setting(-70.0, doc="level (dBFS RMS) below which the input counts as silent",
                                  check=_between(-150, 0))
    silence_seconds: float = setting(5.0, doc="silence lasting this long is a sensor fault (dead or unplugged mic)",
                                     check=_positive)
    clipping_fraction: float = setting(0.01, doc="share of samples at full scale that counts as clipping",
                                       check=lambda v: None if 0 < v <= 1 else "must be above 0 and at most 1")
    clipping_seconds: float = setting(2.0, doc="span of audio over which that share is measured",
                                       check=_positive)
    stall_seconds: float = setting(3.0, doc="no audio for this long is a sensor fault (capture stalled)",
                                   check=_positive)


@dataclass(frozen=True)
class StateConfig:
    dir: pathlib.Path = setting(data_dir() / "state", doc="directory of the durable alarm outbox")

    @property
    def outbox(self) -> pathlib.Path:
        return self.dir / "outbox.sqlite"


@dataclass(frozen=True)
class EvidenceConfig:
    enabled: bool = setting(True, doc="keep the sound and a picture of every raised alarm under <state.dir>/evidence")
    max_mb: float = setting(200.0, doc="disk budget of all kept evidence (MB); the oldest is removed first",
                            check=_positive)
    pre_seconds: float = setting(30.0, doc="seconds of sound kept from before the alarm's decision",
                                 check=_between(0, 120))
    post_seconds: float = setting(10.0, doc="seconds of sound kept from after the decision", check=_between(0, 60))
    publish_image: bool = setting(True, doc="publish the picture (retained) on <prefix>/<machine>/evidence/image")
    publish_audio: bool = setting(False, doc="also publish the WAV (retained) on <prefix>/<machine>/evidence/audio")
    audio_max_kb: int = setting(2048, doc="a WAV larger than this (kB) is not published, only kept",
                                check=_between(1, 65536))

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1_000_000)


@dataclass(frozen=True)
class DriftConfig:
    days: int = setting(3, doc="full days in a row a drift rule must hold before recalibration is suggested",
                        check=_between(1, 60))
    median_shift: float = setting(1.0, doc="a day's median window score this many held-out SDs away from the "
                                           "calibration's held-out median counts as drifted", check=_positive)
    p95_margin: float = setting(0.5, doc="a day's 95th percentile this close (held-out SDs) below the alarm "
                                         "threshold, or above it, counts as drifted", check=_at_least(0))
    min_windows: int = setting(1000, doc="window scores a day needs to count (about 2.3 h of sound)",
                               check=_at_least(1))


@dataclass(frozen=True)
class Config:
    machine: MachineConfig
    model: ModelConfig
    audio: AudioConfig = AudioConfig()
    alarm: AlarmConfig = AlarmConfig()
    sensor: SensorConfig = SensorConfig()
    mqtt: MqttSettings = MqttSettings()
    state: StateConfig = StateConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    drift: DriftConfig = DriftConfig()
    path: pathlib.Path | None = None  # the file this was read from


SECTIONS: dict[str, type] = {
    "machine": MachineConfig, "audio": AudioConfig, "model": ModelConfig, "alarm": AlarmConfig,
    "sensor": SensorConfig, "mqtt": MqttSettings, "state": StateConfig,
    "evidence": EvidenceConfig, "drift": DriftConfig,
}
REQUIRED_SECTIONS = ("machine", "model")


def load_config(path: str | pathlib.Path) -> Config:
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


def parse_config(data: dict, base_dir: pathlib.Path, source: pathlib.Path | None = None) -> Config:
    """Check a parsed TOML document; relative paths are taken relative to `base_dir`."""
    errors: dict[str, str] = {}
    sections = {}
    for name in data:
        if name not in SECTIONS:
            errors[name] = f"unknown section (known: {', '.join(SECTIONS)})"
    for name, cls in SECTIONS.items():
        if name not in data:
            if name in REQUIRED_SECTIONS:
                errors[name] = "missing section"
            continue
        if not isinstance(data[name], dict):
            errors[name] = "must be a table ([" + name + "])"
            continue
        if cls is MqttSettings:  # the MQTT part checks its own table (TLS files included)
            section = _build_mqtt(data[name], base_dir, errors)
        else:
            section = _build(cls, data[name], base_dir, name, errors)
        if section is not None:
            sections[name] = section
    if errors:
        where = f"{source}: " if source else ""
        raise ConfigError("\n".join(f"{where}{key}: {reason}" for key, reason in errors.items()))
    return Config(**sections, path=source)


def _build_mqtt(table: dict, base_dir: pathlib.Path, errors: dict[str, str]) -> MqttSettings | None:
    try:
        return MqttSettings.from_table(table, base_dir)
    except ConfigError as exc:  # one line per field at fault, each "mqtt.<key>: <reason>"
        for line in str(exc).splitlines():
            key, _, reason = line.partition(": ")
            errors[key if reason else "mqtt"] = reason or key
        return None


def _build(cls: type, values: dict, base_dir: pathlib.Path, prefix: str, errors: dict[str, str]):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    before = len(errors)
    for key in values:
        if key not in fields:
            errors[f"{prefix}.{key}"] = f"unknown key (known: {', '.join(fields)})"
    for name, f in fields.items():
        dotted = f"{prefix}.{name}"
        if name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors[dotted] = "missing (required)"
            continue
        value, reason = _convert(values[name], hints[name], base_dir)
        check = f.metadata.get("check")
        if reason is None and check is not None and value is not None:
            reason = check(value)
        if reason is not None:
            errors[dotted] = reason
        else:
            kwargs[name] = value
    if len(errors) > before:
        return None
    try:
        built = cls(**kwargs)
    except (ValueError, TypeError) as exc:  # a section class's own cross-field checks
        errors[prefix] = str(exc)
        return None
    for key, reason in getattr(built, "problems", dict)().items():
        errors[f"{prefix}.{key}"] = reason
    return built if len(errors) == before else None


def _convert(value: Any, hint: Any, base_dir: pathlib.Path) -> tuple[Any, str | None]:
    """Match a TOML value against a field's type; returns (value, None) or (None, reason)."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    for option in options:
        if option is type(None):
            continue  # TOML has no null: an optional field is set by leaving it out
        if typing.get_origin(option) is Literal:
            if value in typing.get_args(option) and isinstance(value, str):
                return value, None
        elif option is bool:
            if isinstance(value, bool):
                return value, None
        elif option is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value, None
        elif option is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value), None
        elif option is str:
            if isinstance(value, str):
                return value, None
        elif option is pathlib.Path:
            if isinstance(value, str) and value:
                path = pathlib.Path(value).expanduser()
                return (path if path.is_absolute() else base_dir / path), None
        elif typing.get_origin(option) in (tuple, list):
            item = typing.get_args(option)[0]
            if isinstance(value, list) and all(isinstance(v, item) for v in value):
                return typing.get_origin(option)(value), None
        else:
            raise TypeError(f"config fields of type {option!r} are not supported")
    return None, f"must be {_describe(hint)}, not {value!r}"


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _describe(hint: Any) -> str:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    words = []
    for option in options:
        if option is type(None):
            continue
        if typing.get_origin(option) is Literal:
            words.extend(repr(v) for v in typing.get_args(option))
        elif option is pathlib.Path:
            words.append("a path")
        elif typing.get_origin(option) in (tuple, list):
            words.append(f"a list of {typing.get_args(option)[0].__name__}")
        else:
            words.append({bool: "true or false", int: "an integer", float: "a number", str: "a string"}[option])
    return " or ".join(words)


def reference() -> str:
    """The config reference as Markdown tables (section, key, default, meaning), for the README."""
    lines = []
    for name, cls in SECTIONS.items():
        if cls is MqttSettings:
            lines += [_mqtt_keys(), ""]
            continue
        lines += [f"`[{name}]`{' (required)' if name in REQUIRED_SECTIONS else ''}", "",
                  "| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = "required" if f.default is dataclasses.MISSING else _toml(f.default)
            lines.append(f"| `{f.name}` | {default} | {f.metadata.get('doc', '')} |")
        lines.append("")
    return "\n".join(lines)


def _mqtt_keys() -> str:
    """The [mqtt] and [mqtt.tls] keys with their defaults (their meaning: README, *MQTT topics and payloads*)."""
    defaults = {f.name: f.default for f in dataclasses.fields(MqttSettings)}
    keys = [f"`{toml.removeprefix('mqtt.')}` ({_toml(defaults[name])})" for name, toml in TOML_NAMES.items()
            if name != "tls"]
    return ("`[mqtt]` and `[mqtt.tls]` keys (default): " + ", ".join(keys)
            + "; an unset port is 1883, or 8883 with TLS (on when a `[mqtt.tls]` table is present). Meanings: "
            "README, *MQTT topics and payloads*.")


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
