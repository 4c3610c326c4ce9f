"""Opens a .tflite model with whichever TFLite runtime is installed, in one documented order.

Order: `ai_edge_litert` (the maintained runtime, numpy 2) first, then `tflite_runtime` (older boards, numpy < 2).
There is no other fallback: without either, the error says what to install.

LiteRT's C++ runtime prints `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.` straight to file descriptor
2 when the interpreter allocates its tensors, and neither TF_CPP_MIN_LOG_LEVEL nor a Python API silences it
(the C++ API's LoggerOptions is not exposed). So the allocation runs with fd 2 pointed at a temporary file, and
everything written there except that one line is passed on to stderr afterwards: warnings and errors still show.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from humwatch.agent.errors import ModelError

log = logging.getLogger(__name__)

RUNTIMES = ("ai_edge_litert", "tflite_runtime")


def _interpreter_class() -> tuple[str, type]:
    for name in RUNTIMES:
        try:
            return name, importlib.import_module(f"{name}.interpreter").Interpreter
        except ImportError:
            continue
    raise ModelError("no TFLite runtime installed: pip install ai-edge-litert "
                     "(or tflite-runtime with numpy<2 on older boards)")


def runtime_name() -> str:
    """Which runtime `load_interpreter` uses here."""
    return _interpreter_class()[0]


def load_interpreter(path: str | Path, num_threads: int = 1):
    """An allocated interpreter for the model at `path`; ModelError naming the file if it cannot be opened."""
    name, interpreter_class = _interpreter_class()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        with without_delegate_banner():
            interpreter = interpreter_class(model_path=str(path), num_threads=int(num_threads))
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a usable TFLite model ({name}: {str(exc).strip().splitlines()[0]})") from None
    log.debug("loaded %s with %s, %d thread(s)", path, name, num_threads)
    return interpreter


DELEGATE_BANNER = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


@contextlib.contextmanager
def without_delegate_banner() -> Iterator[None]:
    """Run the block with fd 2 captured, then pass on everything but LiteRT's delegate banner."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (a closed stderr): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(line for line in captured.read().splitlines(keepends=True)
                            if line.rstrip(b"\r\n") != DELEGATE_BANNER)
            if kept:
                os.write(2, kept)
