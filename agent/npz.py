"""Reading the files of a bundle and a model (.npz arrays, JSON manifests and sidecars), with every kind of damage
one ModelError naming the file."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from humwatch.agent.errors import ModelError


def read_npz(path: str | os.PathLike[str], what: str) -> dict[str, np.ndarray]:
    """All arrays of the .npz at `path` (`what` names the file's role in the error); no pickles. An empty,
    truncated or corrupted file, a single .npy or a directory is a ModelError naming the file."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with loaded as npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise ModelError(f"{path}: no such {what} file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: not a readable {what} .npz (truncated or damaged?): {exc}") from None


def read_json_object(path: Path, missing: str) -> dict:
    """The JSON object in the file at `path`; `missing` says what to do when there is no such file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: {missing}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object")
    return data
