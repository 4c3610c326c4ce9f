"""Opens a .tflite model with whichever TFLite runtime is installed, in one documented order.

Order: `ai_edge_litert` (the maintained runtime, numpy 2) first, then `tflite_runtime` (older boards, numpy < 2).
There is no other fallback: without either, the error says what to install.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

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
        interpreter = interpreter_class(model_path=str(path), num_threads=int(num_threads))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a usable TFLite model ({name}: {str(exc).strip().splitlines()[0]})") from None
    log.debug("loaded %s with %s, %d thread(s)", path, name, num_threads)
    return interpreter
