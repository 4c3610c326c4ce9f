"""The DCASE 2021–2025 task 2 figures of one section's test scores, as the official DCASE 2023 evaluator
(github.com/nttcslab/dcase2023_task2_evaluator, dcase2023_task2_evaluator.py) computes them:

- AUC (domain): the domain's normal clips against ALL anomalous clips of the section, both domains
  (`roc_auc_score(y_true[(y_domain == d) | (y_true != 0)], ...)`);
- pAUC: over all clips of the section, `roc_auc_score(y_true, y_pred, max_fpr=0.1)` (scikit-learn's standardised
  partial AUC, McClish's correction: 0.5 = chance, 1 = perfect);
- the official score: the harmonic mean of AUC (source), AUC (target) and pAUC, each floored at float epsilon,
  over every section (`scipy.stats.hmean(numpy.maximum(all_perf, sys.float_info.epsilon))`).

Beside them, the AUC an operator of one machine sees: a domain's normal clips against that domain's anomalous
clips only ("domain-only"). And the operating point: the share of a domain's anomalous and normal test clips whose
score lies above the alarm threshold that `calibrate` set.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

from humwatch.evaluation.dcase_layout import DOMAINS
from humwatch.evaluation.protocol import roc_auc

MAX_FPR = 0.1


def official_domain_auc(labels: np.ndarray, scores: np.ndarray, domains: np.ndarray, domain: str) -> float:
    """AUC of the domain's normal clips against every anomalous clip of the section (the evaluator's AUC)."""
    keep = (np.asarray(domains) == domain) | (np.asarray(labels) != 0)
    return roc_auc(np.asarray(labels)[keep], np.asarray(scores)[keep])


def domain_only_auc(labels: np.ndarray, scores: np.ndarray, domains: np.ndarray, domain: str) -> float:
    """AUC within one domain: its normal clips against its own anomalous clips."""
    keep = np.asarray(domains) == domain
    return roc_auc(np.asarray(labels)[keep], np.asarray(scores)[keep])


def partial_auc(labels: np.ndarray, scores: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """Standardised partial AUC for false-positive rates up to max_fpr, over all the clips given."""
    roc_auc(labels, scores)  # the same checks (both classes, finite scores) and messages as every AUC here
    return float(roc_auc_score(np.asarray(labels), np.asarray(scores, dtype=np.float64), max_fpr=max_fpr))


def harmonic_mean(values) -> float:
    """The evaluator's harmonic mean: every value floored at float epsilon first."""
    return float(hmean(np.maximum(np.asarray(values, dtype=np.float64), sys.float_info.epsilon)))


def share_above(scores: np.ndarray, threshold: float) -> tuple[int, int]:
    """(clips scoring above the threshold, clips)."""
    scores = np.asarray(scores)
    return int(np.sum(scores > threshold)), len(scores)


@dataclass(frozen=True)
class SectionFigures:
    """One method's figures on one section (per-domain dicts keyed "source", "target")."""

    auc: dict[str, float]  # official definition
    auc_domain_only: dict[str, float]
    pauc: float
    anomalous_above: dict[str, tuple[int, int]] | None  # None: the method has no alarm threshold
    normal_above: dict[str, tuple[int, int]] | None

    @property
    def official_hmean(self) -> float:
        return harmonic_mean([self.auc["source"], self.auc["target"], self.pauc])

    @property
    def domain_only_hmean(self) -> float:
        return harmonic_mean([self.auc_domain_only["source"], self.auc_domain_only["target"], self.pauc])


def section_figures(labels: np.ndarray, scores: np.ndarray, domains: np.ndarray,
                    threshold: float | None) -> SectionFigures:
    labels, scores, domains = np.asarray(labels), np.asarray(scores, dtype=np.float64), np.asarray(domains)
    anomalous = normal = None
    if threshold is not None:
        anomalous = {d: share_above(scores[(domains == d) & (labels == 1)], threshold) for d in DOMAINS}
        normal = {d: share_above(scores[(domains == d) & (labels == 0)], threshold) for d in DOMAINS}
    return SectionFigures({d: official_domain_auc(labels, scores, domains, d) for d in DOMAINS},
                          {d: domain_only_auc(labels, scores, domains, d) for d in DOMAINS},
                          partial_auc(labels, scores), anomalous, normal)


def official_score(figures: list[SectionFigures]) -> float:
    """The harmonic mean over every section's AUC (source), AUC (target) and pAUC, as the evaluator's total."""
    return harmonic_mean([v for f in figures for v in (f.auc["source"], f.auc["target"], f.pauc)])
