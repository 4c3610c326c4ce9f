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
from scipy import signal

from humwatch.agent.contract import SAMPLE_RATE

FAULT_KINDS = ("tone", "band_noise", "impacts", "am", "speed")
STRENGTHS = (0.25, 0.5, 1.0)
# An additive fault at strength s has an RMS of clip RMS * 10^((ADDITIVE_DB_LOW + s * ADDITIVE_DB_SPAN) / 20):
# -24 dB (hard to hear under the machine) to -12 dB (plain).
ADDITIVE_DB_LOW = -28.0
ADDITIVE_DB_SPAN = 16.0
AM_MAX_DEPTH = 0.5     # amplitude modulation depth at strength 1
SPEED_MAX_DEV = 0.04   # peak relative speed deviation at strength 1

NYQUIST = SAMPLE_RATE / 2


# ---------------------------------------------------------------- signal primitives (also used by the synthetic
# machines of evaluation.synth)

def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def unit_rms(x: np.ndarray) -> np.ndarray:
    r = rms(x)
    return x / r if r > 0 else x


def band_noise(n: int, low_hz: float, high_hz: float, rng: np.random.Generator) -> np.ndarray:
    """White noise band-passed to [low_hz, high_hz] (4th-order Butterworth), unit RMS."""
    low = max(low_hz, 10.0) / NYQUIST
    high = min(high_hz, NYQUIST * 0.98) / NYQUIST
    sos = signal.butter(4, [low, max(high, low * 1.05)], btype="bandpass", output="sos")
    return unit_rms(signal.sosfilt(sos, rng.standard_normal(n + 2048))[2048:])


def smooth_wander(n: int, rate_hz: float, rng: np.random.Generator) -> np.ndarray:
    """A slow random curve (unit std, changing at about rate_hz): speed drift, level breathing."""
    points = int(n / SAMPLE_RATE * rate_hz) + 3
    knots = rng.standard_normal(points)
    x = np.interp(np.linspace(0, points - 1, n), np.arange(points), knots)
    return (x - x.mean()) / (x.std() + 1e-12)


def impact_train(times_s: np.ndarray, amplitudes: np.ndarray, n: int, resonance_hz: float, decay_s: float
                 ) -> np.ndarray:
    """Impulses at times_s ringing a damped resonance (a hammer blow, a bearing defect, a click)."""
    impulses = np.zeros(n)
    idx = np.round(np.asarray(times_s) * SAMPLE_RATE).astype(int)
    keep = (idx >= 0) & (idx < n)
    np.add.at(impulses, idx[keep], np.asarray(amplitudes, dtype=np.float64)[keep])
    r = np.exp(-1.0 / (decay_s * SAMPLE_RATE))
    w = 2 * np.pi * min(resonance_hz, NYQUIST * 0.95) / SAMPLE_RATE
    return signal.lfilter([np.sin(w)], [1.0, -2 * r * np.cos(w), r * r], impulses)


def phase_of(freq_hz: np.ndarray) -> np.ndarray:
    """Instantaneous phase (radians) of a time-varying frequency."""
    return 2 * np.pi * np.cumsum(freq_hz) / SAMPLE_RATE


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
