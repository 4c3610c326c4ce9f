"""Durable files: a file appears whole under its name or not at all, and stays after a power cut.

Every file humwatch writes (models, detectors, bundles, reports, configs, datasets) goes through `write_atomic`:
a temporary file in the same directory, fsync'd, renamed over the target, and the directory entry fsync'd.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from humwatch.agent.errors import ConfigError


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object] | bytes,
                 mode: int | None = None) -> Path:
    """Write `path` through a temporary sibling; `write` is the bytes or a function given the open binary file.

    The file gets `mode`, or by default what an ordinary new file gets under the umask (mkstemp alone makes 0600,
    which would hide a bundle from the agent's own user)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(write, (bytes, bytearray)):
                out.write(write)
            else:
                write(out)
            out.flush()
            os.fchmod(out.fileno(), _default_mode() if mode is None else mode)
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def refuse_unwritable(what: str, folder: str | os.PathLike) -> None:
    """Refuse, in one line naming `what`, a folder that cannot be created or written in: checked before minutes of
    work (recording, fitting, converting), not after them."""
    folder = Path(folder).absolute()
    nearest = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not nearest.exists():
        raise ConfigError(f"{what}: {nearest} is a symbolic link to nothing")
    if not nearest.is_dir():
        raise ConfigError(f"{what}: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: cannot write in {nearest} (its permissions, or a read-only file system)")


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a directory's entries (a created, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
