"""User-facing errors: each carries one line that names the file or field and what is wrong."""


class HumwatchError(Exception):
    """Base of every error the command line prints as one line and exits non-zero on."""


class AudioError(HumwatchError):
    """An audio file or device that cannot be read."""


class ConfigError(HumwatchError):
    """A configuration file or field that is missing or invalid."""


class ModelError(HumwatchError):
    """A model, detector or bundle file that is missing, damaged or does not match."""


class RuntimeMismatchError(ModelError):
    """The TFLite runtime computes features that differ from the model's known answers beyond the tolerance:
    a broken runtime, a mis-emulated CPU, a wrong delegate or a damaged model."""
