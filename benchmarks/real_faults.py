"""What a calibration catches on real sound: the figures of the README's "What it catches on real sound".

Calibrates as tests/test_calibration.py does (the first 40 of the 75 shared DCASE fan id_00 normal clips, the
default preset, one false alarm a week), then prints the share of injected faults each candidate catches (what
`auto` chooses by), the window score of the real anomalous clip against the threshold, how many of the 35 unheard
normal clips exceed it and (with the timing detector) how far their timing readings reach, and how often a whine
(1.5-5 kHz, 6 and 12 dB under the machine) and each fault of `calibration.faults` at full strength lift the last
window of 8 unheard clips over it.

    python benchmarks/real_faults.py --model MODELS/squeezenet1_1-int8.tflite [--preset auto]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from humwatch.agent.contract import SAMPLE_RATE  # noqa: E402
from humwatch.agent.model.bundle import TIMING_NAME, Bundle  # noqa: E402
from humwatch.agent.model.pipeline import PatchScore, Pipeline  # noqa: E402
from humwatch.agent.signal.audio import read_wav  # noqa: E402
from humwatch.calibration.calibrate import DEFAULT_PRESET, calibrate  # noqa: E402
from humwatch.calibration.collect import wav_blocks  # noqa: E402
from humwatch.calibration.faults import FAULT_KINDS, Fault, inject  # noqa: E402

DCASE = REPO.parent / "shared" / "audio" / "dcase2020-id00"
CALIBRATION_CLIPS = 40
WHINE_HZ = (1500, 2000, 3000, 4000, 5000)


def windows(pipeline: Pipeline, samples: np.ndarray) -> list[PatchScore]:
    """A clip's windows as the agent streams it (a 10 s clip has one window)."""
    pipeline.reset()
    return [r for r in pipeline.push(samples) if r.window_score is not None]


def last_window(pipeline: Pipeline, samples: np.ndarray) -> float:
    return windows(pipeline, samples)[-1].window_score


def whine(clip: np.ndarray, hz: float, db_under: float) -> np.ndarray:
    level = np.sqrt(np.mean(clip.astype(np.float64) ** 2)) * 10 ** (-db_under / 20)
    t = np.arange(len(clip)) / SAMPLE_RATE
    return (clip + level * np.sqrt(2) * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="converted SqueezeNet 1.1 int8 model")
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    args = parser.parse_args()
    normal = sorted((DCASE / "train").glob("normal_id_00_*.wav"))
    with tempfile.TemporaryDirectory(prefix="real-faults-") as scratch:
        result = calibrate(wav_blocks(normal[:CALIBRATION_CLIPS]), args.model, Path(scratch) / "bundle",
                           preset=args.preset, machine="fan1", report=False)
        pipeline, threshold = Pipeline(Bundle.load(Path(scratch) / "bundle")), result.threshold.high
    print(f"{args.preset}: chose {result.selection.chosen.name}, threshold {threshold:.3g}")
    if result.selection.table:
        print("injected faults caught at each candidate's own threshold: " + ", ".join(
            f"{s.name} {s.detection:.0%}" for s in sorted(result.selection.table, key=lambda s: -s.detection)))
    anomaly = max(r.window_score for r in windows(pipeline, read_wav(DCASE / "test" / "anomaly_id_00_00000000.wav")))
    unheard_windows = [windows(pipeline, read_wav(p))[-1] for p in normal[CALIBRATION_CLIPS:]]
    unheard = [r.window_score for r in unheard_windows]
    print(f"real anomalous clip: {anomaly:.3g}; unheard normal clips above the threshold: "
          f"{sum(s > threshold for s in unheard)} of {len(unheard)} (highest {max(unheard):.3g})")
    if pipeline.timing is not None:
        timing = [r.readings[TIMING_NAME] for r in unheard_windows]
        print(f"timing reading of the unheard normal clips: highest {max(timing):.3g}, "
              f"{sum(t > pipeline.bundle.spec.timing.gate for t in timing)} beyond the gate {pipeline.bundle.spec.timing.gate:g}")
    clips = [read_wav(p) for p in normal[CALIBRATION_CLIPS:CALIBRATION_CLIPS + 8]]
    for db_under in (6, 12):
        caught = sum(last_window(pipeline, whine(c, hz, db_under)) > threshold for c in clips for hz in WHINE_HZ)
        print(f"whine {db_under} dB under the machine: caught in {caught} of {len(clips) * len(WHINE_HZ)}")
    for kind in FAULT_KINDS:
        caught = sum(last_window(pipeline, inject(c, Fault(kind, 1.0, seed=i))) > threshold
                     for i, c in enumerate(clips))
        print(f"{kind} at full strength: caught in {caught} of {len(clips)}")


if __name__ == "__main__":
    main()
