"""Peer: nearest-neighbour distance on frozen patch features (evaluation only; not a board detector).

Frozen embeddings + k-nearest-neighbour distance is the strongest single-machine method without fine-tuning
reported in DCASE 2023–2024. Here: the int8 CNN's features of each patch, standardised with the training patches'
mean and std; a patch scores its Euclidean distance to the nearest training patch (k = 1); a clip the mean over
its patches.
"""
from __future__ import annotations

import numpy as np

from humwatch.evaluation.features import FeatureSource
from humwatch.evaluation.methods import FeatureMethod

QUERY_BLOCK = 256  # patches per distance block: bounds the (block × training patches) matrix


class PatchKnn(FeatureMethod):
    def __init__(self, source: FeatureSource) -> None:
        self.source = source
        self.name = f"{source.name} + kNN (k=1)"
        self._train = np.zeros((0, 0))
        self._train_sq = np.zeros(0)
        self._mean = self._std = np.zeros(0)

    def fit(self, train: list[np.ndarray], seed: int) -> None:
        x = np.concatenate([c.reshape(len(c), -1) for c in train]).astype(np.float64)
        self._mean, std = x.mean(axis=0), x.std(axis=0)
        self._std = np.where(std > 0, std, 1.0)  # constant features (dead channels) carry no distance
        self._train = (x - self._mean) / self._std
        self._train_sq = np.einsum("ij,ij->i", self._train, self._train)

    def patch_scores(self, patches: np.ndarray) -> np.ndarray:
        """Distance of each patch to its nearest training patch, in standardised feature space."""
        q = (patches.reshape(len(patches), -1).astype(np.float64) - self._mean) / self._std
        out = np.empty(len(q))
        for start in range(0, len(q), QUERY_BLOCK):
            block = q[start:start + QUERY_BLOCK]
            sq = np.einsum("ij,ij->i", block, block)[:, None] - 2.0 * block @ self._train.T + self._train_sq
            out[start:start + len(block)] = np.sqrt(np.maximum(sq.min(axis=1), 0.0))
        return out

    def clip_scores(self, clips: list[np.ndarray]) -> np.ndarray:
        return np.array([self.patch_scores(c).mean() for c in clips])
