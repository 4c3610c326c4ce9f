"""`humwatch evaluate`: ROC AUC of backbones × detectors and the autoencoder peers, with the paper's protocol."""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

from humwatch.agent.contract import SCALINGS, FrontEndParams
from humwatch.agent.durable import refuse_unwritable
from humwatch.agent.errors import ConfigError
from humwatch.agent.signal.audio import parse_channel
from humwatch.evaluation.cache import FeatureCache
from humwatch.evaluation.datasets import find_machines
from humwatch.evaluation.features import cnn_source, logmel_source, patch_db_source
from humwatch.evaluation.methods import DetectorMethod, Method, PresetMethod
from humwatch.evaluation.protocol import PAPER_NORMAL_TEST
from humwatch.evaluation.report import markdown_table, write_reports
from humwatch.evaluation.runner import run_protocol

DETECTORS = ("gmm", "ocsvm", "bgmm", "iforest", "kde")
PEERS = ("dcae", "dense_ae", "logmel_gmm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=pathlib.Path, metavar="DATASET_DIR", nargs="?",
                        help="a MIMII-layout or DCASE 2020-layout dataset folder")
    parser.add_argument("--evidence", type=pathlib.Path, metavar="STATE_DIR",
                        help="instead of a dataset: score the site's own labelled alarm clips (the evidence an "
                             "operator gave a verdict on) with --bundle, as the agent would")
    parser.add_argument("--bundle", type=pathlib.Path, metavar="DIR", help="the bundle --evidence is scored with")
    parser.add_argument("--models", nargs="*", type=pathlib.Path, default=[],
                        help="converted TFLite feature extractors (humwatch convert), e.g. float32 and int8")
    parser.add_argument("--detectors", default="gmm,ocsvm",
                        help=f"comma list from {','.join(DETECTORS)}, or 'none' (default: %(default)s)")
    parser.add_argument("--presets", default="auto",
                        help="comma list of `humwatch calibrate --preset` names fitted as calibrate fits them, per "
                             "model: auto (the default: chosen per machine by synthetic faults), paper, or any "
                             "candidate pipeline; or 'none'")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma list from {','.join(PEERS)}, or 'none' (default: all)")
    parser.add_argument("--seeds", type=int, default=5, help="protocol repetitions, seeds 0..N-1 (default: 5)")
    parser.add_argument("--max-normal-test", type=int, default=PAPER_NORMAL_TEST,
                        help="normal (and abnormal) test clips per seed; fewer when the data are smaller")
    parser.add_argument("--out", type=pathlib.Path, help="folder for the table, CSV and figure (with a dataset)")
    parser.add_argument("--cache", type=pathlib.Path, help="feature cache folder (default: OUT/cache)")
    parser.add_argument("--channel", default="0", help="WAV channel to use (MIMII reference mic: 0) or 'mean'")
    parser.add_argument("--scaling", choices=SCALINGS, default="minmax", help="patch image scaling (paper: minmax)")
    parser.add_argument("--threads", type=int, default=1, help="TFLite threads")
    parser.add_argument("--dense-ae-epochs", type=int, default=None, help="dense AE training epochs")
    parser.add_argument("--dcae-epochs", type=int, default=None, help="DCAE training epochs")


def _list(text: str, allowed: tuple, flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip() and t.strip() != "none"]
    unknown = [t for t in items if t not in allowed]
    if unknown:
        raise ConfigError(f"{flag}: unknown {', '.join(unknown)}; choose from {','.join(allowed)}")
    return items


def build_methods(args: argparse.Namespace) -> list[Method]:
    channel = parse_channel(args.channel)
    from humwatch.calibration.selection import PRESETS

    detectors = _list(args.detectors, DETECTORS, "--detectors")
    presets = _list(args.presets, tuple(PRESETS), "--presets")
    peers = _list(args.peers, PEERS, "--peers")
    methods: list[Method] = []
    params = FrontEndParams(scaling=args.scaling)
    for model in args.models:
        if not model.is_file():
            raise ConfigError(f"{model}: model file not found")
        source = cnn_source(model, params, channel, args.threads)
        methods += [DetectorMethod(source, kind) for kind in detectors]
        methods += [PresetMethod(source, patch_db_source(channel), params, channel, preset)
                    for preset in presets]
    if "dcae" in peers:
        from humwatch.evaluation.autoencoders import DCAE_EPOCHS, ConvAutoencoder
        methods.append(ConvAutoencoder(patch_db_source(channel), args.dcae_epochs or DCAE_EPOCHS))
    if "dense_ae" in peers:
        from humwatch.evaluation.autoencoders import DENSE_EPOCHS, DenseAutoencoder
        methods.append(DenseAutoencoder(logmel_source(channel), args.dense_ae_epochs or DENSE_EPOCHS))
    if "logmel_gmm" in peers:
        from humwatch.evaluation.logmel_gmm import LogMelGmm
        methods.append(LogMelGmm(logmel_source(channel)))
    if not methods:
        raise ConfigError("nothing to evaluate: give --models with --detectors or --presets, or --peers")
    return methods


def run(args: argparse.Namespace) -> int:
    if args.evidence is not None:
        from humwatch.evaluation.evidence import evaluate_evidence

        if args.dataset is not None:
            raise ConfigError("give a DATASET_DIR or --evidence STATE_DIR, not both")
        if args.bundle is None:
            raise ConfigError("--evidence needs --bundle DIR: the bundle its clips are scored with")
        return evaluate_evidence(args.evidence, args.bundle, args.threads)
    if args.dataset is None or args.out is None:
        raise ConfigError("give DATASET_DIR and --out DIR (or --evidence STATE_DIR --bundle DIR)")
    if args.seeds < 1 or args.max_normal_test < 1:
        raise ConfigError("--seeds and --max-normal-test must be at least 1")
    refuse_unwritable(f"--out {args.out}", args.out)
    machines = find_machines(args.dataset)
    methods = build_methods(args)
    cache = FeatureCache(args.cache or args.out / "cache")
    started = time.monotonic()
    print(f"evaluating {len(methods)} methods on {len(machines)} machines × {args.seeds} seeds", file=sys.stderr)
    results = run_protocol(machines, methods, list(range(args.seeds)), cache, args.max_normal_test,
                           progress=lambda line: print(line, file=sys.stderr, flush=True))
    title = f"ROC AUC, {args.dataset.name}, {args.seeds} seed{'' if args.seeds == 1 else 's'}"
    files = write_reports(results, args.out, title)
    print(markdown_table(results))
    print(f"wrote {', '.join(str(p) for p in files.values())} in {time.monotonic() - started:.0f} s "
          f"(feature cache: {cache.hits} hits, {cache.misses} computed)", file=sys.stderr)
    return 0
