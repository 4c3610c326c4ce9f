"""The durable alarm outbox: the one place an alarm lives until the broker has acknowledged it.

paho-mqtt keeps unacknowledged messages in memory only, so a crash, a power cut or SIGKILL would lose them. Every
alarm is therefore committed here (SQLite, WAL journal, synchronous=FULL: each commit is fsync'd) before it is handed
to the network, and removed only when its PUBACK arrives. Rows keep their insertion order (an AUTOINCREMENT key is
never reused), so a restarted agent re-sends what is left in the order the alarms happened.
"""
from __future__ import annotations

import os
import pathlib
import sqlite3
import threading
import time
from dataclasses import dataclass

from humwatch.agent.contract import SCHEMA_VERSION
from humwatch.agent.durable import fsync_directory
from humwatch.agent.errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
)
"""


@dataclass(frozen=True)
class OutboxEntry:
    """One alarm waiting for its acknowledgement; `seq` orders entries across restarts."""

    seq: int
    alarm_id: str
    topic: str
    payload: bytes


class Outbox:
    """An on-disk FIFO of alarm messages, safe to share between threads of one process."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = pathlib.Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            self._prepare()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"outbox {self.path}: cannot be opened as an alarm outbox ({exc})") from None
        if created:
            fsync_directory(self.path.parent)

    def _prepare(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema version {version}, this humwatch writes {SCHEMA_VERSION}")
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.DatabaseError(f"journal mode {mode!r} instead of WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def add(self, alarm_id: str, topic: str, payload: bytes) -> int:
        """Commit one alarm durably and return its sequence number; adding a known id again changes nothing."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO alarms (id, topic, payload, created) VALUES (?, ?, ?, ?)",
                (alarm_id, topic, payload, time.time()),
            )
            return self._db.execute("SELECT seq FROM alarms WHERE id = ?", (alarm_id,)).fetchone()[0]

    def after(self, seq: int, limit: int = 100) -> list[OutboxEntry]:
        """The oldest entries whose sequence number is greater than `seq`, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, topic, payload FROM alarms WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [OutboxEntry(s, i, t, bytes(p)) for s, i, t, p in rows]

    def pending(self) -> list[OutboxEntry]:
        """Every entry still waiting for its acknowledgement, oldest first."""
        entries: list[OutboxEntry] = []
        while batch := self.after(entries[-1].seq if entries else 0):
            entries.extend(batch)
        return entries

    def remove(self, seq: int) -> None:
        """Forget an entry once the broker has acknowledged it (durably, like `add`)."""
        with self._lock:
            self._db.execute("DELETE FROM alarms WHERE seq = ?", (seq,))

    def count(self) -> int:
        """How many alarms wait for their acknowledgement."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM alarms").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
