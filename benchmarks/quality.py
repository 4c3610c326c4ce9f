"""Detection quality of the candidate pipelines and of per-machine selection (issue 9), with the paper's protocol.

Per machine and seed: `evaluation.protocol.split` (normal test clips drawn at random, as many abnormal ones,
training on the other normal clips). The training clips are split again as `humwatch calibrate` splits its
blocks (one in four held out, `calibration.threshold.heldout_mask`); every candidate of `calibration.candidates`
is fitted on the rest, standardised on the held-out quarter, and `auto` is the candidate
`calibration.selection.choose_pipeline` picks from synthetic faults injected into that quarter. Abnormal clips
are only ever scored. A clip scores the mean of its patch scores (one 10 s window); ROC AUC per machine.

Configurations (`--configs`): sq11-int8 (SqueezeNet 1.1 int8, per-patch min-max: the default), sq11-float32,
sq10-int8, sq11-int8-fixed (a fixed dB window calibrated on the machine's normal Mel dB: the 1st and 99.9th
percentile of seed 0's training clips). The default configuration also measures variants of its CNN detectors
(PCA without whitening, fixed component count, OC-SVM nu and gamma).

`--real DIR` (a DCASE-layout folder with few anomalies, e.g. /work/shared/audio/dcase2020-id00) adds a held-out
injected-fault AUC (faults of other seeds than the selection's) and the rank of each real anomalous clip among the
held-out normal clips.

Usage: python benchmarks/quality.py DATASET --models-dir DIR --out DIR [--seeds 3] [--configs sq11-int8,...]
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import pathlib
import shutil
import sys
import time
from dataclasses import dataclass

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # as calibrate runs: on a busy 2-core machine BLAS threads make fits 5x slower

import numpy as np  # noqa: E402

from humwatch.agent.contract import WINDOW_PATCHES, FrontEndParams  # noqa: E402
from humwatch.agent.model.extractor import Extractor  # noqa: E402
from humwatch.agent.signal.audio import read_wav  # noqa: E402
from humwatch.agent.signal.frontend import images_from_db  # noqa: E402
from humwatch.calibration.candidates import CANDIDATES, CNN, Part, fit_part, score_part  # noqa: E402
from humwatch.calibration.faults import fault_grid, inject  # noqa: E402
from humwatch.calibration.selection import NormalClip, cached_clip, choose_from_files, leaves_default, prepare_clip  # noqa: E402
from humwatch.calibration.threshold import DEFAULT_FALSE_ALARMS_PER_DAY, choose_threshold, heldout_mask  # noqa: E402
from humwatch.evaluation.cache import FeatureCache  # noqa: E402
from humwatch.evaluation.datasets import MachineClips, find_machines  # noqa: E402
from humwatch.evaluation.features import cnn_source, patch_db_source  # noqa: E402
from humwatch.evaluation.protocol import roc_auc, split  # noqa: E402

log = logging.getLogger("quality")

CONFIGS = {  # name -> (model file stem, scaling)
    "sq11-int8": ("squeezenet1_1-int8", "minmax"),
    "sq11-float32": ("squeezenet1_1-float32", "minmax"),
    "sq10-int8": ("squeezenet1_0-int8", "minmax"),
    "sq11-int8-fixed": ("squeezenet1_1-int8", "calibrated"),
}
MAIN = "sq11-int8"
SECONDARY_CANDIDATES = ("paper", "cnn-pca-gmm", "logmel-gmm", "logmel-sd", "fusion", "fusion-max", "fusion-2s",
                        "fusion-timing")
VARIANTS = (  # measured on the main configuration only
    Part("pca64-gmm-bic", "gmm", CNN, pca_components=64, bic_components=(1, 2, 4, 8, 16)),
    Part("pca64w-gmm8", "gmm", CNN, pca_components=64, pca_whiten=True, overrides=(("n_components", 8),)),
    Part("pca64w-gmm16", "gmm", CNN, pca_components=64, pca_whiten=True, overrides=(("n_components", 16),)),
    Part("ocsvm-nu0.01", "ocsvm", CNN, overrides=(("nu", 0.01),)),
    Part("ocsvm-gamma/10", "ocsvm", CNN, overrides=(("gamma", "scale/10"),)),
    Part("pca64w-ocsvm", "ocsvm", CNN, pca_components=64, pca_whiten=True),
)
CALIBRATED_PERCENTILES = (1.0, 99.9)
REAL_TEST_NORMAL = 25


@dataclass
class Row:
    config: str
    method: str
    machine: str
    seed: int
    auc: float
    note: str = ""


class Features:
    """Cached dB patches and CNN features of one configuration for the clips of a machine."""

    def __init__(self, config: str, models_dir: pathlib.Path, cache: FeatureCache, threads: int) -> None:
        stem, self.scaling = CONFIGS[config]
        self.model_path = models_dir / f"{stem}.tflite"
        self.cache = cache
        self.db_source = patch_db_source(0)
        self.extractor = Extractor(self.model_path, num_threads=threads)
        self.threads = threads
        self.params = FrontEndParams()
        self._cnn_source = cnn_source(self.model_path, self.params, 0, threads) if self.scaling == "minmax" else None

    def calibrate_window(self, train: tuple[pathlib.Path, ...]) -> None:
        """The fixed dB window from normal training clips (only for the 'calibrated' scaling)."""
        if self.scaling != "calibrated":
            return
        db = np.concatenate([d.ravel() for d in self.db_source.clips(train, self.cache)])
        low, high = np.percentile(db, CALIBRATED_PERCENTILES)
        self.params = FrontEndParams(scaling="fixed", db_low=float(low), db_high=float(high))

    def db(self, path: pathlib.Path) -> np.ndarray:
        return self.cache.get(path, self.db_source.description, self.db_source.compute)

    def cnn(self, path: pathlib.Path) -> np.ndarray:
        if self._cnn_source is not None:
            return self.cache.get(path, self._cnn_source.description, self._cnn_source.compute)
        description = {"source": "cnn", "extractor_sha256": self.extractor.sha256, "frontend": self.params.to_dict(),
                       "channel": 0}
        return self.cache.get(path, description,
                              lambda p: self.extractor.embed(images_from_db(self.db(p), self.params)))

    def features(self, path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
        return self.db(path), self.cnn(path)

    def clip(self, path: pathlib.Path) -> NormalClip:
        """A clip for scoring: its cached features, and its timing profiles from the file."""
        return cached_clip(path, 0, self.features(path))


def measure_machine(machine: MachineClips, feats: Features, config: str, seeds: list[int], max_test: int,
                    fault_clips: int, rows: list[Row], choices: list[tuple]) -> None:
    candidates = tuple(CANDIDATES) if config == MAIN else SECONDARY_CANDIDATES
    feats.calibrate_window(split(machine, 0, max_test).train)
    for seed in seeds:
        t0 = time.monotonic()
        parts = split(machine, seed, max_test)
        selection = choose_from_files(parts.train, feats.extractor.sha256, feats.extractor, feats.params,
                                      clip_features=feats.features, candidates=candidates,
                                      max_fault_clips=fault_clips, seed=seed)
        test = [feats.clip(p) for p in parts.test]
        for name in candidates:
            scores = [selection.clip_score(c, name) for c in test]
            rows.append(Row(config, name, machine.name, seed, roc_auc(parts.labels, scores)))
        scores = [selection.clip_score(c) for c in test]
        rows.append(Row(config, "auto", machine.name, seed, roc_auc(parts.labels, scores), selection.chosen.name))
        choices.append((config, machine.name, seed, selection.chosen.name, selection.reason,
                        {s.name: round(s.detection, 3) for s in selection.table}))
        if config == MAIN:
            fit = [feats.clip(p) for p, h in zip(parts.train, _held(len(parts.train))) if not h]
            for part in VARIANTS:
                fitted = fit_part(_resolved(part, fit), np.concatenate([c.cnn for c in fit]),
                                  np.concatenate([c.db for c in fit]), feats.extractor.sha256, seed)
                scores = [score_part(part, fitted, c.cnn, c.db).mean() for c in test]
                rows.append(Row(config, part.name, machine.name, seed, roc_auc(parts.labels, scores)))
        log.info("%s %s seed %d: auto=%s (%s) in %.0f s; %s", config, machine.name, seed, selection.chosen.name,
                 selection.reason, time.monotonic() - t0,
                 " ".join(f"{r.method}={r.auc:.3f}" for r in rows if r.machine == machine.name and r.seed == seed
                          and r.config == config))


def _held(n: int) -> np.ndarray:
    """The clips choose_from_files holds out (one in four; every clip is a full window)."""
    return heldout_mask([WINDOW_PATCHES] * n)


def _resolved(part: Part, fit: list[NormalClip]) -> Part:
    """'scale/10' gamma: a tenth of scikit-learn's 'scale' rule on the standardised (and projected) features."""
    overrides = dict(part.overrides)
    if overrides.get("gamma") == "scale/10":
        dim = part.pca_components or fit[0].cnn.shape[1]
        overrides["gamma"] = 0.1 / dim  # standardised features have unit variance
    return Part(part.name, part.kind, part.feature_source, part.pca_components, part.pca_whiten,
                tuple(overrides.items()), part.bic_components)


def measure_real(folder: pathlib.Path, feats: Features, seeds: list[int], fault_clips: int, rows: list[Row],
                 choices: list[tuple]) -> None:
    """Few real anomalies: AUC against faults injected (other seeds) into held-out real normal clips, the rank of
    each real anomaly among the held-out normal clips (1.0 = above all of them), and the share of real anomalies
    above the candidate's alarm threshold (set as calibrate sets it, on the calibration's held-out clips, for one
    false alarm a week)."""
    (machine,) = find_machines(folder)
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(machine.normal))
        test_paths = [machine.normal[i] for i in sorted(order[:REAL_TEST_NORMAL])]
        train_paths = [machine.normal[i] for i in sorted(order[REAL_TEST_NORMAL:])]
        selection = choose_from_files(train_paths, feats.extractor.sha256, feats.extractor, feats.params,
                                      clip_features=feats.features, max_fault_clips=fault_clips, seed=seed)
        normal = [feats.clip(p) for p in test_paths]
        grid = fault_grid(seed + 1000)
        faulted = []
        for i, path in enumerate(test_paths):
            samples = inject(read_wav(path, 0), grid[i % len(grid)])
            faulted.append(prepare_clip(samples, feats.extractor, feats.params))
        anomalies = [feats.clip(p) for p in machine.abnormal]
        heldout = [feats.clip(p) for p, h in zip(train_paths, _held(len(train_paths))) if h]
        labels = np.r_[np.zeros(len(normal)), np.ones(len(faulted))]
        for name in (*CANDIDATES, "auto"):
            candidate = None if name == "auto" else name

            def clip_scores(clips: list[NormalClip]) -> np.ndarray:  # one 10 s window each
                return np.array([selection.clip_score(c, candidate) for c in clips])

            n, f, a, held = map(clip_scores, (normal, faulted, anomalies, heldout))
            threshold = choose_threshold(held, len(held), DEFAULT_FALSE_ALARMS_PER_DAY,
                                         selection.score_ceiling(candidate)).high  # as calibrate sets it
            rows.append(Row("real-dcase-id00", name, "injected", seed, roc_auc(labels, np.r_[n, f]),
                            selection.chosen.name if name == "auto" else ""))
            rows.append(Row("real-dcase-id00", name, "anomaly-rank", seed, float(np.mean(a[:, None] > n))))
            rows.append(Row("real-dcase-id00", name, "anomaly-alarm", seed, float(np.mean(a > threshold))))
        choices.append(("real", machine.name, seed, selection.chosen.name, selection.reason,
                        {s.name: round(s.detection, 3) for s in selection.table}))
        log.info("real seed %d: auto=%s (%s)", seed, selection.chosen.name, selection.reason)


def table(rows: list[Row], config: str) -> str:
    """Methods × machine types (mean AUC over ids and seeds), plus the mean over types."""
    selected = [r for r in rows if r.config == config]
    methods = list(dict.fromkeys(r.method for r in selected))
    types = list(dict.fromkeys(r.machine.split("/")[0].split()[-1] for r in selected))
    cells = {(m, t): np.mean([r.auc for r in selected if r.method == m and r.machine.split("/")[0].split()[-1] == t])
             for m in methods for t in types}
    best = {t: max(cells[(m, t)] for m in methods) for t in types}
    lines = [f"| {config} | " + " | ".join(types) + " | mean |", "|---|" + "---:|" * (len(types) + 1)]
    for m in methods:
        values = [cells[(m, t)] for t in types]
        text = [f"**{v:.3f}**" if np.isclose(v, best[t]) else f"{v:.3f}" for v, t in zip(values, types)]
        lines.append(f"| {m} | " + " | ".join(text) + f" | {np.mean(values):.3f} |")
    return "\n".join(lines) + "\n"


def policy_table(rows: list[Row], choices: list[tuple], config: str = MAIN) -> str:
    """What `auto` would have scored with other defaults and switching rules: each decision is replayed from the
    synthetic-fault detection shares the selection measured (ties: the earlier candidate) and looked up in the
    measured AUC of the candidate it picks. Shows how much the default and the rule matter (reading it to set them
    tunes them on this dataset; say so when quoting it)."""
    real = {(r.method, r.machine, r.seed): r.auc for r in rows if r.config == config}
    decisions = [(machine, seed, caught) for c, machine, seed, _, _, caught in choices if c == config]
    types = list(dict.fromkeys(m.split("/")[0] for m, _, _ in decisions))
    lines = ["| default, margin, ratio | " + " | ".join(types) + " | mean |", "|---|" + "---:|" * (len(types) + 1)]
    for default in ("fusion-2s", "fusion", "logmel-sd", "logmel-gmm"):
        for margin, ratio in ((0.0, 1.0), (0.05, 1.0), (0.1, 1.0), (0.05, 2.0), (1.0, 1.0)):
            picked = {}
            for machine, seed, caught in decisions:
                best = max(caught, key=lambda k: (caught[k], -list(caught).index(k)))
                switch = default not in caught or (best != default
                                                   and leaves_default(caught[best], caught[default], margin, ratio))
                pick = best if switch else default
                picked.setdefault(machine.split("/")[0], []).append(real[(pick, machine, seed)])
            values = [float(np.mean(picked[t])) for t in types]
            lines.append(f"| {default}, {margin:g}, {ratio:g} | " + " | ".join(f"{v:.3f}" for v in values)
                         + f" | {np.mean(values):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=pathlib.Path)
    parser.add_argument("--models-dir", type=pathlib.Path, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--cache", type=pathlib.Path, help="feature cache (default OUT/cache)")
    parser.add_argument("--seed-cache", type=pathlib.Path, help="copy finished features from this cache first")
    parser.add_argument("--configs", default=MAIN, help=f"comma list from {','.join(CONFIGS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--secondary-seeds", type=int, default=1, help="seeds for configurations other than main")
    parser.add_argument("--types", default="", help="comma list of machine types (default all)")
    parser.add_argument("--ids", default="", help="comma list of machine ids for secondary configs (default all)")
    parser.add_argument("--max-normal-test", type=int, default=150)
    parser.add_argument("--fault-clips", type=int, default=30)
    parser.add_argument("--real", type=pathlib.Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("humwatch.calibration.detectors").setLevel(logging.WARNING)
    cache_root = args.cache or args.out / "cache"
    if args.seed_cache and args.seed_cache.is_dir():
        shutil.copytree(args.seed_cache, cache_root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    cache = FeatureCache(cache_root)
    machines = find_machines(args.dataset)
    if args.types:  # "none": only the --real measurement
        machines = [m for m in machines if m.machine_type in args.types.split(",")]
    rows: list[Row] = []
    choices: list[tuple] = []
    started = time.monotonic()
    for config in args.configs.split(","):
        feats = Features(config, args.models_dir, cache, args.threads)
        seeds = list(range(args.seeds if config == MAIN else args.secondary_seeds))
        for machine in machines:
            if config != MAIN and args.ids and machine.machine_id not in args.ids.split(","):
                continue
            feats.params = FrontEndParams()
            measure_machine(machine, feats, config, seeds, args.max_normal_test, args.fault_clips, rows, choices)
            write_outputs(args.out, rows, choices)
        if config == MAIN and args.real:
            measure_real(args.real, feats, list(range(args.seeds)), args.fault_clips, rows, choices)
    write_outputs(args.out, rows, choices)
    print((args.out / "quality_table.md").read_text())
    print(f"{len(rows)} results in {time.monotonic() - started:.0f} s; feature cache {cache.hits} hits, "
          f"{cache.misses} computed", file=sys.stderr)
    return 0


def write_outputs(out: pathlib.Path, rows: list[Row], choices: list[tuple]) -> None:
    """Rows, choices and tables so far (rewritten after every machine, so an interrupted run keeps its results)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "quality_rows.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["config", "method", "machine", "seed", "auc", "note"])
        writer.writerows([r.config, r.method, r.machine, r.seed, f"{r.auc:.4f}", r.note] for r in rows)
    with open(out / "quality_choices.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["config", "machine", "seed", "chosen", "reason", "synthetic_faults_caught"])
        writer.writerows(choices)
    (out / "quality_table.md").write_text("".join(table(rows, c) + "\n" for c in dict.fromkeys(r.config for r in rows)))
    if any(c[0] == MAIN for c in choices):
        (out / "quality_policies.md").write_text(policy_table(rows, choices))


if __name__ == "__main__":
    sys.exit(main())
