"""`--train-minutes N`: the training clips a technician would record in N minutes, spread over the operating
conditions (attribute groups) the data hold, because a calibration lasts 5–30 minutes, not hours."""
from __future__ import annotations

import pathlib
import wave
from typing import Callable, Sequence, TypeVar

from humwatch.agent.contract import SAMPLE_RATE
from humwatch.agent.signal.audio import read_wav

T = TypeVar("T")


def wav_seconds(path: pathlib.Path) -> float:
    """A WAV file's duration from its header (no samples read)."""
    try:
        with wave.open(str(path)) as f:
            return f.getnframes() / float(f.getframerate())
    except (wave.Error, EOFError, OSError):  # WAVE_FORMAT_EXTENSIBLE, float or broken: read_wav decides
        return len(read_wav(path)) / SAMPLE_RATE


def first_minutes(clips: Sequence[T], group: Callable[[T], str], seconds: Callable[[T], float],
                  minutes: float) -> list[T]:
    """Clips taken round-robin over the groups (in sorted order; each group's clips in their given order) until
    their durations add up to `minutes`; the last clip may overrun. All clips when they last less."""
    if minutes <= 0:
        raise ValueError("minutes must be positive")
    queues: dict[str, list[T]] = {}
    for clip in clips:
        queues.setdefault(group(clip), []).append(clip)
    order = [queues[key] for key in sorted(queues)]
    chosen: list[T] = []
    total, budget, turn = 0.0, minutes * 60.0, 0
    while total < budget and any(order):
        queue = order[turn % len(order)]
        turn += 1
        if queue:
            clip = queue.pop(0)
            chosen.append(clip)
            total += seconds(clip)
    return chosen
