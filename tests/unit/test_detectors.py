

"""Contract suite for every detector kind: the numpy scorer equals scikit-learn, files round-trip, damaged or
mismatched files are refused with a line naming them, and higher scores mean more anomalous."""

from __future__ import annotations

import logging
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from humwatch.agent.contract import SCHEMA_VERSION, WINDOW_PATCHES, logmel_extractor_sha256
from humwatch.agent.errors import ModelError
from humwatch.agent.model.scorers import load_detector as load_on_board
from humwatch.agent.model.scorers import window_mean
from humwatch.agent.signal.audio import read_wav
from humwatch.agent.signal.frontend import clip_patches
from humwatch.agent.signal.mel import mel_db
from humwatch.calibration.detectors import KINDS, AnomalyDetector, fit_detector
from humwatch.calibration.workstation_scorers import load_workstation_detector as load_detector
from tests.plugins.detectors import assert_equal_scores, assert_refused

SHA = "0123456789abcdef" * 4


OTHER_SHA = "f" * 64


# Small models keep the suite quick; the paper's defaults are exercised in test_default_parameters_*.
SMALL = {"gmm": {"n_components": 6}, "bgmm": {"n_components": 6}, "ocsvm": {}, "kde": {},
         "iforest": {"n_estimators": 32}}


def exact_kde_log_density(train_z: np.ndarray, z: np.ndarray, bandwidth: float) -> np.ndarray:
    squared = ((z[:, None, :] - train_z[None, :, :]) ** 2).sum(axis=-1)
    d = z.shape[1]
    return (logsumexp(-0.5 * squared / bandwidth ** 2, axis=1) - np.log(len(train_z))
            - 0.5 * d * np.log(2 * np.pi) - d * np.log(bandwidth))


@pytest.fixture(scope="module")
def random_features() -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features with unequal scales and offsets, one constant column; held-out normal rows + outliers."""
    rng = np.random.default_rng(4)
    scale, offset = rng.uniform(0.1, 5.0, 24), rng.normal(0, 3, 24)
    train = rng.normal(size=(300, 24)) * scale + offset
    train[:, 5] = 2.5
    test = np.vstack([rng.normal(size=(40, 24)) * scale + offset, rng.normal(size=(10, 24)) * scale * 3 + offset])
    test[:, 5] = 2.5
    return train, test


@pytest.fixture(scope="module")
def logmel_frames(shared_dir) -> tuple[np.ndarray, np.ndarray]:
    """Real features: log-Mel frames (64-d) of real factory recordings; test = other normal clips + the anomaly."""
    audio = shared_dir / "audio" / "dcase2020-id00"
    frames = [mel_db(read_wav(audio / "train" / f"normal_id_00_{i:08d}.wav")).T for i in range(4)]
    train = np.vstack(frames[:3])[::3]
    anomaly = mel_db(read_wav(audio / "test" / "anomaly_id_00_00000000.wav")).T
    return train, np.vstack([frames[3][::20], anomaly[::20]])


@pytest.fixture(scope="module")
def cnn_like_features(shared_dir) -> tuple[np.ndarray, np.ndarray]:
    """CNN-like features of real sound: a fixed random ReLU layer over real Mel patches, averaged over 2x2 cells
    (non-negative, sparse, some units dead = constant), 256-d."""
    audio = shared_dir / "audio" / "dcase2020-id00"
    rng = np.random.default_rng(7)
    weights = rng.normal(size=(32 * 32, 64)) / 32.0
    bias = rng.normal(-12.0, 4.0, 64)

    def embed(path) -> np.ndarray:
        db = clip_patches(read_wav(path)).db.astype(np.float64)  # (n, 64, 64)
        cells = db.reshape(len(db), 2, 32, 2, 32).transpose(0, 1, 3, 2, 4).reshape(len(db), 4, 32 * 32)
        return np.maximum(cells @ weights + bias, 0.0).reshape(len(db), -1)

    train = np.vstack([embed(audio / "train" / f"normal_id_00_{i:08d}.wav") for i in range(12)])
    test = np.vstack([embed(audio / "train" / "normal_id_00_00000012.wav"),
                      embed(audio / "test" / "anomaly_id_00_00000000.wav")])
    return train, test


DATASETS = ["random_features", "logmel_frames", "cnn_like_features"]


@pytest.fixture(scope="module")
def fitted(random_features):
    """One small fitted detector of every kind on the random features."""
    train, _ = random_features
    return {kind: fit_detector(kind, train, SHA, **SMALL[kind]) for kind in KINDS}


@pytest.fixture
def saved(fitted, tmp_path):
    def save(kind: str):
        path = tmp_path / f"{kind}.npz"
        fitted[kind].save(path)
        return path
    return save


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("kind", KINDS)
def test_scores_equal_scikit_learn(kind, dataset, request, tmp_path):
    train, test = request.getfixturevalue(dataset)
    detector = fit_detector(kind, train, SHA, **SMALL[kind])
    detector.save(tmp_path / "d.npz")
    loaded = load_detector(tmp_path / "d.npz", extractor_sha256=SHA)
    points = np.vstack([test, train[:20]])
    ours = loaded.score(points)
    if kind == "kde":
        # scikit-learn's tree KDE is exact only near the training points (far away it is known to be wrong);
        # everywhere, the scorer must equal the exact density.
        assert_equal_scores(ours[len(test):], detector.estimator.score_samples(train[:20]))
        z = detector.estimator.scaler_.transform(points)
        train_z = detector.estimator.scaler_.transform(train)
        assert_equal_scores(ours, -exact_kde_log_density(train_z, z, 0.1))
    else:
        assert_equal_scores(ours, detector.estimator.score_samples(points))
    assert ours.dtype == np.float64 and ours.shape == (len(points),)


@pytest.mark.parametrize("kind", ["gmm", "ocsvm"])
def test_default_parameters_equal_scikit_learn_on_real_frames(kind, logmel_frames, tmp_path):
    """The paper's settings (GMM-80 diag, OC-SVM nu=1e-4) on real log-Mel frames."""
    train, test = logmel_frames
    detector = fit_detector(kind, train, logmel_extractor_sha256(), feature_source="logmel-frames")
    params = detector.estimator.model_params_
    if kind == "gmm":
        assert (params["n_components"], params["covariance_type"], params["init_params"],
                params["max_iter"]) == (80, "diag", "kmeans", 150)
    else:
        assert params["nu"] == 1e-4 and params["kernel"] == "rbf"
        z = detector.estimator.scaler_.transform(train.astype(np.float64))  # the detector fits in float64
        assert params["gamma"] == pytest.approx(1.0 / (z.shape[1] * z.var()), rel=1e-12)
    detector.save(tmp_path / "d.npz")
    loaded = load_detector(tmp_path / "d.npz")
    assert loaded.feature_source == "logmel-frames"
    assert_equal_scores(loaded.score(test), detector.estimator.score_samples(test))


def test_iforest_with_feature_subsampling_equals_scikit_learn(random_features):
    train, test = random_features
    detector = fit_detector("iforest", train, SHA, n_estimators=20, max_features=0.5, max_samples=64)
    assert_equal_scores(detector.score(test), detector.estimator.score_samples(test))


def test_bgmm_with_dirichlet_distribution_prior_equals_scikit_learn(random_features):
    train, test = random_features
    detector = fit_detector("bgmm", train, SHA, n_components=5,
                            weight_concentration_prior_type="dirichlet_distribution")
    assert_equal_scores(detector.score(test), detector.estimator.score_samples(test))


@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_pca_projection_is_stored_and_applied(kind, whiten, cnn_like_features, tmp_path):
    train, test = cnn_like_features
    detector = fit_detector(kind, train, SHA, pca_components=12, pca_whiten=whiten, **SMALL[kind])
    detector.save(tmp_path / "d.npz")
    with np.load(tmp_path / "d.npz", allow_pickle=False) as npz:
        assert npz["projection_matrix"].shape == (12, train.shape[1])
        assert npz["projection_mean"].shape == (train.shape[1],)
    loaded = load_detector(tmp_path / "d.npz")
    reference = detector.estimator.score_samples(test)
    if kind == "kde":
        pca = detector.estimator.projection_
        scaler = detector.estimator.scaler_
        reference = -exact_kde_log_density(pca.transform(scaler.transform(train)),
                                           pca.transform(scaler.transform(test)), 0.1)
    assert_equal_scores(loaded.score(test), reference, float32_projection=True)


def test_pca_components_out_of_range_is_a_clear_error(random_features):
    with pytest.raises(ModelError, match="pca_components=99"):
        fit_detector("gmm", random_features[0], SHA, pca_components=99)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_keeps_every_array_and_the_scores(kind, fitted, saved, random_features):
    path = saved(kind)
    with np.load(path, allow_pickle=False) as npz:
        stored = {name: npz[name] for name in npz.files}
    expected = fitted[kind].arrays()
    assert sorted(stored) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(stored[name], value, err_msg=name)
    assert stored["schema_version"] == SCHEMA_VERSION and str(stored["kind"]) == kind
    loaded = load_detector(path, extractor_sha256=SHA)
    assert (loaded.kind, loaded.feature_dim, loaded.extractor_sha256, loaded.feature_source) == (kind, 24, SHA, "cnn")
    test = random_features[1]
    np.testing.assert_array_equal(loaded.score(test), fitted[kind].score(test))


def test_save_replaces_atomically_and_leaves_no_temporary_file(fitted, tmp_path):
    path = tmp_path / "detector.npz"
    fitted["gmm"].save(path)
    fitted["ocsvm"].save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["detector.npz"]
    assert load_detector(path).kind == "ocsvm"


def rewrite(path, change) -> None:
    """Rewrite a detector file with `change(arrays)` applied (a tampered file that still unzips)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    change(arrays)
    np.savez(path, **arrays)


KIND_ARRAY = {"gmm": "means", "bgmm": "precisions_cholesky", "ocsvm": "support_vectors", "kde": "points",
              "iforest": "threshold"}


def set_nan(arrays, name):
    arrays[name] = arrays[name].copy()
    arrays[name].flat[0] = np.nan


TAMPERINGS = {
    "nan-in-model": (lambda a, k: set_nan(a, KIND_ARRAY[k]), "NaN"),
    "nan-in-scaler": (lambda a, k: set_nan(a, "scaler_mean"), "NaN"),
    "zero-scale": (lambda a, k: a.update(scaler_scale=np.zeros_like(a["scaler_scale"])), "positive"),
    "wrong-shape": (lambda a, k: a.update({KIND_ARRAY[k]: a[KIND_ARRAY[k]][..., :-1]}), "shape"),
    "wrong-feature-dim": (lambda a, k: a.update(feature_dim=np.array(23)), "shape"),
    "unknown-kind": (lambda a, k: a.update(kind=np.array("hmm")), "unknown detector kind 'hmm'"),
    "unknown-version": (lambda a, k: a.update(schema_version=np.array(SCHEMA_VERSION + 1)), "schema version"),
    "missing-array": (lambda a, k: a.pop(KIND_ARRAY[k]), "missing"),
    "extra-array": (lambda a, k: a.update(backdoor=np.zeros(3)), "unexpected array"),
    "kind-as-number": (lambda a, k: a.update(kind=np.array(3)), "must be a string"),
    "bad-sha": (lambda a, k: a.update(extractor_sha256=np.array("abc")), "sha256"),
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_tampered_file_is_refused(kind, tampering, saved):
    change, match = TAMPERINGS[tampering]
    path = saved(kind)
    rewrite(path, lambda arrays: change(arrays, kind))
    assert_refused(path, match)


def test_iforest_with_cyclic_children_is_refused(saved):
    path = saved("iforest")

    def loop_back(arrays):
        left = arrays["children_left"].copy()
        left[np.flatnonzero(left != -1)[1]] = 0  # an inner node pointing back at the root
        arrays["children_left"] = left
    rewrite(path, loop_back)
    assert_refused(path, "trees")


def test_iforest_deeper_than_its_max_samples_is_refused(saved):
    path = saved("iforest")
    rewrite(path, lambda arrays: arrays.update(max_samples=np.array(2)))
    assert_refused(path, "deeper than 1 levels")


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_file_is_refused(kind, saved):
    path = saved(kind)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, "truncated or damaged")


@pytest.mark.parametrize("kind", KINDS)
def test_corrupted_bytes_are_refused(kind, saved):
    path = saved(kind)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{KIND_ARRAY[kind]}.npy")
    data = bytearray(path.read_bytes())
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2  # inside the array's data
    data[middle] ^= 0xFF
    path.write_bytes(bytes(data))
    assert_refused(path, "truncated or damaged")


def test_pickled_object_array_is_refused(saved):
    path = saved("gmm")
    rewrite(path, lambda arrays: arrays.update(means=np.array([{"evil": 1}], dtype=object)))
    assert_refused(path, "truncated or damaged")


def test_missing_and_non_npz_files_are_refused(tmp_path):
    assert_refused(tmp_path / "absent.npz", "no such detector file")
    not_npz = tmp_path / "plain.npz"
    with open(not_npz, "wb") as file:
        np.save(file, np.zeros(3))
    assert_refused(not_npz, "truncated or damaged")


@pytest.mark.parametrize("kind", KINDS)
def test_detector_of_another_extractor_is_refused(kind, saved):
    path = saved(kind)
    assert load_detector(path, extractor_sha256=SHA).extractor_sha256 == SHA
    assert_refused(path, "extractor", extractor_sha256=OTHER_SHA)


@pytest.mark.parametrize("kind", ["gmm", "iforest"])
def test_features_of_the_wrong_shape_or_not_finite_are_refused(kind, saved):
    detector = load_detector(saved(kind))
    with pytest.raises(ValueError, match=r"expected \(n, 24\)"):
        detector.score(np.zeros((3, 23)))
    with pytest.raises(ValueError, match="NaN"):
        detector.score(np.full((2, 24), np.nan))


@pytest.mark.parametrize("kind", ["gmm", "bgmm"])
def test_too_few_patches_for_the_components_reduce_them_with_a_warning(kind, random_features, caplog, tmp_path):
    train = random_features[0][:30]
    with caplog.at_level(logging.WARNING, logger="humwatch.calibration.detectors"):
        detector = fit_detector(kind, train, SHA)  # the default 80 components
    assert detector.estimator.model_params_["n_components"] == 15
    assert "reducing n_components from 80 to 15" in caplog.text
    detector.save(tmp_path / "d.npz")
    assert load_detector(tmp_path / "d.npz").scorer.constants.shape == (15,)


@pytest.mark.parametrize("kind", KINDS)
def test_two_patches_are_enough_and_one_is_a_clear_error(kind, random_features):
    train = random_features[0]
    scores = fit_detector(kind, train[:2], SHA).score(random_features[1])
    assert np.all(np.isfinite(scores))
    with pytest.raises(ModelError, match="1 training patch"):
        fit_detector(kind, train[:1], SHA)


def test_unknown_kind_and_parameter_are_clear_errors(random_features):
    with pytest.raises(ModelError, match="unknown detector kind 'svm'"):
        fit_detector("svm", random_features[0], SHA)
    with pytest.raises(ModelError, match="unknown parameter.*n_trees"):
        fit_detector("iforest", random_features[0], SHA, n_trees=5)
    with pytest.raises(ValueError, match="extractor_sha256"):
        fit_detector("gmm", random_features[0], "not-a-sha")


def test_overrides_replace_the_defaults(random_features):
    train = random_features[0]
    assert fit_detector("gmm", train, SHA, n_components=3).arrays()["means"].shape == (3, 24)
    assert len(fit_detector("iforest", train, SHA, n_estimators=7).arrays()["tree_offsets"]) == 8
    assert fit_detector("kde", train, SHA, bandwidth=0.5).arrays()["bandwidth"] == 0.5
    assert fit_detector("ocsvm", train, SHA, gamma=0.01).arrays()["gamma"] == 0.01
    defaults = fit_detector("iforest", train, SHA).estimator.model_params_
    assert defaults["n_estimators"] == 128


def test_estimator_follows_scikit_learn_conventions(random_features):
    estimator = AnomalyDetector(kind="gmm", params={"n_components": 2}, pca_components=3)
    assert clone(estimator).get_params() == estimator.get_params()
    with pytest.raises(NotFittedError):
        estimator.score_samples(random_features[1])
    assert estimator.fit(random_features[0]) is estimator
    assert estimator.n_features_in_ == 24 and estimator.model_params_["n_components"] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_batch_equals_one_patch_at_a_time(kind, saved, random_features):
    detector = load_detector(saved(kind))
    test = random_features[1]
    one_by_one = np.concatenate([detector.score(test[i:i + 1]) for i in range(len(test))])
    np.testing.assert_allclose(detector.score(test), one_by_one, rtol=1e-12, atol=1e-12)
    assert detector.score(test[:0]).shape == (0,)


@pytest.mark.parametrize("kind", KINDS)
def test_obvious_outliers_score_higher_than_normal_patches(kind, fitted, random_features):
    train, test = random_features
    rng = np.random.default_rng(11)
    normal = test[:40]
    outliers = train[:20] + rng.choice([-1, 1], size=(20, 24)) * 12 * train.std(axis=0)
    normal_scores, outlier_scores = fitted[kind].score(normal), fitted[kind].score(outliers)
    assert outlier_scores.min() > np.median(normal_scores)
    assert np.median(outlier_scores) > normal_scores.max()


def test_window_mean_pools_consecutive_patches():
    scores = np.arange(20, dtype=float)
    np.testing.assert_array_equal(window_mean(scores, window_patches=4), np.arange(17) + 1.5)
    np.testing.assert_allclose(window_mean(scores), [8.5, 9.5, 10.5])
    assert WINDOW_PATCHES == 18 and window_mean(scores[:17]).shape == (0,)
    with pytest.raises(ValueError):
        window_mean(scores, window_patches=0)


@pytest.mark.parametrize("kind", ["bgmm", "kde", "iforest"])
def test_the_board_refuses_the_workstation_only_kinds(kind, saved):
    with pytest.raises(ModelError, match=f"unknown detector kind '{kind}' \\(known: gmm, ocsvm, knn\\)"):
        load_on_board(saved(kind))


def test_board_scoring_does_not_load_scikit_learn():
    code = "import sys, humwatch.agent.model.scorers; sys.exit('sklearn' in sys.modules)"
    repo = pathlib.Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=repo).returncode == 0
