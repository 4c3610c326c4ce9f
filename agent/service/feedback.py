"""The operator's verdict on an alarm: `humwatch feedback ALARM_ID normal|fault [--note TEXT]` on the board, and the
same as JSON on the command topic `<prefix>/<machine>/command`:

    {"command": "feedback", "alarm_id": "<32 hex digits, or 'last'>", "verdict": "normal" | "fault", "note": "..."}

A command is accepted only whole: at most COMMAND_MAX_BYTES, known keys only, an alarm id this board holds evidence
of (hex digits only: nothing that could name a path). Anything else changes nothing and is logged, one line per
rejected message with the reason. Who may write on the topic is the broker's ACL's decision.
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib

from humwatch.agent.errors import ConfigError
from humwatch.agent.service.evidence import NOTE_MAX_CHARS, VERDICTS, EvidenceStore, is_alarm_id

log = logging.getLogger(__name__)

COMMAND_MAX_BYTES = 1024
COMMAND_KEYS = {"command", "alarm_id", "verdict", "note"}
LAST = "last"  # the newest alarm with evidence (what Home Assistant's button sends)


class CommandRejected(ValueError):
    """Why a command payload changed nothing."""


class CommandHandler:
    """Applies command-topic payloads to an evidence store (runs on the MQTT network thread: small writes only)."""

    def __init__(self, store: EvidenceStore) -> None:
        self.store = store

    def __call__(self, payload: bytes) -> None:
        try:
            record = self.apply(payload)
        except CommandRejected as exc:
            log.warning("command rejected, nothing changed: %s", exc)
            return
        log.info("verdict %s for alarm %s stored (from the command topic)", record["verdict"], record["alarm_id"])

    def apply(self, payload: bytes) -> dict:
        """Store the verdict a payload carries; raise CommandRejected saying why not."""
        if len(payload) > COMMAND_MAX_BYTES:
            raise CommandRejected(f"payload of {len(payload)} bytes is over the {COMMAND_MAX_BYTES}-byte limit")
        try:
            command = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise CommandRejected(f"not UTF-8 JSON: {payload[:60]!r}") from None
        if not isinstance(command, dict):
            raise CommandRejected(f"not a JSON object but {type(command).__name__}")
        unknown = sorted(set(command) - COMMAND_KEYS)
        if unknown:
            raise CommandRejected(f"unknown keys {unknown[:5]} (known: {', '.join(sorted(COMMAND_KEYS))})")
        if command.get("command") != "feedback":
            raise CommandRejected(f"command {str(command.get('command'))[:40]!r} is not 'feedback'")
        alarm_id, verdict, note = command.get("alarm_id"), command.get("verdict"), command.get("note")
        if alarm_id == LAST:
            latest = self.store.latest()
            if latest is None:
                raise CommandRejected("alarm_id 'last': this board holds no evidence yet")
            alarm_id = latest.id
        elif not is_alarm_id(alarm_id):
            raise CommandRejected(f"alarm_id {str(alarm_id)[:40]!r} is not 32 lower-case hex digits or 'last'")
        if not isinstance(verdict, str) or verdict not in VERDICTS:
            raise CommandRejected(f"verdict {str(verdict)[:20]!r} is not one of {', '.join(VERDICTS)}")
        if note is not None and not (isinstance(note, str) and len(note) <= NOTE_MAX_CHARS):
            raise CommandRejected(f"note must be text of at most {NOTE_MAX_CHARS} characters")
        if self.store.get(alarm_id) is None:
            raise CommandRejected(f"alarm_id {alarm_id}: this board holds no evidence under that id")
        try:
            return self.store.set_verdict(alarm_id, verdict, note, source="mqtt")
        except (ConfigError, OSError) as exc:
            raise CommandRejected(f"alarm_id {alarm_id}: the verdict could not be stored ({exc})") from None


def state_dir_of(args: argparse.Namespace) -> pathlib.Path:
    """The state directory a board command works in: --state-dir, else the config's state.dir."""
    if args.state_dir is not None:
        return args.state_dir
    if args.config is not None:
        from humwatch.agent.config import load_config

        return load_config(args.config).state.dir
    raise ConfigError("give --config FILE (the agent's humwatch.toml) or --state-dir DIR")


def add_state_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=pathlib.Path, metavar="FILE", help="the agent's humwatch.toml")
    parser.add_argument("--state-dir", type=pathlib.Path, metavar="DIR", help="the agent's state directory")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("alarm_id", metavar="ALARM_ID", help="the alarm's id (`humwatch evidence list`), or 'last'")
    parser.add_argument("verdict", choices=VERDICTS, help="normal: the machine was fine (teach it); fault: it was not")
    parser.add_argument("--note", help=f"a few words for the record (at most {NOTE_MAX_CHARS} characters)")
    add_state_arguments(parser)


def run(args: argparse.Namespace) -> int:
    store = EvidenceStore(state_dir_of(args))
    alarm_id = args.alarm_id
    if alarm_id == LAST:
        latest = store.latest()
        if latest is None:
            raise ConfigError(f"{store.root}: holds no evidence yet")
        alarm_id = latest.id
    elif not is_alarm_id(alarm_id):
        raise ConfigError(f"ALARM_ID {alarm_id!r}: an alarm id is 32 lower-case hex digits (or 'last')")
    record = store.set_verdict(alarm_id, args.verdict, args.note, source="cli")
    print(f"alarm {alarm_id}: verdict {record['verdict']} stored in {store.root / alarm_id}")
    if args.verdict == "normal":
        print("`humwatch calibrate --add-evidence` adds its sound to the machine's normal sound")
    return 0
