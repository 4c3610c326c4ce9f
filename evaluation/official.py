"""The DCASE 2021–2025 protocol: every method fitted on a section's train/ clips as given (no re-split, or the
first `--train-minutes` of them spread over the attribute groups) and scored on its test/ clips; one result per
(method, section, seed)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from humwatch.evaluation.cache import FeatureCache
from humwatch.evaluation.dcase_layout import Clip, Section
from humwatch.evaluation.dcase_metrics import SectionFigures, section_figures
from humwatch.evaluation.methods import Method
from humwatch.evaluation.train_minutes import first_minutes, wav_seconds

log = logging.getLogger(__name__)


@dataclass
class SectionResult:
    method: str
    section: str
    seed: int
    figures: SectionFigures
    n_train: int
    train_seconds: float
    threshold: float | None
    labels: np.ndarray = field(repr=False)
    domains: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)


def training_clips(section: Section, minutes: float | None) -> list[Clip]:
    """The section's training clips, or the first `minutes` of them round-robin over (domain, attribute group)."""
    if minutes is None:
        return list(section.train)
    return first_minutes(section.train, lambda c: f"{c.domain} {c.attributes}", lambda c: wav_seconds(c.path),
                         minutes)


def run_official(sections: list[Section], methods: list[Method], seeds: list[int], cache: FeatureCache,
                 train_minutes: float | None = None, progress: Callable[[str], None] = log.info
                 ) -> list[SectionResult]:
    results = []
    steps, step, started = len(sections) * len(seeds) * len(methods), 0, time.monotonic()
    for section in sections:
        train = training_clips(section, train_minutes)
        train_paths, test_paths = [c.path for c in train], [c.path for c in section.test]
        seconds = sum(wav_seconds(p) for p in train_paths)
        progress(f"{section.name}: fitting on {len(train)} training clips ({seconds / 60:.1f} min; "
                 f"{sum(c.domain == 'target' for c in train)} target domain), scoring {len(test_paths)} test clips")
        for source in {m.source.name: m.source for m in methods if getattr(m, "source", None)}.values():
            t0 = time.monotonic()
            source.clips(train_paths + test_paths, cache)
            progress(f"{section.name}: {source.name} features ready ({time.monotonic() - t0:.0f} s)")
        for seed in seeds:
            for method in methods:
                t0 = time.monotonic()
                method.fit_paths(train_paths, cache, seed)
                scores = np.asarray(method.score_paths(test_paths, cache), dtype=np.float64)
                threshold = getattr(method, "threshold", None)
                figures = section_figures(section.labels, scores, section.domains, threshold)
                results.append(SectionResult(method.name, section.name, seed, figures, len(train), seconds,
                                             threshold, section.labels, section.domains, scores))
                step += 1
                progress(f"[{step}/{steps}] {section.name} seed {seed} {method.name}: AUC source "
                         f"{figures.auc['source']:.3f} target {figures.auc['target']:.3f} pAUC {figures.pauc:.3f} "
                         f"({time.monotonic() - t0:.1f} s, {time.monotonic() - started:.0f} s total)")
    return results
