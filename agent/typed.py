"""Plain data (parsed TOML or JSON) read into frozen dataclasses by their fields' type hints.

One reader for the config file and for the MQTT messages, so both check values the same way and say what is wrong
the same way: a `Problem` per field at fault, every one at once. A field is declared with `documented`, which
carries the description the reference pages are generated from and, optionally, a check of its value.
"""
from __future__ import annotations

import dataclasses
import pathlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Check = Callable[[Any], "str | None"]  # a value -> what is wrong with it, or None


@dataclass(frozen=True)
class Problem:
    """What is wrong with one field, named by its dotted path (e.g. `mqtt.tls.ca_file`)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    def under(self, prefix: str) -> Problem:
        """The same problem named inside `prefix` (e.g. `port` under `mqtt`)."""
        return Problem(f"{prefix}.{self.field}" if prefix else self.field, self.message)


def documented(default: Any = dataclasses.MISSING, *, doc: str, check: Check | None = None,
               shown: str | None = None, factory: Callable[[], Any] | None = None, repr: bool = True) -> Any:
    """A dataclass field with its default (none: required) or default `factory`, a one-line description, an
    optional value check, and how a reference page shows the default when it depends on the machine (`shown`)."""
    metadata = {"doc": doc, "check": check, "shown": shown}
    if factory is not None:
        return dataclasses.field(default_factory=factory, repr=repr, metadata=metadata)
    return dataclasses.field(default=default, repr=repr, metadata=metadata)


def doc_of(field: dataclasses.Field) -> str:
    return str(field.metadata.get("doc", ""))


def shown_default(field: dataclasses.Field) -> str | None:
    """The default as a reference page shows it, if the field says (else the caller formats the value)."""
    shown = field.metadata.get("shown")
    return None if shown is None else str(shown)


def is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def inner_dataclass(hint: Any) -> type | None:
    """The dataclass a field holds (`X` or `X | None`), or None for a plain value."""
    for option in _options(hint):
        if isinstance(option, type) and dataclasses.is_dataclass(option):
            return option
    return None


def read(cls: type, data: Mapping[str, Any], *, refuse_unknown: bool,
         base_dir: pathlib.Path | None = None) -> tuple[Any, list[Problem]]:
    """Build `cls` from a table: (instance, []) or (None, every problem). Unknown keys are problems when
    `refuse_unknown` (a config typo), else skipped (a newer sender's extra field). Relative paths are taken
    relative to `base_dir`. After the types, each field's check and the class's `problems()` are run."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    problems: list[Problem] = []
    if refuse_unknown:
        problems += [Problem(key, f"unknown key (known: {', '.join(fields)})") for key in data if key not in fields]
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            if is_required(field):
                problems.append(Problem(name, "missing (required)"))
            continue
        inner = inner_dataclass(hints[name])
        if data[name] is None and is_optional(hints[name]):
            values[name] = None  # JSON's null (TOML has none)
        elif inner is not None and isinstance(data[name], Mapping):
            value, inner_problems = read(inner, data[name], refuse_unknown=refuse_unknown, base_dir=base_dir)
            problems += [p.under(name) for p in inner_problems]
            if value is not None:
                values[name] = value
        else:
            value, reason = convert(data[name], hints[name], base_dir)
            reason = reason or _own_problem(field, value)
            if reason is None:
                values[name] = value
            else:
                problems.append(Problem(name, reason))
    if any(is_required(f) and name not in values for name, f in fields.items()):
        return None, problems
    built = cls(**values)
    problems += _cross_problems(built, problems)
    return (None, problems) if problems else (built, [])


def check(obj: Any) -> list[Problem]:
    """The problems of an object built in code (not read): every field's own check, then the object's cross-field
    `problems()`, into nested dataclasses too."""
    problems: list[Problem] = []
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            problems += [p.under(field.name) for p in check(value)]
        elif (reason := _own_problem(field, value)) is not None:
            problems.append(Problem(field.name, reason))
    return problems + _cross_problems(obj, problems)


def _own_problem(field: dataclasses.Field, value: Any) -> str | None:
    rule = field.metadata.get("check")
    return None if rule is None or value is None else rule(value)


def _cross_problems(obj: Any, found: list[Problem]) -> list[Problem]:
    """The object's `problems()` (rules across its fields), except for fields already at fault."""
    rules = getattr(obj, "problems", None)
    return [] if rules is None else [p for p in rules() if not any(p.field == q.field for q in found)]


def convert(value: Any, hint: Any, base_dir: pathlib.Path | None = None) -> tuple[Any, str | None]:
    """Match a plain value against a type hint: (value, None) or (None, what is wrong). Booleans are not numbers;
    null is left to `read` (TOML has none: an optional setting is set by leaving it out)."""
    for option in _options(hint):
        if option is type(None):
            continue
        origin = typing.get_origin(option)
        if origin is Literal:
            if isinstance(value, str) and value in typing.get_args(option):
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
                return (path if path.is_absolute() or base_dir is None else base_dir / path), None
        elif origin in (tuple, list):
            if isinstance(value, list):
                items = [convert(v, typing.get_args(option)[0], base_dir) for v in value]
                if all(reason is None for _, reason in items):
                    return (tuple if origin is tuple else list)(v for v, _ in items), None
        elif origin in (dict, Mapping):
            if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
                entries = {k: convert(v, typing.get_args(option)[1], base_dir) for k, v in value.items()}
                if all(reason is None for _, reason in entries.values()):
                    return {k: v for k, (v, _) in entries.items()}, None
        elif isinstance(option, type) and dataclasses.is_dataclass(option):
            continue  # a table: read() builds it
        else:
            raise TypeError(f"fields of type {option!r} are not supported")
    return None, f"must be {describe(hint)}, not {value!r}"


def describe(hint: Any) -> str:
    """A type hint in words, as a problem or a reference page says it ("an integer or 'mean'")."""
    words: list[str] = []
    for option in _options(hint):
        origin = typing.get_origin(option)
        if option is type(None):
            continue
        if origin is Literal:
            words.extend(repr(v) for v in typing.get_args(option))
        elif option is pathlib.Path:
            words.append("a path")
        elif origin in (tuple, list):
            words.append(f"a list of {_plural(typing.get_args(option)[0])}")
        elif origin in (dict, Mapping):
            words.append(f"a map from names to {_plural(typing.get_args(option)[1])}")
        elif isinstance(option, type) and dataclasses.is_dataclass(option):
            words.append("a table")
        else:
            words.append({bool: "true or false", int: "an integer", float: "a number", str: "a string"}[option])
    return " or ".join(words)


def is_optional(hint: Any) -> bool:
    """Whether a field may be null (`X | None`)."""
    return type(None) in _options(hint)


def _plural(hint: Any) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(hint, describe(hint))


def _options(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
