"""The `humwatch` command: one entry point, one subcommand per job.

Subcommands are listed explicitly and imported only when chosen, so `humwatch run` on the board never loads
scikit-learn or tensorflow.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from humwatch.agent.errors import HumwatchError

# name -> (module, one-line help). Each module defines add_arguments(parser) and run(args) -> int.
SUBCOMMANDS = {
    "run": ("humwatch.agent.service.run", "run the agent: listen, score and publish alarms over MQTT"),
    "score": ("humwatch.agent.service.score", "score WAV recordings offline with a calibrated bundle"),
    "listen": ("humwatch.agent.transport.listen", "print alarms and state changes from the broker"),
    "evidence": ("humwatch.agent.service.evidence_cli", "list, show or export the sound and picture kept of alarms"),
    "feedback": ("humwatch.agent.service.feedback", "record an operator's verdict on an alarm: normal or fault"),
    "check-config": ("humwatch.agent.config", "validate a configuration file and exit"),
    "install-service": ("humwatch.agent.service.install",
                        "install the systemd unit, user, directories and example config"),
    "calibrate": ("humwatch.calibration.cli", "learn a machine's normal sound and write a model bundle"),
    "synth": ("humwatch.evaluation.synth_cli", "write a synthetic machine-sound dataset in the MIMII layout"),
    "convert": ("humwatch.convert.cli", "convert an ImageNet CNN to TFLite feature extractors (float32 and int8)"),
    "evaluate": ("humwatch.evaluation.cli", "measure detection quality (ROC AUC) with the paper's protocol"),
    "demo": ("humwatch.demo", "show the whole product on a synthetic pump: calibrate, run, alarm"),
    "docs": ("humwatch.docs", "write the configuration and MQTT reference pages (docs/) from the code"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="humwatch", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen command's module is imported
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
            sp.set_defaults(handler=module.run)
    return parser


# journald takes a "<N>" syslog priority at the start of a line on a service's stderr (SyslogLevelPrefix=, on by
# default): with it, `journalctl -p warning` shows the agent's warnings and errors; without, every line is "info".
SYSLOG_PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def stderr_is_journal() -> bool:
    """Whether stderr is connected to the journal: systemd sets JOURNAL_STREAM to that stream's device:inode."""
    try:
        device, inode = map(int, os.environ["JOURNAL_STREAM"].split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (KeyError, ValueError, OSError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def with_priority(text: str, level: int) -> str:
    """Every line of `text` marked with the syslog priority of `level`, as journald reads it."""
    prefix = f"<{SYSLOG_PRIORITIES.get(level, 6)}>"
    return "\n".join(prefix + line for line in text.splitlines())


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return with_priority(super().format(record), record.levelno)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    journal = stderr_is_journal()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter((JournalFormatter if journal else logging.Formatter)("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    try:
        return int(args.handler(args) or 0)
    except HumwatchError as exc:
        lines = "\n".join(f"humwatch {args.command}: error: {line}" for line in str(exc).splitlines())
        print(with_priority(lines, logging.ERROR) if journal else lines, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
