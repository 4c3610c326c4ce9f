

"""Contract suite for every detector kind: the numpy scorer equals scikit-learn, files round-trip, damaged or
mismatched files are refused with a line naming them, and higher scores mean more anomalous."""

from __future__ import annotations

import numpy as np

from humwatch.agent.contract import WINDOW_PATCHES
from humwatch.agent.signal.audio import read_wav
from humwatch.agent.signal.frontend import clip_patches
from humwatch.calibration.detectors import fit_detector
from humwatch.calibration.workstation_scorers import load_workstation_detector as load_detector
from tests.plugins.detectors import assert_equal_scores, assert_refused


def test_real_squeezenet_features_and_extractor_identity(squeezenet_int8, squeezenet_float, shared_dir, tmp_path):
    """The paper's two detectors on int8 SqueezeNet 1.1 features (2048-d) of real sound; the detector is accepted
    by the extractor it was fitted with and refused by the float32 model of the same network."""
    from humwatch.agent.model.extractor import Extractor

    extractor = Extractor(squeezenet_int8)
    audio = shared_dir / "audio" / "dcase2020-id00"
    train = np.vstack([extractor.embed(clip_patches(read_wav(audio / "train" / f"normal_id_00_{i:08d}.wav")).images)
                       for i in range(20, 28)]).astype(np.float64)
    test = extractor.embed(clip_patches(read_wav(audio / "test" / "anomaly_id_00_00000000.wav")).images)
    assert train.shape == (8 * WINDOW_PATCHES, 2048)
    for kind in ("gmm", "ocsvm"):
        detector = fit_detector(kind, train, extractor.sha256)
        path = tmp_path / f"{kind}.npz"
        detector.save(path)
        loaded = load_detector(path, extractor_sha256=extractor.sha256)
        assert_equal_scores(loaded.score(test), detector.estimator.score_samples(test))
        assert_refused(path, "extractor", extractor_sha256=Extractor(squeezenet_float).sha256)
