"""The numpy scorers of the detector kinds only the workstation fits and evaluates: B-GMM, KDE, Isolation Forest.

No bundle the agent loads holds them, so they stay out of the board package; `calibration.detectors` and the
evaluation pass `ALL_SCORERS` to `agent.model.scorers.load_detector`. Each score equals scikit-learn's own value:
the B-GMM's negative log-likelihood (the GMM's arithmetic), the KDE's negative log density and the negative of the
Isolation Forest's score_samples.
"""
from __future__ import annotations

import os

import numpy as np

from humwatch.agent.model.scorers import (
    KIND_SCORERS,
    LOG_2PI,
    Detector,
    DetectorArrays,
    MixtureScorer,
    Scorer,
    load_detector,
    log_sum_exp,
)


class KernelDensityScorer:
    """Gaussian KDE over the training points: the negative log of the mean kernel density."""

    ARRAYS: tuple[str, ...] = ("points", "bandwidth")

    def __init__(self, arrays: DetectorArrays, dim: int):
        points = arrays.real("points", (None, dim))
        if len(points) == 0:
            raise arrays.fail("array 'points' is empty")
        bandwidth = float(arrays.real("bandwidth", (), positive=True))
        self.points = points
        self.point_norms = np.sum(points ** 2, axis=1)
        self.inverse_two_h2 = 0.5 / bandwidth ** 2
        self.log_normaliser = np.log(len(points)) + 0.5 * dim * LOG_2PI + dim * np.log(bandwidth)

    def score(self, z: np.ndarray) -> np.ndarray:
        squared = np.sum(z ** 2, axis=1)[:, np.newaxis] + self.point_norms - 2.0 * (z @ self.points.T)
        return -(log_sum_exp(-self.inverse_two_h2 * squared) - self.log_normaliser)


class IsolationForestScorer:
    """Isolation Forest: -2^(-mean path length / c(max_samples)), trees walked all at once as index arrays.

    A path length is the leaf's depth plus c(n), the average path length of an unsuccessful search in a binary
    tree of the n training samples left in that leaf. Comparisons are made on float32 features, as scikit-learn's
    trees make them.
    """

    ARRAYS: tuple[str, ...] = ("tree_offsets", "children_left", "children_right", "feature", "threshold",
                               "n_node_samples", "max_samples")

    def __init__(self, arrays: DetectorArrays, dim: int):
        offsets = arrays.indices("tree_offsets", (None,))
        n_nodes = int(offsets[-1]) if len(offsets) else 0
        if len(offsets) < 2 or offsets[0] != 0 or np.any(np.diff(offsets) < 1):
            raise arrays.fail("array 'tree_offsets' must rise from 0 in steps of at least 1")
        left = arrays.indices("children_left", (n_nodes,))
        right = arrays.indices("children_right", (n_nodes,))
        feature = arrays.indices("feature", (n_nodes,))
        threshold = arrays.real("threshold", (n_nodes,))
        n_node_samples = arrays.indices("n_node_samples", (n_nodes,))
        max_samples = arrays.integer("max_samples", 1)

        node = np.arange(n_nodes)
        tree_end = np.repeat(offsets[1:], np.diff(offsets))
        leaf = left == -1
        # Children lie after their parent inside the same tree, so every path ends at a leaf (no cycles).
        valid_children = leaf & (right == -1) | ~leaf & (left > node) & (left < tree_end) & (right > node) & (
            right < tree_end)
        if not np.all(valid_children):
            raise arrays.fail("arrays 'children_left'/'children_right' do not describe trees")
        if np.any(~leaf & ((feature < 0) | (feature >= dim))) or np.any(n_node_samples < 1):
            raise arrays.fail(f"array 'feature' or 'n_node_samples' out of range for {dim} features")

        depth = np.zeros(n_nodes, dtype=np.int64)
        parents = node[~leaf]
        deepest = int(np.ceil(np.log2(max(max_samples, 2))))  # scikit-learn grows isolation trees no deeper
        for _ in range(deepest + 2):  # one pass per level
            deeper = depth.copy()
            deeper[left[parents]] = depth[parents] + 1
            deeper[right[parents]] = depth[parents] + 1
            if np.array_equal(deeper, depth):
                break
            depth = deeper
        if depth.max() > deepest:
            raise arrays.fail(f"trees deeper than {deepest} levels, more than max_samples={max_samples} allows")
        self.steps = int(depth.max())
        self.roots = offsets[:-1]
        # Leaves point to themselves, so walking `steps` times from the roots lands every sample on its leaf.
        self.left = np.where(leaf, node, left)
        self.right = np.where(leaf, node, right)
        self.feature = np.where(leaf, 0, feature)
        self.threshold = threshold
        self.path_length = depth + average_path_length(n_node_samples)
        self.denominator = len(self.roots) * average_path_length(np.array([max_samples]))[0]

    def score(self, z: np.ndarray) -> np.ndarray:
        z32 = z.astype(np.float32)
        rows = np.arange(len(z))[:, np.newaxis]
        node = np.broadcast_to(self.roots, (len(z), len(self.roots)))
        for _ in range(self.steps):
            goes_left = z32[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(goes_left, self.left[node], self.right[node])
        total = self.path_length[node].sum(axis=1)
        ratio = total / self.denominator if self.denominator != 0 else np.ones(len(z))
        return 2.0 ** -ratio


def average_path_length(n_samples: np.ndarray) -> np.ndarray:
    """c(n): average path length of an unsuccessful search in a binary search tree of n samples (0 for n <= 1)."""
    n = np.asarray(n_samples, dtype=np.float64)
    safe = np.maximum(n, 3.0)
    general = 2.0 * (np.log(safe - 1.0) + np.euler_gamma) - 2.0 * (safe - 1.0) / safe
    return np.where(n <= 1, 0.0, np.where(n == 2, 1.0, general))


ALL_SCORERS: dict[str, type[Scorer]] = {**KIND_SCORERS, "bgmm": MixtureScorer, "kde": KernelDensityScorer,
                                "iforest": IsolationForestScorer}


def load_workstation_detector(path: str | os.PathLike[str], extractor_sha256: str | None = None) -> Detector:
    """`agent.model.scorers.load_detector` for every kind calibration can fit, the workstation-only ones too."""
    return load_detector(path, extractor_sha256, scorers=ALL_SCORERS)
