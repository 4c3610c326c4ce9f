"""The alarm threshold: from held-out normal window scores to a stated false-alarm rate.

Method (documented in docs/calibration.md, section Calibrate):

1. The agent decides once per window of `WINDOW_PATCHES` new patches, so a day holds
   `86400 / (WINDOW_PATCHES * PATCH_SECONDS)` independent decisions (9375 for 18 patches of 0.512 s).
   A target of `r` false alarms per day means each window may exceed the threshold with probability
   `p = r / decisions_per_day` (1 per week → p ≈ 1.5e-5).
2. Such a p lies far beyond the held-out sample, so the upper tail is modelled:
   - peaks over threshold: a generalized Pareto distribution (scipy.stats.genpareto, location 0) fitted to the
     excesses of the top `TAIL_FRACTION` of the held-out window scores over their (1 - TAIL_FRACTION) quantile u;
     then `P(S > x) = ζ_u (1 + ξ (x - u) / σ)^(-1/ξ)` is solved for `P = p`. Used when at least
     `MIN_GPD_EXCEEDANCES` independent windows lie above u;
   - otherwise a Gaussian fit of the window scores (each is a mean of `WINDOW_PATCHES` patch scores, so it is
     close to normal), threshold = mean + z_p · std.
3. The threshold is never below the largest held-out window score (a normal window seen in calibration must not
   alarm); `governed_by` says which rule set the final value. A detector whose scores saturate (OC-SVM) gets its
   threshold halfway between the held-out maximum and the saturation value when the tail model asks for more
   than the detector can give; the expected rate is then above the target, and calibration warns.
4. The hysteresis lower threshold (where an alarm clears) is the held-out 99th percentile, kept below the midpoint
   between the held-out median and the upper threshold so that clearing always needs a clearly lower score.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from humwatch.agent.contract import PATCH_SECONDS, WINDOW_PATCHES

SECONDS_PER_DAY = 86_400.0
HELDOUT_EVERY = 4  # one block in four is held out for the threshold
MIN_THRESHOLD_SCORES = 2  # the least a threshold can be computed from (a spread needs two)
MIN_HELDOUT_WINDOWS = 6  # fewer independent held-out windows say too little about the normal spread
DEFAULT_FALSE_ALARMS_PER_DAY = 1.0 / 7.0
TAIL_FRACTION = 0.15
MIN_GPD_EXCEEDANCES = 10
LOW_QUANTILE = 0.99
# Shape estimates beyond this are noise from a handful of points; extrapolating them would put the threshold anywhere.
MAX_GPD_SHAPE = 0.5


def heldout_mask(patch_counts: Sequence[int], every: int = HELDOUT_EVERY) -> np.ndarray:
    """Which blocks are held out: every `every`-th block (in time order) long enough to hold one full window.

    Splitting by time, not by random patches, keeps neighbouring (overlapping) patches out of the held-out part,
    and spreading the held-out blocks over the whole calibration makes them sample all of it.
    """
    eligible = np.flatnonzero(np.asarray(patch_counts, dtype=np.int64) >= WINDOW_PATCHES)
    mask = np.zeros(len(patch_counts), dtype=bool)
    mask[eligible[every - 1::every]] = True
    return mask


def decisions_per_day(window_patches: int = WINDOW_PATCHES) -> float:
    """Independent window decisions per day: non-overlapping windows of `window_patches` new patches."""
    return SECONDS_PER_DAY / (window_patches * PATCH_SECONDS)


@dataclass(frozen=True)
class Threshold:
    """The chosen thresholds on the window score and how they were reached."""

    high: float
    low: float
    target_false_alarms_per_day: float
    expected_false_alarms_per_day: float  # by the tail model at `high` (lower than the target when the floor set it)
    exceedance_probability: float
    decisions_per_day: float
    method: str  # "gpd" or "gaussian": the tail model
    governed_by: str  # "gpd", "gaussian", "heldout-max" or "ceiling"
    heldout_windows: int  # independent (non-overlapping) held-out windows
    heldout_scores: int  # window scores used (rolling windows within held-out blocks)
    tail: dict  # the fitted tail model's parameters

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(window_scores: np.ndarray, independent_windows: int,
                     false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY,
                     ceiling: float | None = None) -> Threshold:
    """Thresholds for `false_alarms_per_day` from held-out normal window scores.

    `window_scores` may be rolling windows (correlated neighbours); `independent_windows` is how many
    non-overlapping windows they span, which decides whether the sample supports a tail fit. `ceiling` is the
    largest score the detector can give, if it has one (an OC-SVM saturates far from its support vectors): a
    threshold at or above it could never fire, so it is then set halfway between the held-out maximum and it.
    """
    scores = np.asarray(window_scores, dtype=np.float64).ravel()
    if scores.size < MIN_THRESHOLD_SCORES or not np.all(np.isfinite(scores)):
        raise ValueError(f"need at least {MIN_THRESHOLD_SCORES} finite held-out window scores, got {scores.size}")
    if not false_alarms_per_day > 0:
        raise ValueError(f"the false-alarm rate must be positive, not {false_alarms_per_day}")
    per_day = decisions_per_day()
    p = min(false_alarms_per_day / per_day, 0.5)
    if independent_windows * TAIL_FRACTION >= MIN_GPD_EXCEEDANCES:
        tail = _gpd_tail(scores)
    else:
        tail = _gaussian_tail(scores)
    estimate = tail.quantile(p)
    floor = float(scores.max())
    high = max(estimate, floor)
    governed_by = tail.name if estimate >= floor else "heldout-max"
    if ceiling is not None and high >= ceiling:
        high, governed_by = (floor + max(ceiling, floor)) / 2.0, "ceiling"
    median = float(np.median(scores))
    low = min(float(np.quantile(scores, LOW_QUANTILE)), (median + high) / 2.0)
    return Threshold(high=float(high), low=float(low), target_false_alarms_per_day=float(false_alarms_per_day),
                     expected_false_alarms_per_day=float(tail.exceedance(high) * per_day),
                     exceedance_probability=float(p), decisions_per_day=float(per_day), method=tail.name,
                     governed_by=governed_by, heldout_windows=int(independent_windows),
                     heldout_scores=int(scores.size), tail=tail.params)


@dataclass(frozen=True)
class _Tail:
    name: str
    params: dict

    def quantile(self, p: float) -> float:
        """The score exceeded with probability p."""
        if self.name == "gaussian":
            return self.params["mean"] + stats.norm.isf(p) * self.params["std"]
        u, zeta, shape, scale = (self.params[k] for k in ("u", "zeta", "shape", "scale"))
        if p >= zeta:  # inside the body of the sample: no extrapolation needed
            return u
        return u + stats.genpareto.isf(p / zeta, shape, loc=0.0, scale=scale)

    def exceedance(self, x: float) -> float:
        """P(window score > x) under the model."""
        if self.name == "gaussian":
            return float(stats.norm.sf(x, loc=self.params["mean"], scale=self.params["std"]))
        u, zeta, shape, scale = (self.params[k] for k in ("u", "zeta", "shape", "scale"))
        if x <= u:
            return zeta
        return float(zeta * stats.genpareto.sf(x - u, shape, loc=0.0, scale=scale))


def _gaussian_tail(scores: np.ndarray) -> _Tail:
    std = float(scores.std(ddof=1))
    # A constant sample would give a zero-width tail; one part in 1e6 of the level keeps the maths defined.
    std = max(std, 1e-6 * max(abs(float(scores.mean())), 1.0))
    return _Tail("gaussian", {"mean": float(scores.mean()), "std": std})


def _gpd_tail(scores: np.ndarray) -> _Tail:
    u = float(np.quantile(scores, 1.0 - TAIL_FRACTION))
    excesses = scores[scores > u] - u
    shape, _, scale = stats.genpareto.fit(excesses, floc=0.0)
    if abs(shape) > MAX_GPD_SHAPE:
        shape = float(np.clip(shape, -MAX_GPD_SHAPE, MAX_GPD_SHAPE))
        _, _, scale = stats.genpareto.fit(excesses, f0=shape, floc=0.0)
    return _Tail("gpd", {"u": u, "zeta": float(excesses.size / scores.size), "shape": float(shape),
                         "scale": float(scale), "exceedances": int(excesses.size)})
