

"""humwatch evaluate: dataset readers, the paper's split, ROC AUC, the feature cache, methods and reports."""

import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from humwatch.agent.errors import AudioError, ConfigError
from humwatch.cli import main
from humwatch.evaluation.cache import FeatureCache
from humwatch.evaluation.datasets import find_machines
from humwatch.evaluation.features import logmel_source, patch_db_source
from humwatch.evaluation.knn import PatchKnn
from humwatch.evaluation.protocol import normal_test_count, roc_auc, split
from humwatch.evaluation.report import markdown_table, per_seed_csv, read_per_seed_csv, summarise
from humwatch.evaluation.runner import run_protocol
from tests.plugins.datasets import N_ABNORMAL, N_NORMAL, check_results


def test_mimii_layout_is_read(tiny_dataset):
    machines = find_machines(tiny_dataset)
    assert [m.name for m in machines] == ["pump/id_00", "valve/id_00"]
    assert all(len(m.normal) == N_NORMAL and len(m.abnormal) == N_ABNORMAL for m in machines)
    assert all(p.parent.name == "abnormal" for m in machines for p in m.abnormal)
    # any folder inside the dataset that still holds whole machines works as the root too
    assert [m.name for m in find_machines(tiny_dataset / "-6_dB_valve")] == ["valve/id_00"]


def test_dcase_layout_is_read(shared_dir):
    (machine,) = find_machines(shared_dir / "audio" / "dcase2020-id00")
    assert (machine.machine_type, machine.machine_id) == ("dcase2020-id00", "id_00")
    assert len(machine.normal) == 75 and len(machine.abnormal) == 1
    assert machine.abnormal[0].name == "anomaly_id_00_00000000.wav"
    parts = split(machine, seed=0)
    assert len(parts.test_normal) == 1 and len(parts.train) == 74  # fewer than 150: one anomaly only


def test_missing_class_is_a_clear_error(tiny_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)
    shutil.rmtree(copy / "-6_dB_pump/pump/id_00/abnormal")
    with pytest.raises(ConfigError, match=r"pump/id_00/abnormal: no abnormal clips"):
        find_machines(copy)
    with pytest.raises(ConfigError, match="no machines found"):
        find_machines(tmp_path / "copy" / "-6_dB_pump" / "pump" / "id_00" / "normal")


def test_split_never_leaks_and_seeds_reproduce(tiny_dataset):
    for machine in find_machines(tiny_dataset):
        assert normal_test_count(machine) == N_ABNORMAL  # min(150, abnormal available, normal - 1)
        splits = {seed: split(machine, seed) for seed in range(5)}
        for parts in splits.values():
            assert not set(parts.train) & set(parts.test)
            assert set(parts.train) | set(parts.test_normal) == set(machine.normal)
            assert not set(parts.train) & set(machine.abnormal)
            assert set(parts.test_abnormal) <= set(machine.abnormal)
            assert len(parts.test_normal) == len(parts.test_abnormal) == N_ABNORMAL
            assert list(parts.labels) == [0] * N_ABNORMAL + [1] * N_ABNORMAL
        assert split(machine, 3) == splits[3]
        assert len({parts.test_normal for parts in splits.values()}) > 1
        small = split(machine, 0, max_normal_test=2)
        assert len(small.test_normal) == len(small.test_abnormal) == 2 and len(small.train) == N_NORMAL - 2


def test_roc_auc_matches_scikit_learn():
    rng = np.random.default_rng(0)
    for n_pos, n_neg in ((5, 5), (3, 40), (50, 7)):
        labels = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
        for scores in (rng.normal(size=n_pos + n_neg), rng.integers(0, 4, n_pos + n_neg).astype(float)):  # ties
            assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    with pytest.raises(ValueError, match="both"):
        roc_auc([1, 1], [0.1, 0.2])


def test_feature_cache_keys_on_content_not_path(tiny_dataset, tmp_path):
    clip = next(tiny_dataset.rglob("*.wav"))
    source = logmel_source()
    cache = FeatureCache(tmp_path / "cache")
    first = source.clips([clip], cache)[0]
    assert (cache.hits, cache.misses) == (0, 1)
    copy = tmp_path / "same-bytes.wav"
    shutil.copy(clip, copy)
    fresh = FeatureCache(tmp_path / "cache")  # a new run reads the .npz written by the first
    assert np.array_equal(source.clips([copy], fresh)[0], first) and (fresh.hits, fresh.misses) == (1, 0)
    other = next(p for p in tiny_dataset.rglob("*.wav") if p.read_bytes() != clip.read_bytes())
    shutil.copy(other, copy)
    assert not np.array_equal(source.clips([copy], FeatureCache(tmp_path / "cache"))[0], first)
    assert first.shape[1] == 64 and first.dtype == np.float32


def test_knn_scores_the_distance_to_the_nearest_standardised_training_row():
    knn = PatchKnn(logmel_source())
    train = [np.array([[0.0, 0.0], [2.0, 0.0]]), np.array([[0.0, 4.0], [2.0, 4.0]])]  # mean (1, 2), std (1, 2)
    knn.fit(train, seed=0)
    # (1, 2) standardises to (0, 0): distance sqrt(1 + 1) to every corner; (2, 4) is a training row
    assert np.allclose(knn.patch_scores(np.array([[1.0, 2.0], [2.0, 4.0], [5.0, 4.0]])), [np.sqrt(2), 0.0, 3.0])
    assert knn.clip_scores([np.array([[1.0, 2.0], [2.0, 4.0]])]) == pytest.approx([np.sqrt(2) / 2])


def test_protocol_with_the_knn_peer_reproduces(tiny_dataset, tmp_path):
    machines = find_machines(tiny_dataset)
    cache = FeatureCache(tmp_path / "cache")
    runs = [run_protocol(machines, [PatchKnn(logmel_source())], [0, 1], cache) for _ in range(2)]
    check_results(runs[0], machines, [0, 1], ["logmel + kNN (k=1)"])
    assert [r.auc for r in runs[0]] == [r.auc for r in runs[1]]
    assert all(np.array_equal(a.scores, b.scores) for a, b in zip(*runs))


def test_unreadable_clip_names_the_file(tiny_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)
    broken = copy / "-6_dB_valve/valve/id_00/normal/00000004.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    with pytest.raises(AudioError, match="00000004.wav"):
        run_protocol(find_machines(copy), [PatchKnn(logmel_source())], [0], FeatureCache(None))


def test_report_marks_the_best_and_averages_per_seed(tiny_dataset, tmp_path):
    machines = find_machines(tiny_dataset)
    results = run_protocol(machines, [PatchKnn(logmel_source()), PatchKnn(patch_db_source())], [0, 1],
                           FeatureCache(None))
    methods, columns, cells = summarise(results)
    assert columns == ["pump/id_00", "valve/id_00", "mean"]
    for m in methods:
        per_seed = [np.mean([r.auc for r in results if r.method == m and r.seed == s]) for s in (0, 1)]
        assert cells[(m, "mean")] == pytest.approx((np.mean(per_seed), np.std(per_seed)))
    table = markdown_table(results)
    best = max(methods, key=lambda m: cells[(m, "mean")][0])
    best_row = next(line for line in table.splitlines() if line.startswith(f"| {best} |"))
    assert best_row.rstrip(" |").endswith("**")
    saved = tmp_path / "auc_per_seed.csv"
    saved.write_text(per_seed_csv(results))
    assert markdown_table(read_per_seed_csv(saved)) == table  # runs can be merged from their CSVs


def test_cli_refuses_a_missing_dataset_in_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere"), "--peers", "knn", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("nowhere: dataset folder not found")


def test_operating_point_counts_test_clips_above_each_fits_threshold():
    from humwatch.evaluation.report import operating_point_table
    from humwatch.evaluation.runner import Result

    labels = np.array([0, 0, 1, 1])
    results = [Result("preset", "pump/id_00", 0, 1.0, 8, 2, labels, np.array([0.1, 0.6, 0.7, 0.2]), 0.5),
               Result("preset", "pump/id_00", 1, 1.0, 8, 2, labels, np.array([0.1, 0.2, 0.9, 0.8]), 0.5),
               Result("peer", "pump/id_00", 0, 1.0, 8, 2, labels, np.array([0.1, 0.2, 0.9, 0.8]))]
    lines = operating_point_table(results).splitlines()
    assert "| preset | pump/id_00 | 3/4 | 1/4 |" in lines  # 0.7, 0.9, 0.8 of the abnormal; 0.6 of the normal
    assert "| peer | pump/id_00 | — | — |" in lines
