"""Cost of per-machine selection at calibration on 10 min of real sound: `auto` (every candidate, synthetic faults)
against the `paper` preset alone, single thread as `humwatch calibrate` runs.

Usage: python benchmarks/bench_selection.py --model PATH/squeezenet1_1-int8.tflite [--clips 60]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import resource
import time

for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(name, "1")

import numpy as np  # noqa: E402

from humwatch.agent.contract import FrontEndParams  # noqa: E402
from humwatch.agent.model.extractor import Extractor  # noqa: E402
from humwatch.agent.signal.audio import read_wav  # noqa: E402
from humwatch.calibration.selection import PRESETS, choose_pipeline, prepare_clip  # noqa: E402
from humwatch.calibration.threshold import heldout_mask  # noqa: E402

SHARED_CLIPS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "audio" / "dcase2020-id00" / "train"


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=pathlib.Path, required=True)
    parser.add_argument("--clips", type=int, default=60, help="10 s clips of the shared DCASE id_00 set")
    args = parser.parse_args()
    files = sorted(SHARED_CLIPS.glob("normal_*.wav"))[: args.clips]
    extractor = Extractor(args.model)
    params = FrontEndParams()
    start = time.perf_counter()
    clips = [prepare_clip(read_wav(f), extractor, params) for f in files]
    prepared = time.perf_counter() - start
    held = heldout_mask([len(c.db) for c in clips])
    print(f"{len(files)} clips ({sum(len(c.db) for c in clips)} patches, {held.sum()} held out): front end + CNN "
          f"{prepared:.1f} s, peak {peak_mib():.0f} MiB")
    for preset in ("paper", "auto"):
        start = time.perf_counter()
        selection = choose_pipeline(clips, held, extractor.sha256, extractor, params, candidates=PRESETS[preset])
        seconds = time.perf_counter() - start
        scores = np.concatenate([selection.window_scores(c) for c in clips])
        print(f"preset {preset}: chose {selection.chosen.name} in {seconds:.1f} s ({selection.fault_clips} faulted "
              f"windows), peak {peak_mib():.0f} MiB, window score spread {scores.std():.2f}")
        for line in selection.summary_lines()[1:]:
            print("   ", line)


if __name__ == "__main__":
    main()
