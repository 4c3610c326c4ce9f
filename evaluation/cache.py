"""Per-clip features on disk, so a second run (another detector, another seed) skips audio and CNN work.

A feature file is keyed by the clip's content (sha256 of the file bytes) and by everything that made the
features (the source's description: front-end parameters, extractor sha256, channel), never by the file's path.
"""
from __future__ import annotations

import hashlib
import io
import json
import pathlib
from typing import Callable

import numpy as np

from humwatch.agent.durable import file_sha256, write_atomic


class FeatureCache:
    """Memoises compute(path) -> array per (file content, source); in memory only when root is None."""

    def __init__(self, root: str | pathlib.Path | None = None) -> None:
        self.root = pathlib.Path(root) if root is not None else None
        self._content: dict[pathlib.Path, str] = {}
        self._memory: dict[tuple[str, str], np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    def content_key(self, path: pathlib.Path) -> str:
        path = pathlib.Path(path)
        if path not in self._content:
            self._content[path] = file_sha256(path) if path.is_file() else f"missing:{path}"
        return self._content[path]

    def get(self, path: pathlib.Path, source: dict, compute: Callable[[pathlib.Path], np.ndarray]) -> np.ndarray:
        source_key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:20]
        key = (self.content_key(path), source_key)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        file = self.root / source_key / f"{key[0]}.npz" if self.root is not None else None
        if file is not None and file.is_file():
            with np.load(file) as data:
                features = data["features"]
            self.hits += 1
        else:
            features = np.asarray(compute(pathlib.Path(path)))
            self.misses += 1
            if file is not None:
                _save(file, features, source)
        self._memory[key] = features
        return features


def _save(file: pathlib.Path, features: np.ndarray, source: dict) -> None:
    description = file.parent / "source.json"
    if not description.exists():
        write_atomic(description, json.dumps(source, indent=1, sort_keys=True).encode())
    buffer = io.BytesIO()
    np.savez(buffer, features=features)
    write_atomic(file, buffer.getvalue())
