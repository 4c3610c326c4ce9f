"""The reference images whose features `humwatch convert` stores beside each model as its known answers.

Fixed synthetic sounds (seeded noise, a harmonic hum, a chirp, a knock train) through the agent's own front end:
they span the image statistics the board feeds (broadband, tonal, sweeping, impulsive). The images themselves are
stored, so the board checks its runtime on exactly these inputs whatever its own front end's rounding.
"""
from __future__ import annotations

import numpy as np

from humwatch.agent.contract import FIRST_PATCH_SAMPLES, SAMPLE_RATE
from humwatch.agent.signal.frontend import clip_patches

SEED = 19


def reference_sounds() -> list[np.ndarray]:
    """Four one-patch sounds, identical on every machine (seeded generator, closed-form tones)."""
    rng = np.random.default_rng(SEED)
    t = np.arange(FIRST_PATCH_SAMPLES) / SAMPLE_RATE
    noise = 0.1 * rng.standard_normal(len(t))
    hum = sum(0.2 / k * np.sin(2 * np.pi * 50 * k * t) for k in range(1, 12)) + 0.01 * rng.standard_normal(len(t))
    chirp = 0.3 * np.sin(2 * np.pi * (100 * t + 0.5 * (6000 - 100) / t[-1] * t ** 2))
    knocks = 0.005 * rng.standard_normal(len(t))
    for start in range(0, len(t), SAMPLE_RATE // 8):
        knocks[start:start + 200] += 0.5 * np.exp(-np.arange(min(200, len(t) - start)) / 30.0)
    return [np.asarray(s, np.float32) for s in (noise, hum, chirp, knocks)]


def reference_images() -> np.ndarray:
    """uint8 (4, 64, 64, 3): the first patch image of each reference sound."""
    return np.concatenate([clip_patches(sound).images[:1] for sound in reference_sounds()])
