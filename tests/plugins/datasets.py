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


def write_dcase2023_dataset(root, n_train: dict, n_test: int, seconds: float):
    """A DCASE 2021–2025-layout machine `<root>/toy/{train,test}/section_00_<domain>_<split>_<label>_NNNN_<attr>.wav`:
    the source domain is synthetic pump id 0, the target domain the shifted pump id 2; two attribute groups (speed
    a/b, alternating); n_train = {domain: training clips}, n_test normal and n_test anomalous test clips per domain."""
    from humwatch.agent.durable import write_atomic
    from humwatch.evaluation.synth import synth_clip
    from humwatch.evaluation.synth_cli import wav_bytes

    for domain, machine_id in (("source", 0), ("target", 2)):
        plan = [("train", "normal", i) for i in range(n_train[domain])]
        plan += [("test", label, i) for label in ("normal", "anomaly") for i in range(n_test)]
        for split, label, i in plan:
            index = i + (1000 if split == "test" else 0)  # test clips are other recordings than training clips
            samples, _ = synth_clip("pump", machine_id, index, label == "anomaly", seconds, seed=5)
            name = f"section_00_{domain}_{split}_{label}_{i + 1:04d}_spd_{'ab'[i % 2]}.wav"
            write_atomic(root / "toy" / split / name, wav_bytes(samples))
    return root / "toy"


@pytest.fixture(scope="session")
def tiny_dcase2023(tmp_path_factory):
    """4 source + 2 target training clips, 2 + 2 test clips per domain, 3 s each: for the readers and metrics."""
    return write_dcase2023_dataset(tmp_path_factory.mktemp("dcase"), {"source": 4, "target": 2}, 2, 3.0)
