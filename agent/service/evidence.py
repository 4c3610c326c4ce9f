"""The evidence kept on the board: one folder per raised alarm under `<state dir>/evidence/<alarm id>/`.

A folder holds `audio.wav` (16 kHz 16-bit mono), `picture.png` and `evidence.json` (the alarm, the seconds kept and
every file's sha256), and later `verdict.json` when an operator has judged the alarm. A folder is filled under a
hidden temporary name and renamed into place, so a power cut or SIGKILL never leaves a half-written folder under an
alarm id (leftover temporary folders are removed when the store is opened). The folders together stay within a
byte budget: before a new one is written the oldest are removed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import time
from dataclasses import dataclass
from typing import Any, TypeGuard

from humwatch.agent.durable import file_sha256, fsync_directory, write_atomic
from humwatch.agent.errors import ConfigError
from humwatch.agent.transport.messages import AlarmEvidence

log = logging.getLogger(__name__)

EVIDENCE_DIR = "evidence"
AUDIO, PICTURE, SUMMARY, VERDICT = "audio.wav", "picture.png", "evidence.json", "verdict.json"
ALARM_ID = re.compile(r"[0-9a-f]{32}")  # the agent's alarm ids: uuid4 hex
VERDICTS = ("normal", "fault")
NOTE_MAX_CHARS = 500


class EvidenceTooLarge(Exception):
    """One alarm's evidence alone exceeds the budget: it is skipped, nothing is removed for it."""


def evidence_root(state_dir: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(state_dir) / EVIDENCE_DIR


def is_alarm_id(text: object) -> TypeGuard[str]:
    """An alarm id as the agent makes them: 32 lower-case hex digits (never a path)."""
    return isinstance(text, str) and ALARM_ID.fullmatch(text) is not None


@dataclass(frozen=True)
class Evidence:
    """One kept alarm: its folder and summary (evidence.json), and the verdict if there is one."""

    folder: pathlib.Path
    summary: dict[str, Any]
    verdict: dict[str, Any] | None

    @property
    def id(self) -> str:
        return self.folder.name

    @property
    def audio(self) -> pathlib.Path:
        return self.folder / AUDIO

    @property
    def picture(self) -> pathlib.Path:
        return self.folder / PICTURE


class EvidenceStore:
    """The evidence folders of one state directory, written atomically within `max_bytes`."""

    def __init__(self, state_dir: str | os.PathLike, max_bytes: int = 0, writer: bool = False) -> None:
        """`writer`: the agent's own store, which creates the folder and removes what a killed write left; the
        commands that read or add verdicts beside a running agent leave both alone."""
        self.root = evidence_root(state_dir)
        self.max_bytes = int(max_bytes)
        if writer:
            self.root.mkdir(parents=True, exist_ok=True)
            for leftover in self.root.glob(".*.partial"):  # a write cut short by a crash or a kill
                shutil.rmtree(leftover, ignore_errors=True)

    def write(self, alarm_id: str, files: dict[str, bytes], summary: dict[str, Any]) -> AlarmEvidence:
        """Keep one alarm's files (name -> bytes) and summary; returns the evidence object (id, seconds, files,
        sha256). Raises EvidenceTooLarge, or OSError when the disk refuses (a folder is then never left behind)."""
        if not is_alarm_id(alarm_id):
            raise ValueError(f"not an alarm id: {alarm_id!r}")
        size = sum(len(data) for data in files.values()) + 4096  # + evidence.json
        if size > self.max_bytes:
            raise EvidenceTooLarge(f"{size} bytes of evidence exceed the budget of {self.max_bytes} bytes")
        self._make_room(size)
        staging = self.root / f".{alarm_id}.partial"
        final = self.root / alarm_id
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir()
            for name, data in files.items():
                write_atomic(staging / name, data)
            evidence = AlarmEvidence(id=alarm_id, seconds=float(summary["seconds"]), files=tuple(sorted(files)),
                                     sha256={name: file_sha256(staging / name) for name in sorted(files)})
            write_atomic(staging / SUMMARY, _json({**summary, **dataclasses.asdict(evidence),
                                                   "created_ns": time.time_ns()}))
            os.rename(staging, final)
            fsync_directory(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return evidence

    def _make_room(self, size: int) -> None:
        kept = self.all()
        used = sum(_folder_bytes(e.folder) for e in kept)
        for oldest in kept:
            if used + size <= self.max_bytes:
                break
            freed = _folder_bytes(oldest.folder)
            shutil.rmtree(oldest.folder, ignore_errors=True)
            used -= freed
            log.info("evidence %s removed to stay within %.1f MB", oldest.id, self.max_bytes / 1e6)

    def used_bytes(self) -> int:
        return sum(_folder_bytes(e.folder) for e in self.all())

    def all(self) -> list[Evidence]:
        """Every complete evidence folder, oldest first."""
        names = [p.name for p in self.root.iterdir()] if self.root.is_dir() else []
        found = [e for e in (self.get(name) for name in names if is_alarm_id(name)) if e is not None]
        return sorted(found, key=lambda e: (e.summary.get("created_ns", 0), e.id))

    def get(self, alarm_id: str) -> Evidence | None:
        """The evidence of one alarm id, or None when the board holds none (a non-id is never looked up)."""
        if not is_alarm_id(alarm_id):
            return None
        folder = self.root / alarm_id
        try:
            summary = json.loads((folder / SUMMARY).read_text())
        except (OSError, ValueError):
            return None
        try:
            verdict = json.loads((folder / VERDICT).read_text())
        except (OSError, ValueError):
            verdict = None
        return Evidence(folder, summary, verdict)

    def latest(self) -> Evidence | None:
        kept = self.all()
        return kept[-1] if kept else None

    def set_verdict(self, alarm_id: str, verdict: str, note: str | None = None, source: str = "cli") -> dict:
        """Store an operator's verdict beside the evidence (atomically; a later verdict replaces it)."""
        evidence = self.get(alarm_id)
        if evidence is None:
            raise ConfigError(f"alarm {alarm_id}: this board holds no evidence under that id "
                              f"(`humwatch evidence list` shows those it holds)")
        if verdict not in VERDICTS:
            raise ConfigError(f"verdict {verdict!r}: must be one of {', '.join(VERDICTS)}")
        if note is not None and len(note) > NOTE_MAX_CHARS:
            raise ConfigError(f"note: at most {NOTE_MAX_CHARS} characters, not {len(note)}")
        record = {"alarm_id": alarm_id, "verdict": verdict, "note": note, "source": source,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_atomic(evidence.folder / VERDICT, _json(record))
        return record

    def export(self, alarm_id: str, destination: str | os.PathLike) -> list[pathlib.Path]:
        """Copy one alarm's files into `destination` (created); returns the copies."""
        evidence = self.get(alarm_id)
        if evidence is None:
            raise ConfigError(f"alarm {alarm_id}: this board holds no evidence under that id")
        out = pathlib.Path(destination) / alarm_id
        copies = []
        for item in sorted(evidence.folder.iterdir()):
            if item.is_file() and not item.name.startswith("."):
                copies.append(write_atomic(out / item.name, item.read_bytes()))
        return copies


def labelled_audio(state_dir: str | os.PathLike, verdict: str) -> list[pathlib.Path]:
    """The WAVs of the kept alarms an operator has judged `verdict` ("normal" or "fault"), oldest first. Only a
    `normal` verdict ever makes a clip calibration audio: a fault is never learned as the machine's normal sound."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, not {verdict!r}")
    return [e.audio for e in EvidenceStore(state_dir).all()
            if e.verdict is not None and e.verdict.get("verdict") == verdict and e.audio.is_file()]


def _json(value: dict) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _folder_bytes(folder: pathlib.Path) -> int:
    try:
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    except OSError:
        return 0
