"""The candidate pipelines a calibration chooses among, and how each of their detectors is fitted and scored.

A candidate is one or more detectors ("parts") plus a fusion rule, exactly what a bundle holds (see
`agent.model.bundle.DetectorEntry` and `agent.model.pipeline.PatchScorer`). Parts are shared between candidates (the fusion
candidates reuse the CNN and log-Mel parts), so each part is fitted and scored once per calibration.

- paper:       SqueezeNet features, GMM with 80 diagonal components (Müller et al. 2020), reproducible preset.
- cnn-pca-gmm: the same features standardised, PCA-whitened to 64 dimensions, then a small diagonal GMM whose
               component count is chosen by BIC on the fitting features (80 components in 2048 dimensions from a
               few thousand patches overfit).
- cnn-ocsvm:   the same features, OC-SVM with the paper's nu = 1e-4 and gamma by scikit-learn's 'scale' rule.
- logmel-gmm:  no CNN: a diagonal GMM with 16 components on single 64-band log-Mel frames; a patch scores the mean
               of its frames. Sees level and band-energy changes that per-patch min-max images hide.
- logmel-sd:   logmel-gmm (the spectrum) and the same GMM on each frame's first and second differences (its
               dynamics, `agent.signal.frames`: modulation, ticks, impacts), each standardised by its held-out normal
               scores, averaged. No CNN: deaf to a whine that the CNN hears (README).
- fusion:      the paper's GMM-80, logmel-gmm and the dynamics GMM, each standardised, averaged (fusion-max: the
               largest).
- fusion-2s:   fusion with the dynamics GMM read two-sided: a window scores the distance of its mean from the normal
               centre, so a sound *steadier* than normal (a clogged pump, a leak's steady hiss) counts as well; a
               likelihood alone calls it more normal than normal.
- fusion-timing: fusion-2s plus the timing detector (agent.model.timing): the shaft speed and the cycle period of a
               window against normal; beyond 4 held-out standard deviations its distance adds to the fused score.
               It costs more than the front end and the other detectors together, for a fault kind measured only on
               synthetic sound: opt-in.

The default pipeline is not among these patch candidates: see calibration.window_knn.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.mixture import GaussianMixture

from humwatch.agent.contract import PATCH_FRAMES, PATCH_HOP_FRAMES, logmel_extractor_sha256
from humwatch.agent.signal.frames import frame_patch_scores, frame_rows
from humwatch.calibration.detectors import FittedDetector, fit_detector

log = logging.getLogger(__name__)

CNN = "cnn"
LOGMEL = "logmel-frames"
LOGMEL_DYNAMICS = "logmel-dynamics"
FRAME_GMM = (("n_components", 16), ("reg_covar", 1e-3), ("max_iter", 200))
# A fused pipeline limits each detector's standardised patch score to this many held-out standard deviations, so
# that one patch moves a window mean by at most 10/18 (agent.model.pipeline.limit). No effect on the development set's
# AUC (benchmarks/RESULTS.md); single-detector candidates, the paper's among them, score as published.
FUSION_PATCH_SCORE_CAP = 10.0
# Frames fitted by a frame-level detector at most: ten minutes of audio give ~37,000, a subsample is as good.
MAX_FIT_FRAMES = 20_000


@dataclass(frozen=True)
class Part:
    """One detector of a candidate: what it looks at and how it is fitted. `name` also names its reading in the
    bundle, alarms and logs (agent.model.bundle.DetectorEntry.name)."""

    name: str
    kind: str
    feature_source: str
    pca_components: int | None = None
    pca_whiten: bool = False
    overrides: tuple[tuple[str, object], ...] = ()
    bic_components: tuple[int, ...] = ()  # when given, n_components is chosen among these by BIC
    two_sided: bool = False  # a window scores its distance from the normal centre (agent.model.pipeline.window_reading)
    reads: str | None = None  # another part whose fitted detector this one reads (differently): fitted once

    @property
    def detector(self) -> str:
        """The name of the fitted detector this part reads, also its bundle file stem."""
        return self.reads or self.name

    @property
    def file(self) -> str:
        return f"{self.detector}.npz"


@dataclass(frozen=True)
class Candidate:
    name: str
    parts: tuple[str, ...]
    fusion: str = "mean"
    patch_score_cap: float | None = None  # see agent.model.pipeline.limit
    timing: bool = False  # the timing detector adds to the fused score (agent.model.pipeline.add_timing)

    def uses_cnn(self) -> bool:
        return any(PARTS[p].feature_source == CNN for p in self.parts)


PARTS = {p.name: p for p in (
    Part("cnn-gmm80", "gmm", CNN),
    Part("cnn-pca-gmm", "gmm", CNN, pca_components=64, pca_whiten=True, bic_components=(1, 2, 4, 8, 16)),
    Part("cnn-ocsvm", "ocsvm", CNN),
    Part("logmel-gmm", "gmm", LOGMEL, overrides=FRAME_GMM),
    Part("logmel-dynamics-gmm", "gmm", LOGMEL_DYNAMICS, overrides=FRAME_GMM),
    Part("logmel-dynamics-gmm-2s", "gmm", LOGMEL_DYNAMICS, overrides=FRAME_GMM, two_sided=True,
         reads="logmel-dynamics-gmm"),
)}
CANDIDATES = {c.name: c for c in (
    Candidate("paper", ("cnn-gmm80",)),
    Candidate("cnn-pca-gmm", ("cnn-pca-gmm",)),
    Candidate("cnn-ocsvm", ("cnn-ocsvm",)),
    Candidate("logmel-gmm", ("logmel-gmm",)),
    Candidate("logmel-sd", ("logmel-gmm", "logmel-dynamics-gmm"), "mean", FUSION_PATCH_SCORE_CAP),
    Candidate("fusion", ("cnn-gmm80", "logmel-gmm", "logmel-dynamics-gmm"), "mean", FUSION_PATCH_SCORE_CAP),
    Candidate("fusion-max", ("cnn-gmm80", "logmel-gmm", "logmel-dynamics-gmm"), "max", FUSION_PATCH_SCORE_CAP),
    Candidate("fusion-2s", ("cnn-gmm80", "logmel-gmm", "logmel-dynamics-gmm-2s"), "mean", FUSION_PATCH_SCORE_CAP),
    Candidate("fusion-timing", ("cnn-gmm80", "logmel-gmm", "logmel-dynamics-gmm-2s"), "mean", FUSION_PATCH_SCORE_CAP,
              timing=True),
)}


def fit_part(part: Part, cnn: np.ndarray | None, db: np.ndarray, extractor_sha256: str | None,
             seed: int = 0) -> FittedDetector:
    """Fit one part on normal patches: CNN features (n, d) or dB patches (n, mels, frames)."""
    if part.feature_source == CNN:
        if cnn is None or extractor_sha256 is None:
            raise ValueError(f"part {part.name} needs CNN features and the extractor's sha256")
        features, sha = cnn, extractor_sha256
    else:
        features, sha = fit_rows(part.feature_source, db, seed), logmel_extractor_sha256()
    pca = None if part.pca_components is None else min(part.pca_components, len(features) - 1, features.shape[1])

    def fit(**extra) -> FittedDetector:
        return fit_detector(part.kind, features, sha, feature_source=part.feature_source, pca_components=pca,
                            pca_whiten=part.pca_whiten, random_state=seed, **dict(part.overrides), **extra)

    if not part.bic_components:
        return fit()
    smallest = fit(n_components=min(part.bic_components))
    best = _bic_choice(part, smallest, features, seed)
    return smallest if best == min(part.bic_components) else fit(n_components=best)


def score_part(part: Part, fitted: FittedDetector, cnn: np.ndarray | None, db: np.ndarray) -> np.ndarray:
    """Raw per-patch scores of one part, exactly as `agent.model.pipeline.PatchScorer` computes them on the board."""
    if part.feature_source == CNN:
        return fitted.score(cnn)
    return frame_patch_scores(fitted.score, part.feature_source, db)


def fit_rows(source: str, db: np.ndarray, seed: int) -> np.ndarray:
    """The frame rows to fit on: each frame once (patches overlap by half, so every other patch), subsampled to
    MAX_FIT_FRAMES with a seeded draw."""
    step = PATCH_FRAMES // PATCH_HOP_FRAMES
    frames = frame_rows(source, db[::step])
    if len(frames) > MAX_FIT_FRAMES:
        keep = np.sort(np.random.default_rng(seed).choice(len(frames), MAX_FIT_FRAMES, replace=False))
        frames = frames[keep]
    return frames


def _bic_choice(part: Part, fitted: FittedDetector, features: np.ndarray, seed: int) -> int:
    """The component count among part.bic_components with the lowest BIC, on the features as `fitted` transforms
    them (its scaler and PCA do not depend on the count, so they are fitted once)."""
    estimator = fitted.estimator
    z = estimator.scaler_.transform(np.asarray(features, dtype=np.float64))
    if estimator.projection_ is not None:
        z = estimator.projection_.transform(z)
    params = {k: v for k, v in estimator.model_params_.items() if k != "n_components"}
    bics = {k: GaussianMixture(n_components=min(k, len(z)), **params).fit(z).bic(z) for k in part.bic_components}
    log.debug("%s: BIC by component count %s", part.name, {k: round(v) for k, v in bics.items()})
    return min(bics, key=bics.get)
