"""Peer: a diagonal GMM on single 64-band log-Mel frames; a patch scores the mean negative log-likelihood of its
frames, a clip the mean of its patches. Cheap enough for the board; catches level and band-energy changes that
per-patch image normalisation hides."""
from __future__ import annotations

import numpy as np
from sklearn.mixture import GaussianMixture

from humwatch.agent.contract import PATCH_FRAMES, PATCH_HOP_FRAMES
from humwatch.evaluation.features import FeatureSource
from humwatch.evaluation.methods import FeatureMethod

COMPONENTS = 16


def patch_means(frame_scores: np.ndarray) -> np.ndarray:
    """Mean of frame scores over each patch window (64 frames, hop 32), as the front end cuts patches."""
    n = (len(frame_scores) - PATCH_FRAMES) // PATCH_HOP_FRAMES + 1
    if n < 1:
        return np.array([frame_scores.mean()])
    csum = np.r_[0.0, np.cumsum(frame_scores)]
    starts = np.arange(n) * PATCH_HOP_FRAMES
    return (csum[starts + PATCH_FRAMES] - csum[starts]) / PATCH_FRAMES


class LogMelGmm(FeatureMethod):
    def __init__(self, source: FeatureSource, components: int = COMPONENTS) -> None:
        self.source, self.components = source, components
        self.name = f"log-Mel GMM-{components}"
        self._gmm: GaussianMixture | None = None

    def fit(self, train: list[np.ndarray], seed: int) -> None:
        self._gmm = GaussianMixture(self.components, covariance_type="diag", reg_covar=1e-3, max_iter=200,
                                    random_state=seed).fit(np.concatenate(train).astype(np.float64))

    def clip_scores(self, clips: list[np.ndarray]) -> np.ndarray:
        return np.array([patch_means(-self._gmm.score_samples(c.astype(np.float64))).mean() for c in clips])
