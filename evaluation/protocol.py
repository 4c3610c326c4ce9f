"""The paper's protocol for one machine: a seeded split of its clips, and ROC AUC of clip scores.

Per seed: draw min(max_normal_test, available) normal clips at random as normal test clips, the same number of
abnormal clips, and train on every remaining normal clip. Abnormal clips never enter training.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from humwatch.agent.errors import ConfigError
from humwatch.evaluation.datasets import MachineClips

PAPER_NORMAL_TEST = 150


@dataclass(frozen=True)
class Split:
    train: tuple[pathlib.Path, ...]
    test_normal: tuple[pathlib.Path, ...]
    test_abnormal: tuple[pathlib.Path, ...]

    @property
    def test(self) -> tuple[pathlib.Path, ...]:
        return self.test_normal + self.test_abnormal

    @property
    def labels(self) -> np.ndarray:
        """1 = abnormal, in the order of .test."""
        return np.r_[np.zeros(len(self.test_normal)), np.ones(len(self.test_abnormal))].astype(int)


def normal_test_count(machine: MachineClips, max_normal_test: int = PAPER_NORMAL_TEST) -> int:
    """Normal (= abnormal) test clips per seed: limited by the abnormal clips and by keeping one normal to train."""
    return min(max_normal_test, len(machine.abnormal), len(machine.normal) - 1)


def split(machine: MachineClips, seed: int, max_normal_test: int = PAPER_NORMAL_TEST) -> Split:
    n_test = normal_test_count(machine, max_normal_test)
    if n_test < 1:
        raise ConfigError(f"{machine.name}: needs at least 2 normal and 1 abnormal clip, "
                          f"has {len(machine.normal)} and {len(machine.abnormal)}")
    rng = np.random.default_rng(seed)
    normal_order = rng.permutation(len(machine.normal))
    abnormal_pick = np.sort(rng.choice(len(machine.abnormal), n_test, replace=False))
    test_idx = np.sort(normal_order[:n_test])
    train_idx = np.sort(normal_order[n_test:])
    return Split(train=tuple(machine.normal[i] for i in train_idx),
                 test_normal=tuple(machine.normal[i] for i in test_idx),
                 test_abnormal=tuple(machine.abnormal[i] for i in abnormal_pick))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random abnormal > score of a random normal), ties counting half."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both normal and abnormal clips")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
