"""A tiny synthetic dataset in the MIMII layout for the evaluation tests, and the check of a protocol's results."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from humwatch.evaluation.synth_cli import write_dataset

N_NORMAL, N_ABNORMAL = 10, 5  # clips per synthetic machine


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Two synthetic machines, 3 s clips (4 patches each): small enough to evaluate in seconds."""
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, ["pump", "valve"], [0], N_NORMAL, N_ABNORMAL, seconds=3.0, seed=1)
    return root


def check_results(results, machines, seeds, method_names):
    assert len(results) == len(machines) * len(seeds) * len(method_names)
    for r in results:
        assert r.auc == pytest.approx(roc_auc_score(r.labels, r.scores), abs=1e-12)
        assert r.n_train == N_NORMAL - N_ABNORMAL and r.n_test_normal == N_ABNORMAL
        assert np.isfinite(r.scores).all()
