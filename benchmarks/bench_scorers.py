"""How long the board's numpy scorers take per patch, and how big each detector file is.

Fits every detector kind on features of real factory sound (DCASE 2020 id_00 normal clips from ../shared/audio):
from the int8 SqueezeNet 1.1 extractor when a converted model with its sidecar is found, otherwise from a
stand-in that has the shape of CNN features (a fixed random ReLU layer over the real Mel patches, average-pooled
to 2x2 cells = 2048-d like SqueezeNet, or globally = 512-d like ResNet18). Scoring time does not depend on the
values, only on the dimensions and (for the OC-SVM and KDE) the number of stored points, which the real fit gives.

Then prints the time of one int8 SqueezeNet 1.1 inference on this machine, if a model is available, and each
scorer's share of it (goal: < 5%).

    python benchmarks/bench_scorers.py [--model PATH] [--clips 40] [--kinds gmm,ocsvm,...]
"""
from __future__ import annotations

import argparse
import logging
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from humwatch.agent.contract import WINDOW_PATCHES  # noqa: E402
from humwatch.agent.errors import ModelError  # noqa: E402
from humwatch.agent.paths import default_model  # noqa: E402
from humwatch.agent.signal.audio import read_wav  # noqa: E402
from humwatch.agent.signal.frontend import PatchBatch, clip_patches  # noqa: E402
from humwatch.calibration.detectors import KINDS, fit_detector  # noqa: E402
from humwatch.calibration.workstation_scorers import load_workstation_detector  # noqa: E402

AUDIO = pathlib.Path(__file__).resolve().parents[2] / "shared" / "audio" / "dcase2020-id00"
STAND_IN_SHA = "0" * 64
GOAL_SHARE = 0.05
# Measured by this script with a converted model on the development machine (see benchmarks/RESULTS.md).
REFERENCE_INFERENCE_SECONDS = 7.4e-3


def median_seconds(call, repeat: int) -> float:
    call()  # warm caches and lazy allocations
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def real_patches(clips: int) -> PatchBatch:
    paths = sorted(AUDIO.glob("train/normal_id_00_*.wav"))[:clips]
    return PatchBatch.concat([clip_patches(read_wav(path)) for path in paths])


def stand_in_features(db: np.ndarray, dim: int) -> np.ndarray:
    """CNN-shaped features of real Mel patches: 512 ReLU channels pooled over 2x2 cells (2048) or globally (512)."""
    grid = {2048: 2, 512: 1}[dim]
    cell = 64 // grid
    rng = np.random.default_rng(dim)
    weights = rng.normal(size=(cell * cell, 512)) / cell
    bias = rng.normal(-12.0, 4.0, 512)
    cells = db.astype(np.float64).reshape(len(db), grid, cell, grid, cell).transpose(0, 1, 3, 2, 4)
    return np.maximum(cells.reshape(len(db), grid * grid, cell * cell) @ weights + bias, 0.0).reshape(len(db), -1)


def inference_seconds(model: pathlib.Path, batch: PatchBatch, repeat: int):
    """(seconds per single-image inference, Extractor or None). Without a sidecar the raw interpreter is timed."""
    if not model.is_file():
        print(f"no converted model at {model}")
        return None, None
    try:
        from humwatch.agent.model.extractor import Extractor
        extractor = Extractor(model, num_threads=1)
        return median_seconds(lambda: extractor.embed(batch.images[:1]), repeat), extractor
    except (ImportError, ModelError) as exc:
        print(f"extractor unavailable ({exc}); timing the raw interpreter of {model}")
    from humwatch.agent.model.runtime import load_interpreter
    interpreter = load_interpreter(model, num_threads=1)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
    return median_seconds(interpreter.invoke, repeat), None


def describe(path: pathlib.Path) -> str:
    with np.load(path, allow_pickle=False) as npz:
        if "support_vectors" in npz.files:
            return f"{len(npz['support_vectors'])} support vectors"
        if "points" in npz.files:
            return f"{len(npz['points'])} points"
        if "means" in npz.files:
            return f"{len(npz['means'])} components"
        return f"{len(npz['tree_offsets']) - 1} trees, {len(npz['threshold'])} nodes"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=pathlib.Path, default=default_model("int8"),
                        help="int8 SqueezeNet 1.1 .tflite (default: %(default)s)")
    parser.add_argument("--clips", type=int, default=40, help="normal 10 s clips to fit on (18 patches each)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="detector kinds to fit on the 2048-d features")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    batch = real_patches(args.clips)
    inference, extractor = inference_seconds(args.model, batch, args.repeat)
    if extractor is not None and extractor.feature_dim == 2048:
        features = {2048: (extractor.embed(batch.images).astype(np.float64), extractor.sha256, "int8 SqueezeNet 1.1")}
    else:
        features = {2048: (stand_in_features(batch.db, 2048), STAND_IN_SHA, "stand-in CNN-shaped")}
    features[512] = (stand_in_features(batch.db, 512), STAND_IN_SHA, "stand-in CNN-shaped")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpu(s), load average {os.getloadavg()[0]:.1f}, "
          f"numpy {np.__version__}; "
          f"{len(batch)} training patches from {args.clips} real normal clips")

    runs = [(kind, 2048) for kind in args.kinds.split(",")] + [("gmm", 512)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, dim in runs:
            train, sha, source = features[dim]
            start = time.perf_counter()
            fitted = fit_detector(kind, train, sha)
            fit_seconds = time.perf_counter() - start
            path = pathlib.Path(tmp) / f"{kind}-{dim}.npz"
            fitted.save(path)
            detector = load_workstation_detector(path)
            one = median_seconds(lambda: detector.score(train[:1]), args.repeat)
            window = median_seconds(lambda: detector.score(train[:WINDOW_PATCHES]), args.repeat) / WINDOW_PATCHES
            rows.append((kind, dim, source, describe(path), fit_seconds, one, window,
                         path.stat().st_size))

    print("\n| detector | features | model | fit s | score ms/patch (1) | ms/patch (batch 18) | .npz KiB |"
          + (" share of 1 inference |" if inference else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if inference else ""))
    for kind, dim, source, model, fit_s, one, window, size in rows:
        share = f" {100 * one / inference:.2f}% |" if inference else ""
        print(f"| {kind} | {dim}-d {source} | {model} | {fit_s:.1f} | {1e3 * one:.3f} | {1e3 * window:.3f} | "
              f"{size / 1024:.0f} |{share}")
    if inference:
        print(f"\none int8 SqueezeNet 1.1 inference ({args.model.name}, 1 thread): {1e3 * inference:.2f} ms; "
              f"goal: scoring < {100 * GOAL_SHARE:.0f}% = {1e3 * GOAL_SHARE * inference:.2f} ms")
    else:
        print("\nno int8 model to compare with (pass --model): on the development machine (x86-64, 2 shared "
              f"cores) one int8 SqueezeNet 1.1 inference took {1e3 * REFERENCE_INFERENCE_SECONDS:.1f} ms, "
              f"so the goal (< {100 * GOAL_SHARE:.0f}%) is {1e3 * GOAL_SHARE * REFERENCE_INFERENCE_SECONDS:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
