"""`humwatch evidence list|show ID|export ID DIR`: the alarms' evidence kept on the board (the audio stays here)."""
from __future__ import annotations

import argparse
import json
import pathlib

from humwatch.agent.errors import ConfigError
from humwatch.agent.service.evidence import Evidence, EvidenceStore, is_alarm_id
from humwatch.agent.service.feedback import LAST, add_state_arguments, state_dir_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every kept alarm, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per alarm")
    show = actions.add_parser("show", help="one alarm's summary, verdict and file paths")
    show.add_argument("alarm_id", metavar="ID", help="an alarm id (or 'last')")
    show.add_argument("--json", action="store_true", help="the whole evidence.json (and verdict) as JSON")
    export = actions.add_parser("export", help="copy one alarm's files into DIR/ID/")
    export.add_argument("alarm_id", metavar="ID", help="an alarm id (or 'last')")
    export.add_argument("destination", type=pathlib.Path, metavar="DIR")
    for sub in (listing, show, export):
        add_state_arguments(sub)


def run(args: argparse.Namespace) -> int:
    store = EvidenceStore(state_dir_of(args))
    if args.action == "list":
        kept = store.all()
        for evidence in kept:
            print(json.dumps(_brief(evidence)) if args.json else describe(evidence))
        if not kept and not args.json:
            print(f"{store.root}: no evidence kept")
        return 0
    evidence = _find(store, args.alarm_id)
    if args.action == "show":
        if args.json:
            print(json.dumps({**evidence.summary, "verdict": evidence.verdict, "folder": str(evidence.folder)}))
        else:
            print(describe(evidence))
            for name in evidence.summary.get("files", []):
                print(f"  {evidence.folder / name}  sha256 {evidence.summary.get('sha256', {}).get(name, '?')}")
        return 0
    for copy in store.export(evidence.id, args.destination):
        print(copy)
    return 0


def _find(store: EvidenceStore, alarm_id: str) -> Evidence:
    if alarm_id == LAST:
        found = store.latest()
    elif not is_alarm_id(alarm_id):
        raise ConfigError(f"ID {alarm_id!r}: an alarm id is 32 lower-case hex digits (or 'last')")
    else:
        found = store.get(alarm_id)
    if found is None:
        raise ConfigError(f"{store.root}: no evidence kept for alarm {alarm_id}")
    return found


def _brief(evidence: Evidence) -> dict:
    alarm = evidence.summary.get("alarm", {})
    return {"id": evidence.id, "time": alarm.get("time"), "kind": alarm.get("kind"),
            "window_score": alarm.get("window_score"), "threshold": alarm.get("threshold"),
            "seconds": evidence.summary.get("seconds"),
            "verdict": evidence.verdict.get("verdict") if evidence.verdict else None}


def describe(evidence: Evidence) -> str:
    """One line: id, time, kind, score against threshold, seconds kept, verdict."""
    b = _brief(evidence)
    score = f"{b['window_score']:.3g}" if isinstance(b["window_score"], (int, float)) else "none"
    threshold = f"{b['threshold']:.3g}" if isinstance(b["threshold"], (int, float)) else "?"
    return (f"{b['id']}  {b['time']}  {b['kind']}  score {score} (threshold {threshold})  {b['seconds']} s  "
            f"verdict {b['verdict'] or 'none'}")
