"""The state directory's owner: root refuses another user's directory; a root-left file is named, then repaired."""
from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import tempfile

import pytest

from humwatch.agent.errors import ConfigError
from humwatch.agent.service.ownership import foreign_entries, give_to, refuse_foreign_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing a directory's owner needs root (CI runs as root)")
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def nobodys_state():
    """A state directory of user nobody, in a folder nobody can reach (pytest's tmp_path is root's alone)."""
    parent = pathlib.Path(tempfile.mkdtemp(prefix="humwatch-owner-"))
    parent.chmod(0o755)
    state = parent / "state"
    state.mkdir()
    os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
    yield state
    shutil.rmtree(parent)


def test_root_refuses_a_state_directory_of_another_user_naming_the_command(nobodys_state, tmp_path, capsys):
    from humwatch.cli import main

    config = tmp_path / "pump1.toml"
    config.write_text(f'[machine]\nname = "pump1"\n[model]\nbundle = "{tmp_path / "no-bundle"}"\n'
                      f'[mqtt]\nhost = "127.0.0.1"\nport = 1\n[state]\ndir = "{nobodys_state}"\n')
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"humwatch run: error: {nobodys_state}: belongs to user nobody, and this agent runs as root: what "
                   f"root creates there would lock nobody out; run it as nobody: `sudo -u nobody humwatch run "
                   f"--config {config}` or `systemctl start humwatch@pump1.service`"]
    assert list(nobodys_state.iterdir()) == []  # no outbox created


def test_a_file_root_left_is_named_to_its_user_and_repaired(nobodys_state):
    left = nobodys_state / "outbox.sqlite"
    left.write_bytes(b"root's")
    left.chmod(0o644)
    assert foreign_entries(nobodys_state, NOBODY.pw_uid) == [left]
    pid = os.fork()
    if pid == 0:  # the agent as the directory's own user
        os.setgid(NOBODY.pw_gid), os.setuid(NOBODY.pw_uid)
        try:
            refuse_foreign_state(nobodys_state, nobodys_state / "x.toml", "x")
        except ConfigError as exc:
            os._exit(0 if str(exc).startswith(f"{left}: not writable by nobody (owned by root") and
                     f"`sudo chown -R nobody: {nobodys_state}`" in str(exc) else 3)
        os._exit(4)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert give_to(nobodys_state, "nobody") == [left]
    assert left.stat().st_uid == NOBODY.pw_uid and foreign_entries(nobodys_state, NOBODY.pw_uid) == []
    refuse_foreign_state(nobodys_state.parent, nobodys_state / "x.toml", "x")  # root in root's own folder: fine
