"""Score features on the board with numpy alone, from a detector .npz written by `calibration.export`.

Every score is per patch and higher means more anomalous: GMM and B-GMM give the negative log-likelihood,
the OC-SVM the negative decision function, the KDE the negative log density and the Isolation Forest the negative
of scikit-learn's score_samples, each equal to scikit-learn's own value. The file is loaded with allow_pickle=False
and checked completely at load time, so a damaged or mismatched file fails at start with one line naming it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from humwatch.agent.contract import SCHEMA_VERSION, WINDOW_PATCHES
from humwatch.agent.errors import ModelError
from humwatch.agent.npz import read_npz

COMMON_ARRAYS = ("schema_version", "kind", "feature_dim", "extractor_sha256", "feature_source", "scaler_mean",
                 "scaler_scale")
PROJECTION_ARRAYS = ("projection_mean", "projection_matrix")
LOG_2PI = np.log(2.0 * np.pi)


class DetectorArrays:
    """The arrays of one detector file, read through checks that name the file and the array at fault."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray]):
        self.path = path
        self.arrays = arrays

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.path}: {what}")

    def get(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise self.fail(f"array '{name}' is missing")
        return self.arrays[name]

    def text(self, name: str) -> str:
        value = self.get(name)
        if value.ndim != 0 or value.dtype.kind != "U":
            raise self.fail(f"array '{name}' must be a string, not {value.dtype} of shape {value.shape}")
        return str(value)

    def integer(self, name: str, minimum: int) -> int:
        value = self.get(name)
        if value.ndim != 0 or value.dtype.kind not in "iu" or int(value) < minimum:
            raise self.fail(f"array '{name}' must be an integer >= {minimum}, not {value!r}")
        return int(value)

    def real(self, name: str, shape: tuple, positive: bool = False) -> np.ndarray:
        """A finite float64 array of `shape` (None = any length, fixed in later checks by the caller)."""
        value = self._shaped(name, shape, "f", "floating-point")
        if not np.all(np.isfinite(value)):
            raise self.fail(f"array '{name}' holds NaN or infinite values")
        if positive and not np.all(value > 0):
            raise self.fail(f"array '{name}' must be positive everywhere")
        return value.astype(np.float64)

    def indices(self, name: str, shape: tuple) -> np.ndarray:
        return self._shaped(name, shape, "iu", "integer").astype(np.int64)

    def _shaped(self, name: str, shape: tuple, kinds: str, kind_name: str) -> np.ndarray:
        value = self.get(name)
        if value.dtype.kind not in kinds:
            raise self.fail(f"array '{name}' must be {kind_name}, not {value.dtype}")
        if value.ndim != len(shape) or any(want is not None and got != want for got, want in zip(value.shape, shape)):
            wanted = "(" + ", ".join("n" if want is None else str(want) for want in shape) + ")"
            raise self.fail(f"array '{name}' has shape {value.shape}, expected {wanted}")
        return value


class MixtureScorer:
    """GMM / B-GMM with diagonal covariances: negative log of sum_k exp(log_weight_k + log N(z; mean_k, diag))."""

    ARRAYS = ("means", "precisions_cholesky", "log_weights")

    def __init__(self, arrays: DetectorArrays, dim: int):
        means = arrays.real("means", (None, dim))
        k = len(means)
        if k == 0:
            raise arrays.fail("array 'means' has no components")
        precisions_cholesky = arrays.real("precisions_cholesky", (k, dim), positive=True)
        log_weights = arrays.real("log_weights", (k,))
        # log(weight_k N(z; mean_k, diag)) = constant_k + [z², z] @ coefficients[k]: one matrix product per batch.
        # Matrices are kept (k, ·) and multiplied through .T views: for one patch that is a single-threaded BLAS
        # gemv, which a transposed copy was not (OpenBLAS threads then stalled on a busy CPU).
        precisions = precisions_cholesky ** 2
        self.coefficients = np.concatenate([-0.5 * precisions, means * precisions], axis=1)
        self.constants = (log_weights + np.sum(np.log(precisions_cholesky), axis=1)
                          - 0.5 * (dim * LOG_2PI + np.sum(means ** 2 * precisions, axis=1)))

    def score(self, z: np.ndarray) -> np.ndarray:
        weighted = self.constants + np.concatenate([z * z, z], axis=1) @ self.coefficients.T
        return -log_sum_exp(weighted)


class OneClassSvmScorer:
    """RBF OC-SVM: -(sum_i dual_i * exp(-gamma * |z - sv_i|^2) + intercept)."""

    ARRAYS = ("support_vectors", "dual_coef", "intercept", "gamma")

    def __init__(self, arrays: DetectorArrays, dim: int):
        support_vectors = arrays.real("support_vectors", (None, dim))
        m = len(support_vectors)
        if m == 0:
            raise arrays.fail("array 'support_vectors' is empty")
        self.dual_coef = arrays.real("dual_coef", (m,))
        self.intercept = float(arrays.real("intercept", ()))
        self.gamma = float(arrays.real("gamma", (), positive=True))
        self.support_vectors = support_vectors
        self.support_norms = np.sum(support_vectors ** 2, axis=1)

    def score(self, z: np.ndarray) -> np.ndarray:
        squared = np.sum(z ** 2, axis=1)[:, np.newaxis] + self.support_norms - 2.0 * (z @ self.support_vectors.T)
        return -(np.exp(-self.gamma * squared) @ self.dual_coef + self.intercept)


class NearestWindowScorer:
    """Distance to the nearest normal window of the calibration bank (k = 1), for window-level detectors: the input
    is a window's mean of transformed patch features. `bank_groups` (which calibration block each bank window came
    from) and `bank_stride` let calibration recompute leave-one-block-out scores when normal sound is added; the
    board only measures distances."""

    ARRAYS = ("bank", "bank_groups", "bank_stride")

    def __init__(self, arrays: DetectorArrays, dim: int):
        bank = arrays.real("bank", (None, dim))
        if len(bank) == 0:
            raise arrays.fail("array 'bank' is empty")
        self.groups = arrays.indices("bank_groups", (len(bank),))
        self.stride = arrays.integer("bank_stride", 1)
        self.bank = bank.astype(np.float32)
        self.bank_norms = np.sum(bank ** 2, axis=1)

    def score(self, z: np.ndarray) -> np.ndarray:
        return nearest_distances(z, self.bank, self.bank_norms)


def nearest_distances(z: np.ndarray, bank: np.ndarray, bank_norms: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance of each row of z to its nearest row of bank, by |z|² + |b|² - 2 z·b (one matrix product in
    the bank's precision: float32 on the board, where the bank is searched once a patch)."""
    z = np.asarray(z, dtype=bank.dtype)
    norms = np.sum(bank.astype(np.float64) ** 2, axis=1) if bank_norms is None else bank_norms
    squared = np.sum(z.astype(np.float64) ** 2, axis=1)[:, np.newaxis] + norms - 2.0 * (z @ bank.T)
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


class KernelDensityScorer:
    """Gaussian KDE over the training points: the negative log of the mean kernel density."""

    ARRAYS = ("points", "bandwidth")

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

    ARRAYS = ("tree_offsets", "children_left", "children_right", "feature", "threshold", "n_node_samples",
              "max_samples")

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


KIND_SCORERS = {"gmm": MixtureScorer, "bgmm": MixtureScorer, "ocsvm": OneClassSvmScorer,
                "kde": KernelDensityScorer, "iforest": IsolationForestScorer, "knn": NearestWindowScorer}
WINDOW_KINDS = ("knn",)  # read on a window's mean features, not per patch (agent.model.pipeline)


class Detector:
    """A loaded detector: standardise (and project) features, then score them with the kind's scorer."""

    def __init__(self, arrays: DetectorArrays):
        version = arrays.integer("schema_version", 0)
        if version != SCHEMA_VERSION:
            raise arrays.fail(f"detector schema version {version}, this humwatch reads version {SCHEMA_VERSION}")
        self.path = arrays.path
        self.kind = arrays.text("kind")
        if self.kind not in KIND_SCORERS:
            raise arrays.fail(f"unknown detector kind {self.kind!r} (known: {', '.join(KIND_SCORERS)})")
        self.feature_dim = arrays.integer("feature_dim", 1)
        self.extractor_sha256 = arrays.text("extractor_sha256")
        if len(self.extractor_sha256) != 64 or not set(self.extractor_sha256) <= set("0123456789abcdef"):
            raise arrays.fail(f"array 'extractor_sha256' is not a sha256 hex digest: {self.extractor_sha256!r}")
        self.feature_source = arrays.text("feature_source")
        self.scaler_mean = arrays.real("scaler_mean", (self.feature_dim,))
        self.scaler_scale = arrays.real("scaler_scale", (self.feature_dim,), positive=True)
        self.projection = None
        model_dim = self.feature_dim
        scorer_class = KIND_SCORERS[self.kind]
        expected = set(COMMON_ARRAYS) | set(scorer_class.ARRAYS)
        if any(name in arrays.arrays for name in PROJECTION_ARRAYS):
            expected |= set(PROJECTION_ARRAYS)
            projection_mean = arrays.real("projection_mean", (self.feature_dim,))
            components = arrays.real("projection_matrix", (None, self.feature_dim))
            model_dim = len(components)
            if model_dim == 0:
                raise arrays.fail("array 'projection_matrix' has no components")
            # Standardisation and projection folded into one map, z = (x - scaler_mean) @ projection + offset,
            # computed in float32: the features are float32 (int8-quantised for an int8 CNN), and the product
            # with a (feature_dim, model_dim) matrix is the detector's whole cost, which float32 halves.
            self.centre = self.scaler_mean.astype(np.float32)
            self.projection = (components / self.scaler_scale).astype(np.float32)
            self.offset = -(projection_mean @ components.T)
        unexpected = sorted(set(arrays.arrays) - expected)
        if unexpected:
            raise arrays.fail(f"unexpected array(s) {', '.join(unexpected)} for a {self.kind} detector")
        self.scorer = scorer_class(arrays, model_dim)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Standardise with the training scaler, then project if the detector was fitted after a PCA.

        Standardising first is what keeps a mixture exact: a constant training feature gets a precision near
        1/reg_covar (1e22 in an unused B-GMM component), harmless on z = 0 but ruinous if folded into the raw
        features' quadratic form."""
        if self.projection is None:
            return (features - self.scaler_mean) / self.scaler_scale
        return (np.asarray(features, dtype=np.float32) - self.centre) @ self.projection.T + self.offset

    @property
    def window_level(self) -> bool:
        return self.kind in WINDOW_KINDS

    @property
    def model_dim(self) -> int:
        """Values per row after `transform`: what a window-level detector averages over a window."""
        return self.feature_dim if self.projection is None else len(self.projection)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Anomaly score (float64, higher = more anomalous) for each row of `features` (n, feature_dim)."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"{self.path}: features of shape {features.shape}, expected (n, {self.feature_dim})")
        if not np.isfinite(features).all():
            raise ValueError(f"{self.path}: features hold NaN or infinite values")
        return self.scorer.score(self.transform(features))


def load_detector(path, extractor_sha256: str | None = None) -> Detector:
    """Load and check a detector .npz; refuse (ModelError) one fitted on another extractor than `extractor_sha256`."""
    path = Path(path)
    detector = Detector(DetectorArrays(path, read_npz(path, "detector")))
    if extractor_sha256 is not None and detector.extractor_sha256 != extractor_sha256:
        raise ModelError(f"{path}: fitted on features of extractor {detector.extractor_sha256[:12]}…, "
                         f"but this feature extractor is {extractor_sha256[:12]}…; calibrate again")
    return detector


def window_mean(patch_scores: np.ndarray, window_patches: int = WINDOW_PATCHES) -> np.ndarray:
    """Mean of each run of `window_patches` consecutive patch scores (the paper's mean-pooling), per column when
    there is one column per detector.

    n patch scores give n - window_patches + 1 window scores (none if n < window_patches); window i covers patches
    i .. i + window_patches - 1.
    """
    scores = np.asarray(patch_scores, dtype=np.float64)
    if scores.ndim not in (1, 2):
        raise ValueError(f"patch scores must be (patches,) or (patches, detectors), not of shape {scores.shape}")
    if int(window_patches) != window_patches or window_patches < 1:
        raise ValueError(f"window_patches must be a positive integer, not {window_patches!r}")
    if len(scores) < window_patches:
        return np.empty((0, *scores.shape[1:]))
    return sliding_window_view(scores, int(window_patches), axis=0).mean(axis=-1)


def log_sum_exp(values: np.ndarray) -> np.ndarray:
    """log(sum(exp(values), axis=1)) without overflow or underflow: the row maximum is taken out first."""
    if values.shape[1] == 0:
        return np.full(len(values), -np.inf)
    peak = values.max(axis=1, keepdims=True)
    peak[~np.isfinite(peak)] = 0.0
    return np.log(np.exp(values - peak).sum(axis=1)) + peak[:, 0]


def average_path_length(n_samples: np.ndarray) -> np.ndarray:
    """c(n): average path length of an unsuccessful search in a binary search tree of n samples (0 for n <= 1)."""
    n = np.asarray(n_samples, dtype=np.float64)
    safe = np.maximum(n, 3.0)
    general = 2.0 * (np.log(safe - 1.0) + np.euler_gamma) - 2.0 * (safe - 1.0) / safe
    return np.where(n <= 1, 0.0, np.where(n == 2, 1.0, general))
