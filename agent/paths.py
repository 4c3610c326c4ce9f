"""Where humwatch keeps its files when a command is not told otherwise."""
from __future__ import annotations

import os
import pathlib


def data_dir() -> pathlib.Path:
    """$HUMWATCH_HOME, else $XDG_DATA_HOME/humwatch, else ~/.local/share/humwatch."""
    if os.environ.get("HUMWATCH_HOME"):
        return pathlib.Path(os.environ["HUMWATCH_HOME"])
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return pathlib.Path(xdg) / "humwatch"


def models_dir() -> pathlib.Path:
    """Converted feature extractors (`humwatch convert` writes here by default)."""
    return data_dir() / "models"


def default_model(precision: str = "int8", architecture: str = "squeezenet1_1") -> pathlib.Path:
    return models_dir() / f"{architecture}-{precision}.tflite"
