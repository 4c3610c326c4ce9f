"""Per-patch latency of the TFLite feature extractors: float32 vs int8, 1 and 2 threads, per architecture.

Converts each architecture (real weights when found, else seeded random ones: the timing is the same) into a
temporary folder, then times `Extractor.embed` on real Mel patches: one patch per call (the stream's case) and
a 10 s window's 18 patches per call. Prints model sizes and the int8 speed-up.

    python benchmarks/bench_extractor.py [--arch squeezenet1_1 resnet18 ...] [--repeats 40]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from humwatch.agent import contract
from humwatch.agent.errors import ModelError
from humwatch.agent.model.extractor import Extractor
from humwatch.convert.backbones import ARCHITECTURES
from humwatch.convert.cli import convert
from humwatch.convert.representative import default_audio, representative_images
from humwatch.convert.weights import default_shared_dir, locate_weights


def median_ms_per_patch(extractor: Extractor, images: np.ndarray, batch: int, repeats: int) -> float:
    for i in range(3):  # warm-up: first calls allocate and pack weights
        extractor.embed(images[i * batch:(i + 1) * batch])
    times = []
    for r in range(repeats):
        chunk = images[(r * batch) % (len(images) - batch):][:batch]
        start = time.perf_counter()
        extractor.embed(chunk)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / batch


def converted(arch: str, out_dir: Path, patches: int) -> tuple[dict[str, Path], str]:
    try:
        locate_weights(arch)
        return convert(arch, out_dir=out_dir, patches=patches), "ImageNet"
    except ModelError:
        return convert(arch, out_dir=out_dir, patches=patches, random_seed=0), "random"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", choices=ARCHITECTURES,
                        default=["squeezenet1_1", "squeezenet1_0", "resnet18"])
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per figure (median reported)")
    parser.add_argument("--patches", type=int, default=100, help="representative patches for quantisation")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    images, source = representative_images(default_audio(default_shared_dir()), 120)
    window = contract.WINDOW_PATCHES
    print(f"inputs: {source}; median of {args.repeats} calls; ms per patch")
    print(f"{'architecture':14} {'weights':8} {'precision':9} {'size MB':>8} "
          f"{'1 thr b1':>9} {'2 thr b1':>9} {'1 thr b18':>10} {'2 thr b18':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            paths, kind = converted(arch, Path(tmp), args.patches)
            figures = {}
            for precision in ("float32", "int8"):
                row = [median_ms_per_patch(Extractor(paths[precision], threads), images, batch, args.repeats)
                       for batch in (1, window) for threads in (1, 2)]
                figures[precision] = row
                size = paths[precision].stat().st_size / 1e6
                print(f"{arch:14} {kind:8} {precision:9} {size:8.2f} "
                      + " ".join(f"{v:9.2f}" if i < 2 else f"{v:10.2f}" for i, v in enumerate(row)))
            speedup = [f / q for f, q in zip(figures["float32"], figures["int8"])]
            size_ratio = paths["int8"].stat().st_size / paths["float32"].stat().st_size
            print(f"{arch:14} {'':8} {'int8 gain':9} {size_ratio:7.2f}x "
                  + " ".join(f"{v:8.2f}x" if i < 2 else f"{v:9.2f}x" for i, v in enumerate(speedup))
                  + "   (size int8/float; speed float/int8)")


if __name__ == "__main__":
    main()
