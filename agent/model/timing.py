"""Machine timing: how fast the shaft turns and how long a cycle takes in a window, against the machine's normal.

A machine running at the wrong speed, or a valve or slide cycling at the wrong pace, sounds like itself: the same
spectrum, the same impacts, only shifted in frequency or stretched in time. The Mel and CNN detectors judge 1 s
patches on a Mel scale too coarse for a few per cent of shaft speed, and a patch is shorter than one cycle, so they
score such faults near chance (benchmarks/RESULTS.md, seventh round). This detector looks at the whole window:

- speed: the window's fine spectrum (0.5 Hz bins, 20 Hz to 2 kHz, on a log-frequency axis so that a speed change
  is a shift), flattened so that only its tonal comb remains, and matched to the normal comb at shifts of up to
  ±20 %. Its reading is how much better the best-shifted comb fits than the best within ±2 % of normal speed.
- cycle: the autocorrelation of the frame energy over lags of 0.2 to 4.5 s, on a log-lag axis, matched to the
  normal one at shifts of up to ±25 %. Its reading is the shift (the log ratio of the cycle periods) beyond ±2 %.

Within ±2 % of its normal speed and pace a machine is never anomalous to this detector: a motor's speed moves that
much with its load and the mains frequency, more than a few minutes of calibration may show.

Each is standardised on held-out normal windows; the detector reads the larger distance from normal. The fused
window score takes it only beyond `gate` held-out standard deviations (agent.model.pipeline): a machine whose timing is
normal keeps its other detectors' score, so a fan or pump without cycles is not judged on a noisy cycle estimate.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

import numpy as np
from scipy.ndimage import uniform_filter1d

from humwatch.agent.contract import HOP_LENGTH, N_FFT, PATCH_HOP_SAMPLES, SAMPLE_RATE, WINDOW_SAMPLES
from humwatch.agent.errors import ModelError
from humwatch.agent.npz import read_npz

# Spectrum segments of 2.048 s (0.49 Hz bins), one per patch hop, so that consecutive windows share all but one.
SEGMENT_SAMPLES = 32768
SEGMENTS = (WINDOW_SAMPLES - SEGMENT_SAMPLES) // PATCH_HOP_SAMPLES + 1
SPEED_STEP = 0.002  # log-frequency step: 0.2 %
SPEED_GRID = np.exp(np.arange(np.log(20.0), np.log(2000.0), SPEED_STEP))
SPEED_SHIFTS = 100  # ±20 %: a fault's speed change, past the few per cent a healthy machine wanders
SPEED_TOLERANCE = 10  # ±2 %: shifts this small count as normal speed
SPEED_FLATTEN = 101  # moving-average width (±10 % in frequency) taken off the log spectrum: the comb remains
CYCLE_STEP = 0.004  # log-lag step: 0.4 %
CYCLE_GRID = np.exp(np.arange(np.log(0.2), np.log(4.5), CYCLE_STEP))  # seconds
CYCLE_SHIFTS = 62  # ±25 %
CYCLE_TOLERANCE = 0.02  # log ratio of cycle periods that counts as the normal pace (±2 %)
READINGS = ("speed", "cycle")
# Smallest held-out spread a reading is standardised by, in its own units: a machine whose timing never moves in
# calibration must not turn a rounding difference into many standard deviations. For the speed reading, a comb
# shifted beyond the tolerance must gain 0.4 over the best within it (fit about 1.7 times as well) to reach a gate
# of 4 from a centre of 0: the combs of other machines in the hall line up with a shifted template now and then,
# and fit only a little better.
MIN_SCALE = {"speed": 0.1, "cycle": 0.004}
DEFAULT_GATE = 4.0
_HANN = np.hanning(SEGMENT_SAMPLES)
# The spectrum bins up to the first one above SPEED_GRID's top: all the speed profile interpolates from.
_FREQS = np.fft.rfftfreq(SEGMENT_SAMPLES, 1 / SAMPLE_RATE)
_FREQS = _FREQS[: int(np.searchsorted(_FREQS, SPEED_GRID[-1])) + 1]


@dataclass(frozen=True)
class Profiles:
    """Per window: the flattened fine log spectrum (windows, len(SPEED_GRID)) and the frame-energy
    autocorrelation (windows, len(CYCLE_GRID)), each with its mean removed."""

    speed: np.ndarray
    cycle: np.ndarray

    def __len__(self) -> int:
        return len(self.speed)

    def take(self, rows) -> "Profiles":
        return Profiles(self.speed[rows], self.cycle[rows])

    @classmethod
    def stack(cls, profiles: list["Profiles"]) -> "Profiles":
        return cls(np.concatenate([p.speed for p in profiles]), np.concatenate([p.cycle for p in profiles]))


def segment_power(segment: np.ndarray) -> np.ndarray:
    """Hann-windowed power spectrum of one SEGMENT_SAMPLES-long segment, up to SPEED_GRID's top."""
    spectrum = np.fft.rfft(np.asarray(segment, dtype=np.float64) * _HANN)[: _FREQS.size]
    return spectrum.real ** 2 + spectrum.imag ** 2


def segment_starts(window_start: int) -> range:
    """Where the window's spectrum segments start, on the patch-hop grid."""
    return range(window_start, window_start + SEGMENTS * PATCH_HOP_SAMPLES, PATCH_HOP_SAMPLES)


def speed_profile(powers: np.ndarray) -> np.ndarray:
    """The flattened log spectrum on SPEED_GRID from a window's segment powers (segments, bins)."""
    log_power = np.log(powers.mean(axis=0)[1:] + 1e-20)
    profile = np.interp(np.log(SPEED_GRID), np.log(_FREQS[1:]), log_power)
    flat = profile - uniform_filter1d(profile, SPEED_FLATTEN, mode="nearest")
    return flat - flat.mean()


def cycle_profile(window: np.ndarray) -> np.ndarray:
    """The normalised autocorrelation of the window's frame log-energy on CYCLE_GRID."""
    window = np.asarray(window, dtype=np.float64)
    hops = (window[: len(window) // HOP_LENGTH * HOP_LENGTH] ** 2).reshape(-1, HOP_LENGTH).sum(axis=1)
    per_frame = N_FFT // HOP_LENGTH  # a frame is this many consecutive hops
    frames = sum(hops[i:len(hops) - per_frame + 1 + i] for i in range(per_frame))
    energy = np.log(frames / N_FFT + 1e-12)
    energy -= energy.mean()
    n = len(energy)
    spectrum = np.fft.rfft(energy, 2 * n)
    auto = np.fft.irfft(np.abs(spectrum) ** 2)[:n]
    auto /= auto[0] + 1e-12
    lags = np.arange(n) * HOP_LENGTH / SAMPLE_RATE
    profile = np.interp(np.log(CYCLE_GRID), np.log(np.maximum(lags, 1e-9)), auto)
    return profile - profile.mean()


def window_profiles(samples: np.ndarray, ends: np.ndarray) -> Profiles:
    """Profiles of the windows of a clip that end at sample positions `ends` (each at least WINDOW_SAMPLES): the
    clip streamed at once, so a clip and a stream of it give the same numbers by construction."""
    found = [p for p in StreamProfiles().push(samples, ends) if p is not None]
    return Profiles.stack(found) if found else Profiles(np.empty((0, SPEED_GRID.size)), np.empty((0, CYCLE_GRID.size)))


def shifted(template: np.ndarray, max_shift: int) -> np.ndarray:
    """(2 * max_shift + 1, n): the template shifted by -max..max steps, each row divided by its overlap, so that
    `profiles @ shifted(...).T` is each profile's mean product with every shift of the template."""
    n = template.size
    rows = np.zeros((2 * max_shift + 1, n))
    for i, s in enumerate(range(-max_shift, max_shift + 1)):
        rows[i, max(0, s):n + min(0, s)] = template[max(0, -s):n + min(0, -s)] / (n - abs(s))
    return rows


def comb_gain(profiles: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """How much better the best-shifted normal comb fits than the best one within SPEED_TOLERANCE, relative to the
    best fit (`templates`: the normal comb `shifted` by up to SPEED_SHIFTS). A gain and not the best shift: on a
    weak comb the best shift can jump to a far one that fits barely better than normal speed."""
    fits = profiles @ templates.T
    best = fits.max(axis=1)
    normal = fits[:, SPEED_SHIFTS - SPEED_TOLERANCE:SPEED_SHIFTS + SPEED_TOLERANCE + 1].max(axis=1)
    return (best - normal) / np.maximum(np.abs(best), 1e-12)


def cycle_shift(profiles: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """The log ratio of each window's cycle period to the normal one: the best shift, refined by a parabola
    (`templates`: the normal autocorrelation `shifted` by up to CYCLE_SHIFTS)."""
    fits = profiles @ templates.T
    k = np.clip(fits.argmax(axis=1), 1, fits.shape[1] - 2)
    rows = np.arange(len(fits))
    left, mid, right = fits[rows, k - 1], fits[rows, k], fits[rows, k + 1]
    curve = left - 2 * mid + right
    offset = np.clip(0.5 * (left - right) / np.where(np.abs(curve) > 1e-12, curve, -1e-12), -1, 1)
    return (k + offset - CYCLE_SHIFTS) * CYCLE_STEP


def cycle_change(profiles: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """How far each window's cycle period is from normal beyond CYCLE_TOLERANCE, as a log ratio."""
    return np.maximum(0.0, np.abs(cycle_shift(profiles, templates)) - CYCLE_TOLERANCE)


@dataclass(frozen=True)
class TimingModel:
    """A machine's normal timing: the comb and cycle templates, and each reading's held-out centre and spread."""

    speed_template: np.ndarray
    cycle_template: np.ndarray
    centre: np.ndarray  # (2,) in READINGS order
    scale: np.ndarray  # (2,)
    # The templates at every shift, computed once (derived, not part of the model's identity)
    _speed_shifted: np.ndarray = field(init=False, repr=False, compare=False)
    _cycle_shifted: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_speed_shifted", shifted(self.speed_template, SPEED_SHIFTS))
        object.__setattr__(self, "_cycle_shifted", shifted(self.cycle_template, CYCLE_SHIFTS))

    def raw(self, profiles: Profiles) -> np.ndarray:
        """(windows, 2): the speed and cycle readings in their own units."""
        return np.stack([comb_gain(profiles.speed, self._speed_shifted),
                         cycle_change(profiles.cycle, self._cycle_shifted)], axis=1)

    def score(self, profiles: Profiles) -> np.ndarray:
        """Each window's distance from normal timing: the larger reading above its held-out centre, in held-out
        standard deviations. One-sided: both readings are distances beyond the tolerance (0 is normal timing), and
        on a machine without a cycle the cycle reading's centre sits far from 0, where a window at normal pace
        must not count as far from normal."""
        return (np.maximum(0.0, self.raw(profiles) - self.centre) / self.scale).max(axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in STORED}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TimingModel":
        """Read a bundle's timing file; a damaged one is a ModelError naming the file and the array."""
        stored = read_npz(path, "timing")
        missing = [k for k in STORED if k not in stored]
        if missing:
            raise ModelError(f"{path}: not a timing file (no {', '.join(missing)}); recalibrate")
        arrays = {k: np.asarray(stored[k], dtype=np.float64) for k in STORED}
        shapes = {"speed_template": SPEED_GRID.shape, "cycle_template": CYCLE_GRID.shape, "centre": (2,),
                  "scale": (2,)}
        for name, shape in shapes.items():
            if arrays[name].shape != shape or not np.all(np.isfinite(arrays[name])):
                raise ModelError(f"{path}: {name} must be {shape} finite numbers; recalibrate")
        if not np.all(arrays["scale"] > 0):
            raise ModelError(f"{path}: scale must be positive; recalibrate")
        return cls(**arrays)


STORED = tuple(f.name for f in fields(TimingModel) if f.init)  # what a timing file holds


def fit_timing(fit: Profiles, heldout: Profiles) -> TimingModel:
    """Templates from the fitting windows, centre (median) and spread from the held-out ones."""
    speed_template = fit.speed.mean(axis=0)
    cycle_template = fit.cycle.mean(axis=0)
    partial = TimingModel(speed_template, cycle_template, np.zeros(2), np.ones(2))
    raw = partial.raw(heldout)
    scale = np.maximum(raw.std(axis=0), [MIN_SCALE[r] for r in READINGS])
    return TimingModel(speed_template, cycle_template, np.median(raw, axis=0), scale)


class StreamProfiles:
    """The samples of the last window, and each spectrum segment computed once (consecutive windows share all but
    one): the agent's stream and, fed a whole clip at once, calibration's `window_profiles`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._samples = np.zeros(0)
        self._offset = 0  # stream position of self._samples[0]
        self._pending: list[np.ndarray] = []  # pushed since the last window end, joined when the next one comes
        self._powers: dict[int, np.ndarray] = {}

    def push(self, samples: np.ndarray, ends: np.ndarray) -> list[Profiles | None]:
        """Take the next samples; the profiles of the windows ending at stream positions `ends` (None for an end
        before the first full window)."""
        self._pending.append(np.asarray(samples, dtype=np.float64).reshape(-1))
        if len(ends) == 0:
            return []
        self._samples = np.concatenate([self._samples, *self._pending])
        self._pending.clear()
        out = [self._profiles(int(end)) if end >= WINDOW_SAMPLES else None for end in ends]
        next_start = int(ends[-1]) + PATCH_HOP_SAMPLES - WINDOW_SAMPLES  # of the window the next patch ends
        drop = min(max(0, next_start - self._offset), len(self._samples))
        self._samples, self._offset = self._samples[drop:], self._offset + drop
        return out

    def _profiles(self, end: int) -> Profiles:
        start = end - WINDOW_SAMPLES
        starts = segment_starts(start)
        for s in starts:
            if s not in self._powers:
                at = s - self._offset
                self._powers[s] = segment_power(self._samples[at:at + SEGMENT_SAMPLES])
        for s in [s for s in self._powers if s < start]:
            del self._powers[s]
        window = self._samples[start - self._offset:end - self._offset]
        return Profiles(speed_profile(np.stack([self._powers[s] for s in starts]))[None], cycle_profile(window)[None])


def window_ends(n_samples: int) -> np.ndarray:
    """Where the full windows of a clip of n_samples end: at its patch ends from the WINDOW_PATCHES-th on."""
    return np.arange(WINDOW_SAMPLES, n_samples + 1, PATCH_HOP_SAMPLES)
