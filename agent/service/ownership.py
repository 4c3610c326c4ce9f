"""Who may write the state directory: the agent refuses to run as root against a state directory that belongs to
another user (usually `humwatch`, from install-service), because the files root would create there (the outbox
database and its journal) would lock the service's own user out: `attempt to write a readonly database`.

`install-service` repairs such leftovers with `give_to`; the agent, running as the owner, names the same repair.
"""
from __future__ import annotations

import os
import pathlib
import pwd
import shlex

from humwatch.agent.errors import ConfigError

SERVICE_UNIT = "humwatch@{}.service"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def refuse_foreign_state(state_dir: pathlib.Path, config_path: pathlib.Path, instance: str) -> None:
    """One-line ConfigError when this process cannot safely use `state_dir`: root in another user's directory, or
    files in it (left by an earlier root run) that this user cannot write."""
    if not state_dir.is_dir():
        return
    owner = state_dir.stat().st_uid
    euid = os.geteuid()
    config = shlex.quote(str(config_path))
    if euid == 0 and owner != 0:
        name = user_name(owner)
        raise ConfigError(
            f"{state_dir}: belongs to user {name}, and this agent runs as root: what root creates there would lock "
            f"{name} out; run it as {name}: `sudo -u {name} humwatch run --config {config}` or "
            f"`systemctl start {SERVICE_UNIT.format(instance)}`")
    if euid != 0:
        blocked = [p for p in state_dir.iterdir() if p.is_file() and not os.access(p, os.W_OK)]
        if blocked:
            name = user_name(euid)
            raise ConfigError(
                f"{blocked[0]}: not writable by {name} (owned by {user_name(blocked[0].stat().st_uid)}, left by a "
                f"run as another user?); repair with `sudo chown -R {name}: {shlex.quote(str(state_dir))}`")


def foreign_entries(directory: pathlib.Path, uid: int) -> list[pathlib.Path]:
    """Entries under `directory` (itself included) not owned by `uid`, symbolic links not followed."""
    if not directory.is_dir():
        return []
    found = [directory] if directory.lstat().st_uid != uid else []
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = pathlib.Path(root) / name
            if path.lstat().st_uid != uid:
                found.append(path)
    return found


def give_to(directory: pathlib.Path, user: str) -> list[pathlib.Path]:
    """Give `directory` and everything in it to `user` (and its group); returns what was changed."""
    entry = pwd.getpwnam(user)
    changed = foreign_entries(directory, entry.pw_uid)
    for path in changed:
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    return changed
