"""Front-end cost for a 10 s clip, single thread, and its ratio to SqueezeNet 1.1 int8 inference on the same audio.

Usage: .venv/bin/python benchmarks/bench_frontend.py [--model PATH_TO_int8.tflite] [--repeats 30]
"""
from __future__ import annotations

import argparse
import os
import time

for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(name, "1")  # single thread, as on the board's analysis loop

import numpy as np  # noqa: E402

from humwatch.agent.contract import SAMPLE_RATE  # noqa: E402
from humwatch.agent.paths import default_model  # noqa: E402
from humwatch.agent.signal.frontend import FrontEnd, clip_patches  # noqa: E402


def best_of(repeats: int, work) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model("int8")))
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    clip = (np.random.default_rng(0).standard_normal(SAMPLE_RATE * 10) * 0.1).astype(np.float32)
    clip_patches(clip)  # warm caches (filterbank, window)
    best, median = best_of(args.repeats, lambda: clip_patches(clip))
    print(f"front end, 10 s clip in one push: best {best * 1e3:.2f} ms, median {median * 1e3:.2f} ms")

    def streamed():
        stream = FrontEnd()
        for start in range(0, len(clip), 1024):  # 64 ms capture chunks, as the agent receives them
            stream.push(clip[start: start + 1024])

    s_best, s_median = best_of(args.repeats, streamed)
    print(f"front end, 10 s streamed in 1024-sample chunks: best {s_best * 1e3:.2f} ms, median {s_median * 1e3:.2f} ms")
    if not os.path.exists(args.model):
        print(f"no int8 model at {args.model}: run `humwatch convert squeezenet1_1` for the ratio to inference")
        return
    from humwatch.agent.model.extractor import Extractor

    extractor = Extractor(args.model, num_threads=1)
    images = clip_patches(clip).images
    extractor.embed(images[:1])
    i_best, i_median = best_of(max(3, args.repeats // 5), lambda: [extractor.embed(images[k: k + 1]) for k in range(len(images))])
    print(f"SqueezeNet 1.1 int8, the clip's 18 patches one at a time: best {i_best * 1e3:.1f} ms, median {i_median * 1e3:.1f} ms")
    print(f"front end / inference (streamed, medians): {s_median / i_median:.3f}  (goal < 0.10)")


if __name__ == "__main__":
    main()
