"""`humwatch score`: judge recordings offline exactly as the running agent would judge that sound live.

Each file goes through the agent's own streaming `Pipeline` (front end → extractor → detectors → 10 s window
mean), so a technician checking a suspicious recording sees the scores the agent would have computed. A file's
verdict is `anomaly` when any window score is above the bundle's alarm threshold. Exit status: 0 when every file
sounds normal, 1 when at least one is anomalous, 2 when a file could not be judged (unreadable, or shorter than one
window: a script must not take it for normal) or the bundle is bad.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from humwatch.agent.contract import SAMPLE_RATE
from humwatch.agent.errors import AudioError
from humwatch.agent.model.bundle import Bundle
from humwatch.agent.model.pipeline import Pipeline, check_known_answer
from humwatch.agent.signal.audio import parse_channel, read_wav
from humwatch.agent.transport.publish import describe_detector_scores

SHOWN_ALARM_TIMES = 10  # window end times listed per file in the human-readable output


def score_file(pipeline: Pipeline, path: pathlib.Path, channel: int | str = 0) -> dict:
    """Window scores and verdict of one recording (the pipeline is reset first: files are independent)."""
    samples = read_wav(path, channel)
    pipeline.reset()
    results = [r for r in pipeline.push(samples) if r.window_score is not None]
    bundle = pipeline.bundle
    scores = np.array([r.window_score for r in results])
    loudest = ({name: round(value, 6) for name, value in results[int(scores.argmax())].readings.items()}
               if results else None)
    above = [r.time for r in results if r.window_score > bundle.spec.threshold_high]
    if not results:
        verdict = "too_short"
    else:
        verdict = "anomaly" if above else "normal"
    return {
        "file": str(path), "verdict": verdict, "seconds": round(len(samples) / SAMPLE_RATE, 3),
        "threshold": bundle.spec.threshold_high, "threshold_low": bundle.spec.threshold_low,
        "max_window_score": float(scores.max()) if len(scores) else None,
        "max_window_detector_scores": loudest,
        "windows": len(results), "windows_above": len(above),
        "window_end_times": [round(r.time, 3) for r in results],
        "window_scores": [round(float(s), 6) for s in scores],
        "window_detector_scores": {name: [round(r.readings[name], 6) for r in results]
                                   for name in (results[0].readings if results else ())},
        "bundle": bundle.id,
    }


def describe(result: dict) -> str:
    """One human-readable line per file."""
    if result["verdict"] == "too_short":
        return (f"{result['file']}: too short ({result['seconds']:.1f} s) for one 10 s window; nothing judged")
    line = (f"{result['file']}: {result['verdict'].upper()}  max window score {result['max_window_score']:.4g} "
            f"(threshold {result['threshold']:.4g}; {describe_detector_scores(result['max_window_detector_scores'])}), "
            f"{result['windows_above']} of {result['windows']} windows above")
    if result["windows_above"]:
        times = [t for t, s in zip(result["window_end_times"], result["window_scores"]) if s > result["threshold"]]
        shown = ", ".join(f"{t:.1f}" for t in times[:SHOWN_ALARM_TIMES])
        line += f"; windows ending at {shown}{' ...' if len(times) > SHOWN_ALARM_TIMES else ''} s"
    return line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=pathlib.Path, required=True, help="calibrated bundle directory")
    parser.add_argument("files", type=pathlib.Path, nargs="+", metavar="FILE.wav", help="recordings to score")
    parser.add_argument("--json", action="store_true", help="one JSON object per file (all window scores)")
    parser.add_argument("--channel", default="0", help="channel to analyse (index or 'mean'); default 0")
    parser.add_argument("--threads", type=int, default=1, help="TFLite interpreter threads")


def run(args: argparse.Namespace) -> int:
    channel = parse_channel(args.channel)
    pipeline = Pipeline(Bundle.load(args.bundle), num_threads=args.threads)
    check_known_answer(pipeline)
    anomalous = failed = False
    for path in args.files:
        try:
            result = score_file(pipeline, path, channel)
        except AudioError as exc:
            print(f"humwatch score: error: {exc}", file=sys.stderr)
            failed = True
            continue
        anomalous |= result["verdict"] == "anomaly"
        failed |= result["verdict"] == "too_short"
        print(json.dumps(result) if args.json else describe(result), flush=True)
    return 2 if failed else int(anomalous)

