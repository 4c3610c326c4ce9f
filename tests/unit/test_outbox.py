"""The alarm outbox keeps alarms in order on disk until they are removed, across reopen and SIGKILL."""
import pathlib
import signal
import sqlite3
import subprocess
import sys

import pytest

from humwatch.agent.errors import ConfigError
from humwatch.agent.transport.outbox import Outbox

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_entries_come_back_in_insertion_order_until_removed(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite")
    seqs = [outbox.add(f"id-{i}", "humwatch/m/alarm", f'{{"n":{i}}}'.encode()) for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    outbox.remove(seqs[1])
    pending = outbox.pending()
    assert [e.alarm_id for e in pending] == ["id-0", "id-2", "id-3", "id-4"]
    assert pending[0].topic == "humwatch/m/alarm" and pending[0].payload == b'{"n":0}'
    assert [e.alarm_id for e in outbox.after(seqs[2], limit=1)] == ["id-3"]
    assert outbox.count() == 4


def test_adding_a_known_id_again_changes_nothing(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite")
    first = outbox.add("same", "t", b"first")
    assert outbox.add("same", "t", b"second") == first
    assert [(e.alarm_id, e.payload) for e in outbox.pending()] == [("same", b"first")]


def test_sequence_numbers_are_never_reused_so_order_holds_across_restarts(tmp_path):
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    old = outbox.add("old", "t", b"1")
    outbox.remove(old)
    outbox.close()
    reopened = Outbox(path)
    assert reopened.add("new", "t", b"2") > old


def test_file_is_a_wal_journal_database(tmp_path):
    path = tmp_path / "outbox.sqlite"
    Outbox(path).add("a", "t", b"x")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_alarms_committed_before_sigkill_are_still_there(tmp_path):
    path = tmp_path / "state" / "outbox.sqlite"
    script = (
        "import os, signal, sys\n"
        "from humwatch.agent.transport.outbox import Outbox\n"
        "outbox = Outbox(sys.argv[1])\n"
        "for i in range(3):\n"
        "    outbox.add(f'alarm-{i}', 'humwatch/m/alarm', b'{}')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT)
    assert done.returncode == -signal.SIGKILL
    assert [e.alarm_id for e in Outbox(path).pending()] == ["alarm-0", "alarm-1", "alarm-2"]


def test_a_file_that_is_not_an_outbox_is_refused_with_its_path(tmp_path):
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(ConfigError, match=f"outbox {path}: cannot be opened"):
        Outbox(path)


def test_an_outbox_in_an_unusable_place_is_refused_with_its_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="outbox .*file/outbox.sqlite: cannot be opened"):
        Outbox(blocker / "outbox.sqlite")
