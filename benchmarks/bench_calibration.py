"""Time and peak memory of one calibration from 10 minutes of real machine sound with SqueezeNet 1.1 int8.

Calibrates exactly as `humwatch calibrate CLIPS...` does (WAV reading, checks, front end, TFLite features, fit,
threshold, report, bundle) on the first 60 shared DCASE normal clips (60 x 10 s), and prints the wall time
per stage and the process's peak resident memory (with the resident memory just before calibrating, after the
libraries are loaded, to separate the libraries' share).

    python benchmarks/bench_calibration.py [--model squeezenet1_1-int8.tflite] [--clips 60] [--preset PRESET]
    python benchmarks/bench_calibration.py --command ...   the `humwatch calibrate` command itself, in a child
                                                           process: its wall time and peak resident memory

Without --model (and no converted model in the default models folder) the model is converted first with
`humwatch convert` into a temporary folder; that conversion is not timed.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from humwatch.agent.paths import default_model

SHARED_CLIPS = Path(__file__).resolve().parents[2] / "shared" / "audio" / "dcase2020-id00" / "train"


def resident_mib() -> float:
    """Current resident set size of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def model_path(given: Path | None, scratch: Path) -> Path:
    if given is not None:
        return given
    if default_model("int8").exists():
        return default_model("int8")
    from humwatch.convert.cli import convert  # workstation-only: tensorflow

    print(f"converting SqueezeNet 1.1 into {scratch} (not timed)", file=sys.stderr)
    return convert("squeezenet1_1", out_dir=scratch, precisions=("int8",))["int8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help=f"int8 SqueezeNet 1.1 extractor (default: {default_model('int8')})")
    parser.add_argument("--audio", type=Path, default=SHARED_CLIPS, help="folder of normal 10 s clips")
    parser.add_argument("--clips", type=int, default=60, help="clips used (60 x 10 s = 10 min)")
    parser.add_argument("--preset", help="the pipeline or candidates (humwatch.calibration.selection.PRESETS; "
                                         "default: calibrate's own)")
    parser.add_argument("--command", action="store_true",
                        help="run `humwatch calibrate` as a child process and report its peak resident memory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.command:
        command_peak(args)
        return

    with tempfile.TemporaryDirectory() as scratch:
        model = model_path(args.model, Path(scratch) / "models")
        from humwatch.calibration.calibrate import DEFAULT_PRESET, calibrate  # loaded before the baseline is taken
        from humwatch.calibration.collect import wav_blocks
        importlib.import_module("humwatch.calibration.report")  # matplotlib, which the report stage loads

        clips = sorted(args.audio.glob("*.wav"))[: args.clips]
        baseline = resident_mib()
        start = time.perf_counter()
        cpu_start = time.process_time()
        blocks = wav_blocks(clips)
        read_s = time.perf_counter() - start
        args.preset = args.preset or DEFAULT_PRESET
        result = calibrate(blocks, model, Path(scratch) / "bundle", preset=args.preset)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    chosen = getattr(result.selection, "chosen", None)
    print(f"audio: {len(clips)} clips, {result.seconds / 60:.1f} min; model {model.name}; preset {args.preset}"
          + (f", chose {chosen.name}" if chosen is not None else ""))
    print(f"patches: {result.fit_patches} fitted, {result.heldout_patches} held out")
    print(f"wall time: {wall:.1f} s (CPU {cpu:.1f} s), real-time factor {wall / result.seconds:.3f}")
    stages = {"read_wav": read_s, **result.stage_seconds}
    print("stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    print(f"peak resident memory: {peak:.0f} MiB (before calibrating, libraries loaded: {baseline:.0f} MiB; "
          f"calibration's own share: {peak - baseline:.0f} MiB)")
    print(f"threshold {result.threshold.high:.3f} ({result.threshold.governed_by}), "
          f"{result.threshold.heldout_windows} held-out windows")


def command_peak(args: argparse.Namespace) -> None:
    """Peak RSS of the whole `humwatch calibrate` process (libraries, audio, fitting, report), as a user sees it."""
    with tempfile.TemporaryDirectory() as scratch:
        model = model_path(args.model, Path(scratch) / "models")
        clips = Path(scratch) / "clips"
        clips.mkdir()
        for clip in sorted(args.audio.glob("*.wav"))[: args.clips]:
            os.symlink(clip, clips / clip.name)
        command = [str(Path(sys.executable).parent / "humwatch"), "calibrate", str(clips), "--model", str(model),
                   "--machine", "bench", "--out", str(Path(scratch) / "bundle"),
                   *(["--preset", args.preset] if args.preset else [])]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"humwatch calibrate, {args.clips} clips, preset {args.preset or 'default'}: wall time {wall:.1f} s, "
          f"peak resident memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
