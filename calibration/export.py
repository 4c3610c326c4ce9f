"""Turn a fitted scikit-learn detector into the plain numpy arrays that `agent.model.scorers` reads (one .npz).

The file holds no pickles: strings are 0-d unicode arrays, so the board loads it with allow_pickle=False.
Layout (schema `agent.contract.SCHEMA_VERSION`), common to every kind:
    schema_version, kind, feature_dim, extractor_sha256, feature_source, scaler_mean, scaler_scale,
    optionally projection_mean (d,), projection_matrix (p, d)  [PCA applied after standardisation]
and per kind (k components, m support vectors, n training points, p = projected dimension or d):
    gmm, bgmm: means (k, p), precisions_cholesky (k, p), log_weights (k,)
    ocsvm:     support_vectors (m, p), dual_coef (m,), intercept (), gamma ()
    kde:       points (n, p), bandwidth ()
    iforest:   tree_offsets (trees + 1,), children_left, children_right, feature, threshold, n_node_samples
               (all (nodes,), trees concatenated, child and feature indices global), max_samples ()
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import digamma

from humwatch.agent.contract import SCHEMA_VERSION
from humwatch.agent.durable import write_atomic
from humwatch.agent.errors import ModelError

if TYPE_CHECKING:
    from humwatch.calibration.detectors import FittedDetector


def detector_arrays(fitted: "FittedDetector") -> dict[str, np.ndarray]:
    """All arrays of the .npz for a fitted detector, common part first."""
    estimator = fitted.estimator
    arrays = {
        "schema_version": np.array(SCHEMA_VERSION, dtype=np.int64),
        "kind": np.array(fitted.kind),
        "feature_dim": np.array(fitted.feature_dim, dtype=np.int64),
        "extractor_sha256": np.array(fitted.extractor_sha256),
        "feature_source": np.array(fitted.feature_source),
        "scaler_mean": estimator.scaler_.mean_,
        "scaler_scale": estimator.scaler_.scale_,
    }
    if estimator.projection_ is not None:
        arrays.update(_projection_arrays(estimator.projection_))
    arrays.update(KIND_ARRAYS[fitted.kind](estimator.model_))
    return {name: np.asarray(value, order="C") for name, value in arrays.items()}


def write_npz_atomic(path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to `path` as an uncompressed .npz, atomically."""
    write_atomic(path, lambda f: np.savez(f, **arrays))


def _projection_arrays(pca) -> dict[str, np.ndarray]:
    matrix = pca.components_
    if pca.whiten:
        matrix = matrix / np.sqrt(pca.explained_variance_)[:, np.newaxis]
    return {"projection_mean": pca.mean_, "projection_matrix": matrix}


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ModelError(f"cannot export this detector for the board: {what}")


def _gmm_arrays(model) -> dict[str, np.ndarray]:
    _require(model.covariance_type == "diag", f"covariance_type={model.covariance_type!r}, only 'diag' is scored")
    return {"means": model.means_, "precisions_cholesky": model.precisions_cholesky_,
            "log_weights": np.log(model.weights_)}


def _bgmm_arrays(model) -> dict[str, np.ndarray]:
    """A B-GMM scores like a GMM whose per-component log weight also carries the variational expectation terms."""
    _require(model.covariance_type == "diag", f"covariance_type={model.covariance_type!r}, only 'diag' is scored")
    n_features = model.means_.shape[1]
    concentration = model.weight_concentration_
    if model.weight_concentration_prior_type == "dirichlet_process":
        digamma_sum = digamma(concentration[0] + concentration[1])
        log_weights = (digamma(concentration[0]) - digamma_sum
                       + np.hstack((0.0, np.cumsum(digamma(concentration[1]) - digamma_sum)[:-1])))
    else:
        log_weights = digamma(concentration) - digamma(np.sum(concentration))
    dof = model.degrees_of_freedom_
    log_lambda = n_features * np.log(2.0) + np.sum(
        digamma(0.5 * (dof - np.arange(n_features)[:, np.newaxis])), axis=0)
    offsets = -0.5 * n_features * np.log(dof) + 0.5 * (log_lambda - n_features / model.mean_precision_)
    return {"means": model.means_, "precisions_cholesky": model.precisions_cholesky_,
            "log_weights": log_weights + offsets}


def _ocsvm_arrays(model) -> dict[str, np.ndarray]:
    _require(model.kernel == "rbf", f"kernel={model.kernel!r}, only 'rbf' is scored")
    return {"support_vectors": model.support_vectors_, "dual_coef": model.dual_coef_[0],
            "intercept": np.array(model.intercept_[0]), "gamma": np.array(float(model.gamma))}


def _kde_arrays(model) -> dict[str, np.ndarray]:
    _require(model.kernel == "gaussian", f"kernel={model.kernel!r}, only 'gaussian' is scored")
    _require(model.tree_.sample_weight is None, "sample weights are not scored")
    return {"points": np.asarray(model.tree_.data), "bandwidth": np.array(float(model.bandwidth_))}


def _iforest_arrays(model) -> dict[str, np.ndarray]:
    """Concatenate the trees; child indices are made global and features mapped to the full feature vector."""
    parts = {"children_left": [], "children_right": [], "feature": [], "threshold": [], "n_node_samples": []}
    offsets = [0]
    for tree, features in zip(model.estimators_, model.estimators_features_):
        t = tree.tree_
        leaf = t.children_left < 0
        parts["children_left"].append(np.where(leaf, -1, t.children_left + offsets[-1]))
        parts["children_right"].append(np.where(leaf, -1, t.children_right + offsets[-1]))
        parts["feature"].append(np.where(leaf, -1, np.asarray(features)[np.maximum(t.feature, 0)]))
        parts["threshold"].append(np.where(leaf, 0.0, t.threshold))
        parts["n_node_samples"].append(t.n_node_samples)
        offsets.append(offsets[-1] + t.node_count)
    arrays = {name: np.concatenate(values).astype(np.float64 if name == "threshold" else np.int64)
              for name, values in parts.items()}
    arrays["tree_offsets"] = np.array(offsets, dtype=np.int64)
    arrays["max_samples"] = np.array(int(model.max_samples_), dtype=np.int64)
    return arrays


KIND_ARRAYS = {"gmm": _gmm_arrays, "bgmm": _bgmm_arrays, "ocsvm": _ocsvm_arrays, "kde": _kde_arrays,
               "iforest": _iforest_arrays}
