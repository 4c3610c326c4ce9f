"""User-facing errors: each carries one line that names the file or field and what is wrong."""
from __future__ import annotations

from collections.abc import Sequence

from humwatch.agent.typed import Problem


class HumwatchError(Exception):
    """Base of every error the command line prints as one line and exits non-zero on: one line of text, or one line
    per `Problem` (kept in `problems`, so a caller can rename the fields, e.g. to its command-line flags)."""

    def __init__(self, message: str | Sequence[Problem] = "", where: str = "") -> None:
        self.problems = [] if isinstance(message, str) else list(message)
        super().__init__(message if isinstance(message, str) else "\n".join(f"{where}{p}" for p in self.problems))


class AudioError(HumwatchError):
    """An audio file or device that cannot be read."""


class ConfigError(HumwatchError):
    """A configuration file or field that is missing or invalid."""


class ModelError(HumwatchError):
    """A model, detector or bundle file that is missing, damaged or does not match."""


class MessageError(HumwatchError):
    """An MQTT message that is not what its topic promises."""


class RuntimeMismatchError(ModelError):
    """The TFLite runtime computes features that differ from the model's known answers beyond the tolerance:
    a broken runtime, a mis-emulated CPU, a wrong delegate or a damaged model."""
