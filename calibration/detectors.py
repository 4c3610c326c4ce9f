"""Fit the anomaly detectors of the paper on normal-sound features with scikit-learn.

Every detector is fitted on standardised features (a StandardScaler fitted on the same normal training features),
optionally projected by PCA, so the board can repeat the exact transform with numpy (see `agent.model.scorers`).
Sign convention, stated once for the whole project: higher score = more anomalous.

Defaults follow Müller et al. (2020): GMM with 80 diagonal components (k-means init, 150 iterations),
OC-SVM (RBF, nu = 1e-4; the paper names no gamma, so scikit-learn's default 'scale' is used), and for evaluation
a Bayesian GMM, an Isolation Forest with 128 trees and a Gaussian KDE with bandwidth 0.1. Any of these
parameters can be overridden by keyword.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.mixture import BayesianGaussianMixture, GaussianMixture
from sklearn.neighbors import KernelDensity
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM
from sklearn.utils.validation import check_is_fitted, validate_data

from humwatch.agent.errors import ModelError
from humwatch.agent.model.scorers import Detector, DetectorArrays
from humwatch.calibration.export import detector_arrays, write_npz_atomic
from humwatch.calibration.workstation_scorers import ALL_SCORERS

log = logging.getLogger(__name__)

# kind -> (estimator class, default parameters). The paper's values; overridable through fit_detector(**overrides).
ESTIMATORS = {
    "gmm": (GaussianMixture, {"n_components": 80, "covariance_type": "diag", "init_params": "kmeans",
                              "max_iter": 150}),
    "bgmm": (BayesianGaussianMixture, {"n_components": 80, "covariance_type": "diag", "init_params": "kmeans",
                                       "max_iter": 150}),
    "ocsvm": (OneClassSVM, {"kernel": "rbf", "nu": 1e-4, "gamma": "scale"}),
    "iforest": (IsolationForest, {"n_estimators": 128}),
    "kde": (KernelDensity, {"kernel": "gaussian", "bandwidth": 0.1}),
}
KINDS = tuple(ESTIMATORS)
# A mixture gets at most one component per this many training patches; fewer patches reduce the component count.
MIN_PATCHES_PER_COMPONENT = 2
# Below this many training patches no detector is fitted at all (a scaler needs a spread to standardise with).
MIN_TRAINING_PATCHES = 2


class AnomalyDetector(BaseEstimator):
    """One detector of `kind` behind a StandardScaler and an optional PCA, as a scikit-learn estimator.

    `params` overrides the kind's defaults in ESTIMATORS; `pca_components` (int) projects the standardised
    features onto that many principal components before the detector (whitened if `pca_whiten`).
    """

    def __init__(self, kind: str = "gmm", params: dict | None = None, pca_components: int | None = None,
                 pca_whiten: bool = False, random_state: int | None = 0):
        self.kind = kind
        self.params = params
        self.pca_components = pca_components
        self.pca_whiten = pca_whiten
        self.random_state = random_state

    def fit(self, X, y=None) -> "AnomalyDetector":
        """Learn scaler_, projection_ (PCA or None), model_ and model_params_ from normal features X (n, d)."""
        if self.kind not in ESTIMATORS:
            raise ModelError(f"unknown detector kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        estimator_class, defaults = ESTIMATORS[self.kind]
        unknown = sorted(set(self.params or {}) - set(estimator_class().get_params()))
        if unknown:
            raise ModelError(f"{self.kind} detector: unknown parameter(s) {', '.join(unknown)} for "
                             f"{estimator_class.__name__}")
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=1)
        n_samples = X.shape[0]
        if n_samples < MIN_TRAINING_PATCHES:
            raise ModelError(f"{self.kind} detector: {n_samples} training patch(es) given, at least "
                             f"{MIN_TRAINING_PATCHES} needed; record more normal sound")
        self.scaler_ = StandardScaler().fit(X)
        Z = self.scaler_.transform(X)
        self.projection_ = None
        if self.pca_components is not None:
            self.projection_ = PCA(n_components=self._pca_components(X.shape), whiten=self.pca_whiten,
                                   random_state=self.random_state).fit(Z)
            Z = self.projection_.transform(Z)
        self.model_params_ = self._resolved_params({**defaults, **(self.params or {})}, Z)
        if "random_state" in estimator_class().get_params():
            self.model_params_.setdefault("random_state", self.random_state)
        self.model_ = estimator_class(**self.model_params_).fit(Z)
        return self

    def score_samples(self, X) -> np.ndarray:
        """Anomaly score per row of X computed by scikit-learn: the reference the numpy scorers must equal.

        Beware the KDE: scikit-learn's tree-based density is known to be wrong far from the training points
        when every kernel underflows (scikit-learn issues #7492, #25799), which bandwidth 0.1 on standardised
        features provokes; `FittedDetector.score` computes the exact value.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        Z = self.scaler_.transform(X)
        if self.projection_ is not None:
            Z = self.projection_.transform(Z)
        if self.kind == "ocsvm":
            return -self.model_.decision_function(Z)
        return -self.model_.score_samples(Z)

    def _pca_components(self, shape: tuple[int, int]) -> int:
        n_samples, n_features = shape
        limit = min(n_samples, n_features)
        if not 1 <= self.pca_components <= limit:
            raise ModelError(f"{self.kind} detector: pca_components={self.pca_components} must be between 1 and "
                             f"{limit} (min of {n_samples} training patches and {n_features} features)")
        return self.pca_components

    def _resolved_params(self, params: dict, Z: np.ndarray) -> dict:
        """Make the parameters explicit for the training data Z: a mixture's component count is reduced to what
        the patches support (with a warning), and the OC-SVM's gamma 'scale'/'auto' becomes its number."""
        n_samples, n_features = Z.shape
        wanted = params.get("n_components")
        if self.kind in ("gmm", "bgmm") and wanted is not None:
            supported = max(1, n_samples // MIN_PATCHES_PER_COMPONENT)
            if wanted > supported:
                log.warning("%s detector: %d training patches support at most %d components "
                            "(%d patches per component); reducing n_components from %d to %d",
                            self.kind, n_samples, supported, MIN_PATCHES_PER_COMPONENT, wanted, supported)
                params["n_components"] = supported
        if self.kind == "ocsvm" and params.get("gamma") == "auto":
            params["gamma"] = 1.0 / n_features
        elif self.kind == "ocsvm" and params.get("gamma") == "scale":
            variance = Z.var()  # scikit-learn's rule, resolved here so the number is logged and exported
            params["gamma"] = 1.0 / (n_features * variance) if variance != 0 else 1.0
        return params


@dataclass(frozen=True)
class FittedDetector:
    """A fitted detector and what it was fitted on: the unit that is written to one .npz for the board."""

    estimator: AnomalyDetector
    extractor_sha256: str
    feature_source: str = "cnn"

    @property
    def kind(self) -> str:
        return self.estimator.kind

    @property
    def feature_dim(self) -> int:
        return int(self.estimator.n_features_in_)

    def arrays(self) -> dict[str, np.ndarray]:
        """The plain arrays of the .npz (see `calibration.export`)."""
        return detector_arrays(self)

    @cached_property
    def board_detector(self) -> Detector:
        """The numpy scorer the board will build from these arrays."""
        return Detector(DetectorArrays(Path(f"<unsaved {self.kind} detector>"), self.arrays()), ALL_SCORERS)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Per-patch anomaly score exactly as the board computes it (higher = more anomalous), so a threshold
        chosen on these scores means the same on the board."""
        return self.board_detector.score(features)

    def save(self, path) -> None:
        """Write the detector as plain numpy arrays to one .npz, atomically."""
        write_npz_atomic(path, self.arrays())


def fit_detector(kind: str, features: np.ndarray, extractor_sha256: str, feature_source: str = "cnn",
                 pca_components: int | None = None, pca_whiten: bool = False, random_state: int | None = 0,
                 **overrides) -> FittedDetector:
    """Fit a `kind` detector on normal features (n, d); `overrides` replace the kind's default parameters."""
    if not (isinstance(extractor_sha256, str) and len(extractor_sha256) == 64
            and set(extractor_sha256) <= set("0123456789abcdef")):
        raise ValueError(f"extractor_sha256 must be 64 lowercase hex digits, not {extractor_sha256!r}")
    estimator = AnomalyDetector(kind=kind, params=overrides, pca_components=pca_components, pca_whiten=pca_whiten,
                                random_state=random_state).fit(features)
    log.info("fitted %s detector on %d feature rows of %d values (%s)", kind, len(features),
             estimator.n_features_in_, ", ".join(f"{k}={v}" for k, v in sorted(estimator.model_params_.items())))
    return FittedDetector(estimator=estimator, extractor_sha256=extractor_sha256, feature_source=feature_source)
