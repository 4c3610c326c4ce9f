"""Run every method on every machine and seed of the protocol; one result row per (method, machine, seed)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from humwatch.evaluation.cache import FeatureCache
from humwatch.evaluation.datasets import MachineClips
from humwatch.evaluation.methods import Method
from humwatch.evaluation.protocol import PAPER_NORMAL_TEST, normal_test_count, roc_auc, split

log = logging.getLogger(__name__)


@dataclass
class Result:
    method: str
    machine: str
    seed: int
    auc: float
    n_train: int
    n_test_normal: int
    labels: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)
    threshold: float | None = None  # the method's alarm threshold after this fit (None: it sets none)


def run_protocol(machines: list[MachineClips], methods: list[Method], seeds: list[int], cache: FeatureCache,
                 max_normal_test: int = PAPER_NORMAL_TEST, progress: Callable[[str], None] = log.info
                 ) -> list[Result]:
    for machine in machines:
        n = normal_test_count(machine, max_normal_test)
        if n < max_normal_test:
            progress(f"{machine.name}: {n} normal + {n} abnormal test clips per seed (fewer than {max_normal_test}: "
                     f"the data hold {len(machine.normal)} normal and {len(machine.abnormal)} abnormal clips)")
    results = []
    steps, step, started = len(machines) * len(seeds) * len(methods), 0, time.monotonic()
    for machine in machines:
        # Cached features first (a preset runs calibrate on the audio itself, as a user would: no source)
        for source in {m.source.name: m.source for m in methods if getattr(m, "source", None)}.values():
            t0 = time.monotonic()
            source.clips(machine.normal + machine.abnormal, cache)
            progress(f"{machine.name}: {source.name} features of {len(machine.normal) + len(machine.abnormal)} "
                     f"clips ready ({time.monotonic() - t0:.0f} s)")
        for seed in seeds:
            parts = split(machine, seed, max_normal_test)
            for method in methods:
                t0 = time.monotonic()
                method.fit_paths(parts.train, cache, seed)
                scores = method.score_paths(parts.test, cache)
                auc = roc_auc(parts.labels, scores)
                results.append(Result(method.name, machine.name, seed, auc, len(parts.train),
                                      len(parts.test_normal), parts.labels, scores,
                                      getattr(method, "threshold", None)))
                step += 1
                progress(f"[{step}/{steps}] {machine.name} seed {seed} {method.name}: AUC {auc:.3f} "
                         f"({time.monotonic() - t0:.1f} s, {time.monotonic() - started:.0f} s total)")
    return results
