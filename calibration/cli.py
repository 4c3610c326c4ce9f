"""`humwatch calibrate`: learn a machine's normal sound from the microphone or WAV files and write a model bundle.

Also `humwatch calibrate --rollback`, which points the bundle back at the version the last calibration replaced.
The agent picks up a new bundle on SIGHUP or restart.
"""
from __future__ import annotations

import argparse
import logging
import pathlib

from humwatch.agent.durable import refuse_unwritable
from humwatch.agent.errors import ConfigError
from humwatch.agent.model.bundle import versions_dir
from humwatch.agent.paths import default_model
from humwatch.calibration.threshold import DEFAULT_FALSE_ALARMS_PER_DAY

log = logging.getLogger(__name__)

STATE_DIR = pathlib.Path("/var/lib/humwatch")
# --detector is the paper's choice of detector on CNN features: a shorthand for the presets that fit it alone.
DETECTOR_PRESETS = {"gmm": "paper", "ocsvm": "cnn-ocsvm"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="*", metavar="WAV", help="WAV files or folders of normal sound")
    parser.add_argument("--record", type=float, metavar="MINUTES",
                        help="record this many minutes from the microphone instead of reading WAV files")
    parser.add_argument("--device", metavar="NAME",
                        help="input device to record from: part of its name or its index (default: the config's "
                             "audio.device, else the system default)")
    parser.add_argument("--config", type=pathlib.Path, metavar="FILE",
                        help="the agent's humwatch.toml: bundle path, machine name, audio device and threads")
    parser.add_argument("--model", type=pathlib.Path, metavar="EXTRACTOR.tflite",
                        help=f"feature extractor (default: {default_model()})")
    parser.add_argument("--out", type=pathlib.Path, metavar="BUNDLE_DIR",
                        help="bundle path (default: the config's model.bundle, else "
                             f"{STATE_DIR}/<machine>/bundle)")
    parser.add_argument("--machine", metavar="NAME", help="machine name (default: the config's machine.name)")
    from humwatch.calibration.selection import PRESETS  # the names only; scikit-learn is already needed to calibrate

    parser.add_argument("--preset", choices=tuple(PRESETS), default=None,
                        help="pipeline: 'window-knn' (default) measures each 10 s window's modulation spectrum and "
                             "CNN features against every normal window heard, and adds a steady tone beyond a gate; "
                             "'auto' chooses per machine among the patch-level candidates by synthetic faults; "
                             "'paper' is Müller et al.'s GMM-80 on CNN features; any other name fits that candidate "
                             "alone")
    parser.add_argument("--detector", choices=tuple(DETECTOR_PRESETS), default=None,
                        help="fit only this detector on CNN features (gmm = --preset paper, ocsvm = --preset "
                             "cnn-ocsvm)")
    parser.add_argument("--false-alarms-per-day", type=float, default=None, metavar="RATE",
                        help="false alarms per day the threshold aims at on normal sound (default: 1 per week; "
                             "with --add-evidence: the bundle's own)")
    parser.add_argument("--report-dir", type=pathlib.Path, metavar="DIR",
                        help="also write the report (PNG and text) here; it is always kept inside the bundle")
    parser.add_argument("--add", action="store_true",
                        help="extend the bundle with the normal sound given (a new speed, load or season) instead "
                             "of calibrating from scratch; needs a window-knn bundle. The false-alarm rate stays the "
                             "bundle's unless --false-alarms-per-day is given")
    parser.add_argument("--add-evidence", nargs="?", const=True, metavar="STATE_DIR",
                        help="add the alarm clips an operator marked normal (`humwatch feedback ID normal`) to the "
                             "bundle's normal sound, as --add does; STATE_DIR defaults to the config's state.dir. "
                             "Clips marked fault are never added")
    parser.add_argument("--rollback", action="store_true",
                        help="restore the bundle the last calibration replaced, and do nothing else")


def run(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    machine = args.machine or (config.machine.name if config else "")
    out = _bundle_path(args.out, config, machine)
    if args.rollback:
        return _rollback(args, out)
    if args.false_alarms_per_day is not None and not args.false_alarms_per_day > 0:
        raise ConfigError(f"--false-alarms-per-day {args.false_alarms_per_day}: must be greater than 0")
    if (args.add or args.add_evidence is not None) and (args.preset or args.detector or args.model):
        raise ConfigError("--add and --add-evidence keep the bundle's pipeline and extractor: give no --preset, "
                          "--detector or --model")
    if args.add_evidence is not None:
        return _add_evidence(args, config, out)
    for folder in (out.absolute().parent, versions_dir(out.absolute())):  # where the link and the versions go
        refuse_unwritable(f"--out {out}" if args.out else f"bundle path {out}", folder)
    if args.report_dir is not None:
        refuse_unwritable(f"--report-dir {args.report_dir}", args.report_dir)
    from humwatch.calibration.calibrate import (  # scikit-learn, TFLite
        DEFAULT_PRESET,
        MIN_MINUTES,
        STEADY_MINUTES,
        calibrate,
    )
    from humwatch.calibration.collect import record, split_blocks, wav_blocks

    if args.record is not None and args.record < MIN_MINUTES:
        raise ConfigError(f"--record {args.record:g}: calibration needs at least {MIN_MINUTES} min of normal sound "
                          f"({STEADY_MINUTES} or more give a steadier threshold)")

    if args.record is not None and args.sources:
        raise ConfigError("give either --record MINUTES or WAV files/folders, not both")
    if args.record is not None:
        audio = config.audio if config else None
        device = _device(args.device) if args.device is not None else (audio.device if audio else None)
        samples = record(args.record, device, **({"rate": audio.rate, "channels": audio.channels,
                                                  "channel": audio.channel} if audio else {}))
        blocks = split_blocks("recording", samples)
    elif args.sources:
        blocks = wav_blocks(args.sources)
    else:
        raise ConfigError("no calibration audio: give WAV files or folders, or --record MINUTES")
    if args.preset and args.detector:
        raise ConfigError("give --preset or --detector, not both")
    if args.add:
        from humwatch.calibration.calibrate import extend_bundle

        result = extend_bundle(blocks, out, args.false_alarms_per_day, config.model.threads if config else 1)
        print("\n".join(result.summary_lines()))
        print("the agent uses the new bundle after `systemctl reload` (SIGHUP) or a restart")
        return 0
    preset = DETECTOR_PRESETS[args.detector] if args.detector else (args.preset or DEFAULT_PRESET)
    result = calibrate(blocks, args.model or default_model(), out, preset=preset,
                       false_alarms_per_day=args.false_alarms_per_day or DEFAULT_FALSE_ALARMS_PER_DAY,
                       machine=machine, report_dir=args.report_dir,
                       num_threads=config.model.threads if config else 1)
    print("\n".join(result.summary_lines()))
    print("the agent uses the new bundle after `systemctl reload` (SIGHUP) or a restart")
    return 0


def _add_evidence(args: argparse.Namespace, config, out: pathlib.Path) -> int:
    from humwatch.agent.service.evidence import evidence_root, labelled_audio
    from humwatch.calibration.calibrate import extend_bundle
    from humwatch.calibration.collect import wav_blocks

    if args.record is not None or args.sources:
        raise ConfigError("--add-evidence adds the clips marked normal in the state directory; give no --record "
                          "or WAV files (--add adds those)")
    if args.add_evidence is True:
        if config is None:
            raise ConfigError("--add-evidence: give the state directory (--add-evidence STATE_DIR) or --config FILE")
        state_dir = config.state.dir
    else:
        state_dir = pathlib.Path(args.add_evidence)
    clips = labelled_audio(state_dir, "normal")
    if not clips:
        raise ConfigError(f"--add-evidence: {evidence_root(state_dir)} holds no alarm marked normal "
                          "(`humwatch feedback ID normal`)")
    for folder in (out.absolute().parent, versions_dir(out.absolute())):
        refuse_unwritable(f"bundle path {out}", folder)
    result = extend_bundle(wav_blocks(clips), out, args.false_alarms_per_day, config.model.threads if config else 1)
    print("\n".join(result.summary_lines()))
    print(f"added {len(clips)} clip(s) marked normal; `humwatch calibrate --rollback` restores the previous bundle; "
          "the agent uses the new one after `systemctl reload` (SIGHUP) or a restart")
    return 0


def _rollback(args: argparse.Namespace, out: pathlib.Path) -> int:
    from humwatch.agent.model.bundle import rollback

    if args.sources or args.record is not None:
        raise ConfigError("--rollback takes no audio; it only restores the previous bundle")
    restored = rollback(out)
    print(f"{out} now points at {restored}; the agent uses it after `systemctl reload` (SIGHUP) or a restart")
    return 0


def _load_config(path: pathlib.Path | None):
    if path is None:
        return None
    from humwatch.agent.config import load_config

    return load_config(path)


def _bundle_path(out: pathlib.Path | None, config, machine: str) -> pathlib.Path:
    if out is not None:
        return out
    if config is not None:
        return config.model.bundle
    if machine:
        if "/" in machine or machine.startswith("."):
            raise ConfigError(f"--machine {machine!r}: a machine name has no '/' and does not start with '.'")
        return STATE_DIR / machine / "bundle"
    raise ConfigError("where should the bundle go? give --out BUNDLE_DIR, --config FILE or --machine NAME")


def _device(text: str) -> int | str:
    """A device index given as digits, else (part of) a device name."""
    return int(text) if text.isdigit() else text
