"""`humwatch evaluate`: backbones × detectors, calibrate's presets and the peers, side by side on the same split:
the official DCASE 2021–2025 split and figures when the dataset has that layout, else the paper's protocol."""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

from humwatch.agent.contract import SCALINGS, FrontEndParams
from humwatch.agent.durable import refuse_unwritable
from humwatch.agent.errors import ConfigError
from humwatch.agent.signal.audio import parse_channel
from humwatch.calibration.calibrate import DEFAULT_PRESET
from humwatch.evaluation.cache import FeatureCache
from humwatch.evaluation.datasets import find_machines
from humwatch.evaluation.dcase_layout import find_sections
from humwatch.evaluation.features import cnn_source, dcase2023_logmel_source, patch_db_source
from humwatch.evaluation.methods import DetectorMethod, Method, PresetMethod
from humwatch.evaluation.protocol import PAPER_NORMAL_TEST
from humwatch.evaluation.report import markdown_table, operating_point_table, write_reports
from humwatch.evaluation.runner import run_protocol

DETECTORS = ("gmm", "ocsvm", "bgmm", "iforest", "kde")
PEERS = ("dcase2023_ae", "knn", "logmel_gmm", "dcae")
DEFAULT_PEERS = ("dcase2023_ae", "knn")
LOGMEL_GMM_PRESET = "logmel-gmm"  # the log-Mel GMM peer is the product's own preset: one implementation
DEFAULT_PRESETS = tuple(dict.fromkeys((DEFAULT_PRESET, "paper", LOGMEL_GMM_PRESET)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=pathlib.Path, metavar="DATASET_DIR", nargs="?",
                        help="a dataset folder in the DCASE 2021–2025 layout (official split), or the MIMII or DCASE "
                             "2020 layout (the paper's protocol)")
    parser.add_argument("--evidence", type=pathlib.Path, metavar="STATE_DIR",
                        help="instead of a dataset: score the site's own labelled alarm clips (the evidence an "
                             "operator gave a verdict on) with --bundle, as the agent would")
    parser.add_argument("--bundle", type=pathlib.Path, metavar="DIR", help="the bundle --evidence is scored with")
    parser.add_argument("--models", nargs="*", type=pathlib.Path, default=[],
                        help="converted TFLite feature extractors (humwatch convert), e.g. float32 and int8")
    parser.add_argument("--detectors", default="gmm,ocsvm",
                        help=f"comma list from {','.join(DETECTORS)}, or 'none' (default: %(default)s)")
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS),
                        help="comma list of `humwatch calibrate --preset` names fitted as calibrate fits them, per "
                             f"model, or 'none' (default: %(default)s; {DEFAULT_PRESET} is calibrate's default)")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                        help=f"comma list from {','.join(PEERS)}, or 'none' (default: %(default)s); knn runs on "
                             f"each model's patch features; logmel_gmm adds the {LOGMEL_GMM_PRESET} preset")
    parser.add_argument("--seeds", type=int, default=5, help="protocol repetitions, seeds 0..N-1 (default: 5)")
    parser.add_argument("--max-normal-test", type=int, default=PAPER_NORMAL_TEST,
                        help="normal (and abnormal) test clips per seed; fewer when the data are smaller")
    parser.add_argument("--out", type=pathlib.Path, help="folder for the table, CSV and figure (with a dataset)")
    parser.add_argument("--cache", type=pathlib.Path, help="feature cache folder (default: OUT/cache)")
    parser.add_argument("--channel", default="0", help="WAV channel to use (MIMII reference mic: 0) or 'mean'")
    parser.add_argument("--scaling", choices=SCALINGS, default="minmax", help="patch image scaling (paper: minmax)")
    parser.add_argument("--threads", type=int, default=1, help="TFLite threads")
    parser.add_argument("--train-minutes", type=float, default=None,
                        help="DCASE 2021–2025 layout: fit on the first N minutes of train/, round-robin over the "
                             "attribute groups (default: all of train/)")
    parser.add_argument("--ae-epochs", type=int, default=None, help="DCASE 2023 baseline AE training epochs "
                                                                    "(default: 100, as published)")
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
    if "logmel_gmm" in peers:
        presets = list(dict.fromkeys([*presets, LOGMEL_GMM_PRESET]))
    methods: list[Method] = []
    params = FrontEndParams(scaling=args.scaling)
    for model in args.models:
        if not model.is_file():
            raise ConfigError(f"{model}: model file not found")
        source = cnn_source(model, params, channel, args.threads)
        methods += [DetectorMethod(source, kind) for kind in detectors]
        methods += [PresetMethod(model, channel, preset) for preset in presets]
        if "knn" in peers:
            from humwatch.evaluation.knn import PatchKnn
            methods.append(PatchKnn(source))
    if "dcae" in peers:
        from humwatch.evaluation.autoencoders import DCAE_EPOCHS, ConvAutoencoder
        methods.append(ConvAutoencoder(patch_db_source(channel), args.dcae_epochs or DCAE_EPOCHS))
    if "dcase2023_ae" in peers:
        from humwatch.evaluation.autoencoders import AE2023_EPOCHS, Dcase2023Autoencoder
        methods.append(Dcase2023Autoencoder(dcase2023_logmel_source(channel), args.ae_epochs or AE2023_EPOCHS))
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
    if args.train_minutes is not None and args.train_minutes <= 0:
        raise ConfigError("--train-minutes must be positive")
    refuse_unwritable(f"--out {args.out}", args.out)
    if not args.dataset.is_dir():
        raise ConfigError(f"{args.dataset}: dataset folder not found")
    sections = find_sections(args.dataset)
    if sections:
        return _run_official(args, sections)
    if args.train_minutes is not None:
        raise ConfigError(f"--train-minutes: {args.dataset} is not in the DCASE 2021–2025 layout "
                          "(section_XX_<domain>_train_normal_*.wav); the paper's protocol splits all clips")
    return _run_paper(args)


def _run_official(args: argparse.Namespace, sections) -> int:
    from humwatch.evaluation.official import run_official
    from humwatch.evaluation.official_report import markdown_table as official_table
    from humwatch.evaluation.official_report import write_official_reports

    methods = build_methods(args)
    cache = FeatureCache(args.cache or args.out / "cache")
    seeds = list(range(args.seeds))
    started = time.monotonic()
    print(f"evaluating {len(methods)} methods on {len(sections)} sections (official DCASE split) × {args.seeds} "
          f"seed{'' if args.seeds == 1 else 's'}", file=sys.stderr)
    results = run_official(sections, methods, seeds, cache, args.train_minutes,
                           progress=lambda line: print(line, file=sys.stderr, flush=True))
    minutes = "all of train/" if args.train_minutes is None else f"first {args.train_minutes:g} min of train/"
    title = (f"DCASE protocol, {args.dataset.name}, fitted on {minutes}, {args.seeds} "
             f"seed{'' if args.seeds == 1 else 's'}")
    files = write_official_reports(results, args.out, title,
                                   {s.name: [c.path.name for c in s.test] for s in sections})
    print(official_table(results))
    print(f"wrote {', '.join(str(p) for p in files.values())} in {time.monotonic() - started:.0f} s "
          f"(feature cache: {cache.hits} hits, {cache.misses} computed)", file=sys.stderr)
    return 0


def _run_paper(args: argparse.Namespace) -> int:
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
    print(operating_point_table(results))
    print(f"wrote {', '.join(str(p) for p in files.values())} in {time.monotonic() - started:.0f} s "
          f"(feature cache: {cache.hits} hits, {cache.misses} computed)", file=sys.stderr)
    return 0
