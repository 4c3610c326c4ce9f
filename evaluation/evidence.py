"""`humwatch evaluate --evidence STATE_DIR --bundle DIR`: how a bundle judges the site's own labelled alarms.

Every kept alarm clip an operator gave a verdict on is scored by `humwatch score`'s code (the agent's streaming
pipeline): a clip marked fault should stay above the threshold, one marked normal should fall below it (after it
was added with `calibrate --add-evidence`, or by a recalibration). Exit status 0; the table is the result.
"""
from __future__ import annotations

import json
import pathlib

from humwatch.agent.errors import ConfigError
from humwatch.agent.model.bundle import Bundle
from humwatch.agent.model.pipeline import Pipeline
from humwatch.agent.service.evidence import VERDICTS, labelled_audio
from humwatch.agent.service.score import score_file


def score_evidence(state_dir: pathlib.Path, pipeline: Pipeline) -> list[dict]:
    """One result per labelled clip: alarm id, verdict, max window score, whether the bundle agrees."""
    results = []
    for verdict in VERDICTS:
        for path in labelled_audio(state_dir, verdict):
            scored = score_file(pipeline, path)
            above = scored["windows_above"] > 0
            results.append({"alarm_id": path.parent.name, "verdict": verdict, "file": str(path),
                            "max_window_score": scored["max_window_score"], "threshold": scored["threshold"],
                            "judged": scored["verdict"], "agrees": above == (verdict == "fault")})
    return results


def evaluate_evidence(state_dir: pathlib.Path, bundle_dir: pathlib.Path, threads: int = 1,
                      as_json: bool = False) -> int:
    """Print each labelled clip's score and whether the bundle agrees with its verdict; returns 0."""
    pipeline = Pipeline(Bundle.load(bundle_dir), num_threads=threads)
    results = score_evidence(state_dir, pipeline)
    if not results:
        raise ConfigError(f"{state_dir}: no kept alarm has a verdict yet (`humwatch feedback ID normal|fault`)")
    for r in results:
        score = "none" if r["max_window_score"] is None else f"{r['max_window_score']:.4g}"
        print(json.dumps(r) if as_json else
              f"{r['alarm_id']}  marked {r['verdict']:<6}  max window score {score} (threshold {r['threshold']:.4g})"
              f"  judged {r['judged']}  {'agrees' if r['agrees'] else 'DISAGREES'}")
    for verdict in VERDICTS:
        mine = [r for r in results if r["verdict"] == verdict]
        if mine:
            print(f"marked {verdict}: {sum(r['agrees'] for r in mine)} of {len(mine)} judged the same by bundle "
                  f"{pipeline.bundle.id}")
    return 0
