"""humwatch evaluate on the DCASE 2021–2025 layout: the reader, the official figures, --train-minutes, bad layouts."""

import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from humwatch.agent.errors import ConfigError
from humwatch.cli import main
from humwatch.evaluation.dcase_layout import find_sections
from humwatch.evaluation.dcase_metrics import (
    domain_only_auc,
    harmonic_mean,
    official_domain_auc,
    official_score,
    partial_auc,
    section_figures,
)
from humwatch.evaluation.official import training_clips
from humwatch.evaluation.train_minutes import first_minutes, wav_seconds

# Eight test clips of one section, worked by hand below.
LABELS = np.array([0, 0, 1, 1, 0, 0, 1, 1])
DOMAINS = np.array(["source"] * 4 + ["target"] * 4)
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.3, 0.95])


def test_official_figures_match_hand_computed_values():
    # source normals {0.1, 0.4} against all anomalies {0.35, 0.8, 0.3, 0.95}: 4 + 2 of 8 pairs
    assert official_domain_auc(LABELS, SCORES, DOMAINS, "source") == pytest.approx(6 / 8)
    # target normals {0.2, 0.9} against all anomalies: 4 + 1 of 8; against the target's own {0.3, 0.95}: 2 + 1 of 4
    assert official_domain_auc(LABELS, SCORES, DOMAINS, "target") == pytest.approx(5 / 8)
    assert domain_only_auc(LABELS, SCORES, DOMAINS, "target") == pytest.approx(3 / 4)
    assert domain_only_auc(LABELS, SCORES, DOMAINS, "source") == pytest.approx(3 / 4)
    # ROC over all 8: TPR 0.25 at FPR 0 until the normal 0.9 at FPR 0.25, so the area up to FPR 0.1 is 0.025;
    # McClish-standardised: 0.5 * (1 + (0.025 - 0.005) / (0.1 - 0.005))
    assert partial_auc(LABELS, SCORES) == pytest.approx(0.5 * (1 + 0.02 / 0.095))
    assert partial_auc(LABELS, SCORES) == pytest.approx(roc_auc_score(LABELS, SCORES, max_fpr=0.1))
    figures = section_figures(LABELS, SCORES, DOMAINS, threshold=0.5)
    expected_hmean = 3 / (1 / 0.75 + 1 / 0.625 + 1 / (0.5 * (1 + 0.02 / 0.095)))
    assert figures.official_hmean == pytest.approx(expected_hmean)
    assert figures.anomalous_above == {"source": (1, 2), "target": (1, 2)}  # 0.8 and 0.95
    assert figures.normal_above == {"source": (0, 2), "target": (1, 2)}  # 0.9
    assert official_score([figures, figures]) == pytest.approx(expected_hmean)
    no_threshold = section_figures(LABELS, SCORES, DOMAINS, threshold=None)
    assert no_threshold.anomalous_above is None and no_threshold.normal_above is None


def test_harmonic_mean_floors_at_epsilon_as_the_evaluator():
    assert 0 < harmonic_mean([0.0, 1.0, 1.0]) < 1e-15
    assert harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)


def test_first_minutes_go_round_robin_over_sorted_groups():
    clips = [("b", 1), ("a", 1), ("b", 2), ("a", 2), ("a", 3), ("c", 1)]
    pick = first_minutes(clips, group=lambda c: c[0], seconds=lambda c: 30.0, minutes=2.0)
    assert pick == [("a", 1), ("b", 1), ("c", 1), ("a", 2)]  # 4 × 30 s = 2 min, a-b-c-a
    assert first_minutes(clips, lambda c: c[0], lambda c: 30.0, 1.1) == [("a", 1), ("b", 1), ("c", 1)]  # overrun
    assert first_minutes(clips, lambda c: c[0], lambda c: 30.0, 60.0) == sorted(clips, key=lambda c: (c[1], c[0]))


def test_dcase2023_layout_is_read(tiny_dcase2023):
    (section,) = find_sections(tiny_dcase2023.parent)
    assert section.name == "toy/section_00"
    assert [(c.domain, c.attributes) for c in section.train] == [
        ("source", "spd_a"), ("source", "spd_b"), ("source", "spd_a"), ("source", "spd_b"),
        ("target", "spd_a"), ("target", "spd_b")]
    assert list(section.labels) == [1, 1, 0, 0, 1, 1, 0, 0]  # sorted names: anomaly before normal
    assert list(section.domains) == ["source"] * 4 + ["target"] * 4
    assert wav_seconds(section.train[0].path) == pytest.approx(3.0)
    # 3 s clips, 0.2 min = 12 s: four clips, round-robin over (domain, speed)
    picked = training_clips(section, 0.2)
    assert [(c.domain, c.attributes) for c in picked] == [
        ("source", "spd_a"), ("source", "spd_b"), ("target", "spd_a"), ("target", "spd_b")]
    assert training_clips(section, None) == list(section.train)


def test_attribute_table_names_the_groups(tiny_dcase2023, tmp_path):
    copy = tmp_path / "toy"
    shutil.copytree(tiny_dcase2023, copy)
    names = sorted(p.name for p in (copy / "train").glob("*.wav"))
    rows = ["file_name,d1p,d1v"] + [f"toy/train/{n},mic,{i % 3}" for i, n in enumerate(names)]
    (copy / "attributes_00.csv").write_text("\n".join(rows) + "\n")
    (section,) = find_sections(copy)
    assert [c.attributes for c in section.train] == [f"mic_{i % 3}" for i in range(len(names))]
    assert section.test[0].attributes == "spd_a"  # clips the table leaves out keep their names' attributes
    (copy / "attributes_00.csv").write_text("name,d1p\nx.wav,mic\n")
    with pytest.raises(ConfigError, match="attributes_00.csv: no file_name column"):
        find_sections(copy)


def test_the_real_toycar_split_is_read(shared_dir):
    (section,) = find_sections(shared_dir / "audio" / "dcase2023-toycar")
    assert len(section.train) == 208 and sum(c.domain == "target" for c in section.train) == 10
    assert len(section.test) == 200 and section.labels.sum() == 100
    for domain in ("source", "target"):
        assert sum((section.domains == domain) & (section.labels == 1)) == 50
    assert section.train[0].attributes == "car_B1_spd_31V_mic_1"  # from attributes_00.csv
    assert find_sections(shared_dir / "audio" / "dcase2020-id00") == []  # DCASE 2020: the paper's protocol


@pytest.mark.parametrize("change, message", [
    (lambda d: shutil.copy(next((d / "test").glob("*anomaly*")), d / "train" / "section_00_source_train_anomaly_0009.wav"),
     "section_00_source_train_anomaly_0009.wav: an anomalous clip in train/"),
    (lambda d: [p.unlink() for p in (d / "test").glob("*anomaly*")], "need both normal and anomaly clips"),
    (lambda d: (d / "test" / "section_00_source_test_0001.wav").write_bytes(b""),
     "section_00_source_test_0001.wav: not a DCASE 2021–2025 clip name"),
    (lambda d: shutil.move(next((d / "test").glob("*normal*")), d / "train"), "a test clip in the train/ folder"),
    (lambda d: shutil.rmtree(d / "train"), "no training clips"),
])
def test_bad_layouts_are_one_line(tiny_dcase2023, tmp_path, capsys, change, message):
    copy = tmp_path / "toy"
    shutil.copytree(tiny_dcase2023, copy)
    change(copy)
    assert main(["evaluate", str(copy), "--peers", "knn", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("humwatch evaluate: error: ") and message in err[-1], err


def test_train_minutes_needs_the_dcase_layout(tiny_dataset, tmp_path, capsys):
    assert main(["evaluate", str(tiny_dataset), "--train-minutes", "5", "--out", str(tmp_path / "out")]) == 2
    assert "--train-minutes: " in capsys.readouterr().err
