"""Synthetic machine sounds: pumps, fans, valves and slide rails with per-id character, faults and factory noise.

The demo and the evaluation need recordings of machines nobody has here, so this module makes them from physical
ingredients: rotating harmonics with a wandering speed, blade and vane passing tones, bearing ticks, valve open and
close cycles, slider strokes. Each clip varies the load, speed and level within a machine's normal bounds; an
abnormal clip adds one fault of a given kind and severity. Factory background (broadband noise, other machines,
impacts, mains hum) is mixed at a given SNR measured on the healthy machine signal. Everything is deterministic
from its seeds. numpy and scipy only: the demo on the board uses it.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import signal

from humwatch.agent.contract import SAMPLE_RATE
from humwatch.calibration.faults import band_noise, impact_train, phase_of, rms, smooth_wander, unit_rms

MACHINE_TYPES = ("pump", "fan", "valve", "slider")
ANOMALY_KINDS = ("bearing", "imbalance", "leak", "rubbing", "clogging", "loose", "cavitation", "speed")
# The faults a machine type plausibly develops (MIMII's abnormal sets: pump leakage/contamination/clogging, fan
# unbalance/voltage change/clogging, valve contamination, slider rail damage/loose belt/no grease).
TYPE_ANOMALIES = {
    "pump": ("leak", "clogging", "cavitation", "bearing", "imbalance"),
    "fan": ("imbalance", "bearing", "rubbing", "loose", "speed"),
    "valve": ("leak", "clogging", "loose", "speed"),
    "slider": ("rubbing", "loose", "bearing", "speed"),
}
DEFAULT_SNR_DB = -6.0
# RMS of the healthy machine signal at nominal level, before the noise is added (leaves headroom for -6 dB SNR).
MACHINE_RMS = 0.05
# An additive fault at severity s has an RMS of MACHINE_RMS * 10^((FAULT_DB_LOW + s * FAULT_DB_SPAN) / 20).
FAULT_DB_LOW = -26.0
FAULT_DB_SPAN = 18.0


# ---------------------------------------------------------------- signal primitives


def harmonic_stack(phase: np.ndarray, amplitudes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """sum_k a_k sin(k * phase + random phase): a rotating part with its harmonics following the speed."""
    out = np.zeros_like(phase)
    for k, a in enumerate(amplitudes, start=1):
        if a > 0:
            out += a * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out


def snr_gain(reference: np.ndarray, noise: np.ndarray, snr_db: float) -> float:
    """The gain on noise that makes 10 log10(P_reference / P_noise) equal snr_db."""
    return rms(reference) / (rms(noise) * 10 ** (snr_db / 20)) if rms(noise) > 0 else 0.0


# ---------------------------------------------------------------- machines

@dataclass(frozen=True)
class Anomaly:
    """One fault in an abnormal clip; severity in (0, 1] (0.2: barely there, 1: plain to a trained ear)."""

    kind: str
    severity: float

    def __post_init__(self) -> None:
        if self.kind not in ANOMALY_KINDS:
            raise ValueError(f"anomaly kind must be one of {ANOMALY_KINDS}, not {self.kind!r}")
        if not 0 < self.severity <= 1:
            raise ValueError(f"anomaly severity must be in (0, 1], not {self.severity}")

    @property
    def additive_gain(self) -> float:
        return MACHINE_RMS * 10 ** ((FAULT_DB_LOW + self.severity * FAULT_DB_SPAN) / 20)


@dataclass(frozen=True)
class Machine:
    """The fixed character of one machine (type + id): what makes id_02 sound unlike id_04."""

    machine_type: str
    machine_id: int
    rot_hz: float            # shaft rotation (for a valve: its supply pump; for a slider: the drive motor)
    harmonics: tuple         # relative amplitudes of rotation harmonics 1..K
    passing: int             # blades (fan) or vanes (pump): passing tone at passing * rot_hz
    passing_level: float
    flow_band: tuple         # (low, high) Hz of flow / aerodynamic / friction noise
    flow_level: float
    resonances: tuple        # structural resonances (Hz) excited by the flow noise
    cycle_s: float           # valve open/close period or slider stroke period
    duty: float              # valve open fraction / slider moving fraction of a cycle
    click_hz: tuple          # valve open and close click resonances; slider end-stop resonance
    bearing_ratio: float     # outer-race defect frequency / rotation frequency

    @classmethod
    def create(cls, machine_type: str, machine_id: int) -> "Machine":
        if machine_type not in MACHINE_TYPES:
            raise ValueError(f"machine type must be one of {MACHINE_TYPES}, not {machine_type!r}")
        rng = np.random.default_rng([zlib.crc32(machine_type.encode()), int(machine_id)])
        rot = {"pump": (22, 48), "fan": (11, 25), "valve": (24, 50), "slider": (25, 45)}[machine_type]
        k = 14
        tilt = rng.uniform(0.6, 1.3)
        harmonics = tuple(float(v) for v in (np.arange(1, k + 1) ** -tilt) * 10 ** (rng.uniform(-8, 4, k) / 20))
        flow_low = rng.uniform(60, 300)
        flow = {"pump": (flow_low, rng.uniform(1200, 3000)), "fan": (flow_low, rng.uniform(3000, 6000)),
                "valve": (rng.uniform(800, 2000), rng.uniform(3500, 7000)),
                "slider": (rng.uniform(400, 1200), rng.uniform(3000, 6500))}[machine_type]
        return cls(
            machine_type=machine_type, machine_id=int(machine_id),
            rot_hz=float(rng.uniform(*rot)), harmonics=harmonics,
            passing=int(rng.integers(5, 9) if machine_type == "pump" else rng.integers(4, 10)),
            passing_level=float(rng.uniform(0.3, 1.0)),
            flow_band=tuple(float(f) for f in flow), flow_level=float(rng.uniform(0.3, 0.8)),
            resonances=tuple(float(f) for f in np.sort(rng.uniform(400, 3500, 2))),
            cycle_s=float(rng.uniform(0.9, 2.5) if machine_type == "valve" else rng.uniform(1.2, 3.0)),
            duty=float(rng.uniform(0.3, 0.6)),
            click_hz=tuple(float(f) for f in rng.uniform(900, 4500, 2)),
            bearing_ratio=float(rng.uniform(3.0, 5.4)),
        )


@dataclass(frozen=True)
class Conditions:
    """How one clip's run differs from the nominal one within normal bounds."""

    load: float    # flow / aerodynamic load, 0.85..1.15
    speed: float   # speed factor, 0.98..1.02
    level_db: float  # microphone level offset, -1.5..1.5 dB

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Conditions":
        return cls(load=float(rng.uniform(0.85, 1.15)), speed=float(rng.uniform(0.98, 1.02)),
                   level_db=float(rng.uniform(-1.5, 1.5)))


@dataclass
class _Parts:
    """The healthy machine signal plus what the faults need to know about its motion."""

    healthy: np.ndarray
    rot_phase: np.ndarray   # shaft phase in radians
    motion: np.ndarray      # 0..1 envelope of activity (1 for rotating machines, strokes / open phases otherwise)


def machine_sound(machine: Machine, seconds: float, rng: np.random.Generator, conditions: Conditions,
                  anomaly: Anomaly | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(machine signal with its fault, healthy reference part) at MACHINE_RMS nominal level."""
    n = int(round(seconds * SAMPLE_RATE))
    speed = conditions.speed
    if anomaly is not None and anomaly.kind == "speed":
        speed *= 1 + rng.choice([-1, 1]) * (0.03 + 0.12 * anomaly.severity)
    clog = anomaly.severity if anomaly is not None and anomaly.kind == "clogging" else 0.0
    builder = {"pump": _rotating, "fan": _rotating, "valve": _valve, "slider": _slider}[machine.machine_type]
    parts = builder(machine, n, rng, conditions, speed, clog)
    level = MACHINE_RMS * 10 ** (conditions.level_db / 20) / max(rms(parts.healthy), 1e-12)
    healthy = parts.healthy * level
    out = healthy.copy()
    if anomaly is not None:
        out = _apply_anomaly(out, parts, machine, anomaly, rng, n, level)
    return out, healthy


def _rotating(machine: Machine, n: int, rng: np.random.Generator, cond: Conditions, speed: float, clog: float
              ) -> _Parts:
    rot = machine.rot_hz * speed * (1 + 0.004 * smooth_wander(n, 0.7, rng))
    phase = phase_of(rot)
    harm = np.array(machine.harmonics)
    # load shifts energy towards the higher harmonics; clogging does so strongly and chokes the flow
    k = np.arange(1, harm.size + 1)
    harm = harm * (1 + 0.15 * (cond.load - 1) * k / harm.size) * (1 + 2.5 * clog * (k / harm.size) ** 2)
    tonal = harmonic_stack(phase, harm, rng)
    passing = harmonic_stack(machine.passing * phase, np.array([1.0, 0.4, 0.15]), rng)
    passing *= machine.passing_level * (1 + 1.5 * clog)
    flow = band_noise(n, *machine.flow_band, rng) * (1 + 0.12 * smooth_wander(n, 2.0, rng))
    for f in machine.resonances:
        flow += 0.35 * unit_rms(signal.lfilter(*signal.iirpeak(f, 8, fs=SAMPLE_RATE), flow))
    flow_gain = machine.flow_level * cond.load * (1 - 0.6 * clog)
    if machine.machine_type == "fan":
        flow_gain *= 2.0  # a fan is mostly air
    # healthy bearings: faint irregular ticks at the defect rate
    ticks = _bearing_ticks(phase, machine.bearing_ratio, n, rng, jitter=0.3) * 0.04
    mains = 0.05 * np.sin(2 * np.pi * 100.0 * np.arange(n) / SAMPLE_RATE)
    healthy = unit_rms(tonal) + passing + flow_gain * unit_rms(flow) + ticks + mains
    return _Parts(healthy, phase, np.ones(n))


def _valve(machine: Machine, n: int, rng: np.random.Generator, cond: Conditions, speed: float, clog: float
           ) -> _Parts:
    t = np.arange(n) / SAMPLE_RATE
    period = machine.cycle_s / speed
    start = rng.uniform(0, period)
    opens = np.arange(start - period, n / SAMPLE_RATE, period)
    opens = opens + rng.normal(0, 0.01 * period, opens.size)
    duty = machine.duty * (1 - 0.5 * clog)
    closes = opens + duty * period
    gate = np.zeros(n)
    for o, c in zip(opens, closes):
        gate[(t >= o) & (t < c)] = 1.0
    envelope = signal.lfilter([0.004], [1, -0.996], gate)  # ~15 ms soft opening
    envelope /= max(envelope.max(), 1e-12)
    hiss = band_noise(n, *machine.flow_band, rng) * envelope * cond.load * (1 - 0.5 * clog)
    clicks = (impact_train(opens, rng.uniform(0.8, 1.2, opens.size) * 6, n, machine.click_hz[0], 0.012)
              + impact_train(closes, rng.uniform(0.8, 1.2, closes.size) * 8, n, machine.click_hz[1], 0.008))
    rot = machine.rot_hz * speed * (1 + 0.004 * smooth_wander(n, 0.7, rng))
    phase = phase_of(rot)
    supply = 0.15 * unit_rms(harmonic_stack(phase, np.array(machine.harmonics[:6]), rng))
    healthy = machine.flow_level * hiss + 0.08 * clicks + supply
    return _Parts(healthy, phase, envelope)


def _slider(machine: Machine, n: int, rng: np.random.Generator, cond: Conditions, speed: float, clog: float
            ) -> _Parts:
    t = np.arange(n) / SAMPLE_RATE
    period = machine.cycle_s / speed
    offset = rng.uniform(0, period)
    stroke_phase = ((t + offset) % period) / period
    moving = stroke_phase < machine.duty
    velocity = np.where(moving, np.sin(np.pi * np.clip(stroke_phase / machine.duty, 0, 1)), 0.0)
    rot = machine.rot_hz * speed * velocity * (1 + 0.004 * smooth_wander(n, 0.7, rng))
    phase = phase_of(rot)
    whine = harmonic_stack(phase, np.array(machine.harmonics[:8]), rng) * velocity
    friction = band_noise(n, *machine.flow_band, rng) * velocity * cond.load
    ends = np.arange(-offset, n / SAMPLE_RATE, period) + machine.duty * period
    stops = impact_train(ends, rng.uniform(0.7, 1.3, ends.size) * 5, n, machine.click_hz[0], 0.02)
    healthy = unit_rms(whine) + machine.flow_level * unit_rms(friction) + 0.06 * stops
    return _Parts(healthy, phase, velocity)


def _bearing_ticks(phase: np.ndarray, ratio: float, n: int, rng: np.random.Generator, jitter: float
                   ) -> np.ndarray:
    """Impacts once per defect passage (ratio per revolution) ringing a 2-6 kHz housing resonance."""
    passes = np.floor(phase * ratio / (2 * np.pi))
    idx = np.flatnonzero(np.diff(passes) > 0)
    times = idx / SAMPLE_RATE + rng.normal(0, 0.0004, idx.size)
    amps = np.abs(1 + jitter * rng.standard_normal(idx.size))
    return unit_rms(impact_train(times, amps, n, rng.uniform(2000, 6000), 0.0015))


def _apply_anomaly(x: np.ndarray, parts: _Parts, machine: Machine, anomaly: Anomaly, rng: np.random.Generator,
                   n: int, level: float) -> np.ndarray:
    s, kind, gain = anomaly.severity, anomaly.kind, anomaly.additive_gain
    if kind in ("speed", "clogging"):
        return x  # built into the machine signal
    if kind == "imbalance":
        depth = 0.08 + 0.4 * s
        once = np.sin(parts.rot_phase + rng.uniform(0, 2 * np.pi))
        return x * (1 + depth * once) + 3 * gain * once
    if kind == "bearing":
        return x + gain * _bearing_ticks(parts.rot_phase, machine.bearing_ratio, n, rng, jitter=0.5)
    if kind == "leak":
        centre = rng.uniform(1500, 6000)
        return x + gain * band_noise(n, centre / 1.3, centre * 1.3, rng) * (0.5 + 0.5 * parts.motion)
    if kind == "rubbing":
        f = rng.uniform(900, 4000) * (1 + 0.01 * smooth_wander(n, 5.0, rng))
        contact = np.clip(np.sin(parts.rot_phase + rng.uniform(0, 2 * np.pi)), 0, None) ** 2
        contact = contact * parts.motion if machine.machine_type == "slider" else contact
        return x + gain * unit_rms(np.sin(phase_of(f)) * contact + 0.3 * rng.standard_normal(n) * contact)
    if kind == "loose":
        rate = rng.uniform(2, 8)
        bursts = np.cumsum(rng.exponential(1 / rate, int(rate * n / SAMPLE_RATE * 2) + 4))
        times = (bursts[:, None] + np.cumsum(rng.exponential(0.012, (bursts.size, 4)), axis=1)).ravel()
        hits = impact_train(times, rng.uniform(0.3, 1.0, times.size), n, rng.uniform(700, 3000), 0.006)
        return x + gain * unit_rms(hits)
    if kind == "cavitation":
        rate = rng.uniform(200, 800)
        times = np.cumsum(rng.exponential(1 / rate, int(rate * n / SAMPLE_RATE * 1.2) + 10))
        crackle = impact_train(times, rng.lognormal(0, 0.8, times.size), n, rng.uniform(3000, 7000), 0.0004)
        return x + gain * unit_rms(crackle)
    raise ValueError(f"unknown anomaly kind {kind!r}")


# ---------------------------------------------------------------- factory background

def factory_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A factory hall: coloured broadband noise, other machines, sporadic impacts and mains hum (unit RMS)."""
    n = int(round(seconds * SAMPLE_RATE))
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum *= (np.maximum(freqs, 20.0) / 20.0) ** (-rng.uniform(0.4, 0.7))  # between pink and brown-ish
    broadband = unit_rms(np.fft.irfft(spectrum, n)) * (1 + 0.15 * smooth_wander(n, 0.5, rng))
    others = np.zeros(n)
    for _ in range(int(rng.integers(2, 5))):
        f0 = rng.uniform(12, 60) * (1 + 0.003 * smooth_wander(n, 0.5, rng))
        amps = np.arange(1, 9) ** -rng.uniform(0.5, 1.5) * 10 ** (rng.uniform(-10, 0, 8) / 20)
        src = unit_rms(harmonic_stack(phase_of(f0), amps, rng))
        src += rng.uniform(0.2, 0.8) * band_noise(n, rng.uniform(50, 300), rng.uniform(1000, 4000), rng)
        others += 10 ** (rng.uniform(-12, -4) / 20) * unit_rms(src)
    rate = rng.uniform(0.2, 1.2)
    times = np.cumsum(rng.exponential(1 / rate, int(rate * seconds * 2) + 3))
    impacts = np.zeros(n)
    for t in times[times < seconds]:
        impacts += impact_train(np.array([t]), np.array([rng.lognormal(0, 0.6)]), n, rng.uniform(300, 4000),
                                rng.uniform(0.02, 0.2))
    t_axis = np.arange(n) / SAMPLE_RATE
    mains = rng.choice([50.0, 60.0])
    hum = sum(a * np.sin(2 * np.pi * k * mains * t_axis + rng.uniform(0, 2 * np.pi))
              for k, a in ((1, 1.0), (2, 0.5), (3, 0.3)))
    impacts_level = 0.3 * rng.uniform(0.5, 1.5) / max(rms(impacts), 1e-12) if impacts.any() else 0.0
    return unit_rms(broadband + others + impacts_level * impacts + 0.08 * hum)


# ---------------------------------------------------------------- clips

def clip_rng(seed: int, machine_type: str, machine_id: int, index: int, abnormal: bool) -> np.random.Generator:
    """The generator behind one clip: the same arguments always give the same clip."""
    return np.random.default_rng([int(seed), zlib.crc32(machine_type.encode()), int(machine_id), int(index),
                                  int(abnormal)])


def draw_anomaly(machine_type: str, rng: np.random.Generator, severity_range: tuple = (0.2, 1.0)) -> Anomaly:
    """A fault this machine type plausibly has, at a severity drawn uniformly from severity_range."""
    kinds = TYPE_ANOMALIES[machine_type]
    return Anomaly(str(kinds[int(rng.integers(len(kinds)))]), float(rng.uniform(*severity_range)))


def synth_clip(machine_type: str, machine_id: int, index: int, abnormal: bool = False, seconds: float = 10.0,
               snr_db: float = DEFAULT_SNR_DB, seed: int = 0, channels: int = 1,
               anomaly: Anomaly | None = None) -> tuple[np.ndarray, Anomaly | None]:
    """One recording: float32 (n,) or (n, channels) in [-1, 1] at 16 kHz, and the fault it contains.

    Channel 0 is the reference microphone the SNR is measured on; further channels hear the machine and the hall
    with small delays and gains, like MIMII's circular array. An abnormal clip draws its fault unless given one.
    """
    rng = clip_rng(seed, machine_type, machine_id, index, abnormal)
    machine = Machine.create(machine_type, machine_id)
    conditions = Conditions.draw(rng)
    if abnormal and anomaly is None:
        anomaly = draw_anomaly(machine_type, rng)
    if not abnormal:
        anomaly = None
    sound, healthy = machine_sound(machine, seconds, rng, conditions, anomaly)
    noise = factory_noise(seconds, rng)
    noise_gain = snr_gain(healthy, noise, snr_db)
    mics = [sound + noise_gain * noise]
    for c in range(1, channels):
        d_machine, d_noise = int(rng.integers(0, 4)), int(rng.integers(0, 24))
        mics.append(rng.uniform(0.8, 1.2) * np.roll(sound, d_machine)
                    + noise_gain * (np.roll(noise, d_noise) + 0.05 * rng.standard_normal(noise.size)))
    out = np.stack(mics, axis=1) if channels > 1 else mics[0]
    return np.clip(out, -1.0, 1.0).astype(np.float32), anomaly
