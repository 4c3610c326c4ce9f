"""Synthetic faults injected into a machine's own normal recordings.

Calibration has only normal sound. To compare candidate pipelines on a machine without real faults, we add
generic fault signatures to its held-out normal clips and ask which pipeline separates them best: a tone (rubbing,
whine), band noise (leak, hiss), impacts (bearing, loose part), amplitude modulation (imbalance) and speed
modulation (drive or load trouble), each at several strengths. Additive faults are scaled against the clip's own
RMS, so a strength means the same on a quiet fan and a loud pump.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.spec import SAMPLE_RATE
from calibration.synth import band_noise, impact_train, phase_of, rms, smooth_wander, unit_rms

FAULT_KINDS = ("tone", "band_noise", "impacts", "am", "speed")
STRENGTHS = (0.25, 0.5, 1.0)
# An additive fault at strength s has an RMS of clip RMS * 10^((ADDITIVE_DB_LOW + s * ADDITIVE_DB_SPAN) / 20):
# -24 dB (hard to hear under the machine) to -12 dB (plain).
ADDITIVE_DB_LOW = -28.0
ADDITIVE_DB_SPAN = 16.0
AM_MAX_DEPTH = 0.5     # amplitude modulation depth at strength 1
SPEED_MAX_DEV = 0.04   # peak relative speed deviation at strength 1


@dataclass(frozen=True)
class Fault:
    """One injected fault: its kind, its strength in (0, 1], and the seed its random details come from."""

    kind: str
    strength: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, not {self.kind!r}")
        if not 0 < self.strength <= 1:
            raise ValueError(f"fault strength must be in (0, 1], not {self.strength}")


def inject(samples: np.ndarray, fault: Fault) -> np.ndarray:
    """A copy of a mono 16 kHz clip with the fault added; float32, clipped to [-1, 1]."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"inject expects a non-empty mono clip, got shape {x.shape}")
    rng = np.random.default_rng([int(fault.seed), FAULT_KINDS.index(fault.kind), int(fault.strength * 1000)])
    n, s = x.size, fault.strength
    gain = rms(x) * 10 ** ((ADDITIVE_DB_LOW + s * ADDITIVE_DB_SPAN) / 20)
    if fault.kind == "tone":
        freq = rng.uniform(300, 6000) * (1 + 0.002 * smooth_wander(n, 3.0, rng))
        y = x + gain * np.sqrt(2) * np.sin(phase_of(freq))
    elif fault.kind == "band_noise":
        centre = rng.uniform(400, 6000)
        y = x + gain * band_noise(n, centre / 1.25, centre * 1.25, rng)
    elif fault.kind == "impacts":
        rate = rng.uniform(3, 40)
        times = np.arange(rng.uniform(0, 1 / rate), n / SAMPLE_RATE, 1 / rate)
        times = times + rng.normal(0, 0.05 / rate, times.size)
        hits = impact_train(times, np.abs(1 + 0.3 * rng.standard_normal(times.size)), n,
                            rng.uniform(1000, 6000), rng.uniform(0.001, 0.006))
        y = x + gain * unit_rms(hits)
    elif fault.kind == "am":
        rate = rng.uniform(5, 50)
        t = np.arange(n) / SAMPLE_RATE
        y = x * (1 + AM_MAX_DEPTH * s * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    else:  # speed: play the clip back at a slowly wandering, slightly lower rate
        deviation = SPEED_MAX_DEV * s * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * np.arange(n) / SAMPLE_RATE
                                               + rng.uniform(0, 2 * np.pi))
        # a wandering slow-down, so the read position never runs past the clip's end
        position = np.cumsum(1 + deviation - SPEED_MAX_DEV * s * 0.5)
        y = np.interp(position - position[0], np.arange(n), x)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def fault_grid(seed: int, kinds: tuple = FAULT_KINDS, strengths: tuple = STRENGTHS) -> list[Fault]:
    """Every kind at every strength, each with its own seed derived from seed."""
    return [Fault(kind, strength, seed * 1000 + i) for i, (kind, strength)
            in enumerate((k, s) for k in kinds for s in strengths)]
