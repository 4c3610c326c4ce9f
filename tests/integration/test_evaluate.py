

"""humwatch evaluate: dataset readers, the paper's split, ROC AUC, the feature cache, methods and reports."""


import pathlib

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from humwatch.agent.contract import FrontEndParams
from humwatch.cli import main
from humwatch.evaluation.cache import FeatureCache
from humwatch.evaluation.datasets import find_machines
from humwatch.evaluation.features import cnn_source
from humwatch.evaluation.methods import DetectorMethod
from humwatch.evaluation.protocol import split
from humwatch.evaluation.runner import run_protocol
from humwatch.evaluation.synth_cli import write_dataset
from tests.plugins.datasets import check_results


def test_protocol_with_squeezenet_int8_and_detectors(tiny_dataset, tmp_path, squeezenet_int8):
    machines = find_machines(tiny_dataset)
    source = cnn_source(squeezenet_int8, FrontEndParams())
    methods = [DetectorMethod(source, "gmm"), DetectorMethod(source, "ocsvm")]
    results = run_protocol(machines, methods, [0, 1], FeatureCache(tmp_path / "cache"))
    check_results(results, machines, [0, 1], ["gmm", "ocsvm"])
    again = run_protocol(machines[:1], methods[:1], [1], FeatureCache(tmp_path / "cache"))
    assert again[0].auc == next(r.auc for r in results if r.machine == machines[0].name and r.seed == 1
                                and r.method == methods[0].name)


@pytest.mark.parametrize("options, message", [
    (["--presets", "auto", "--detectors", "none"], "too little calibration audio: 0.2 min gives 0 held-out windows"),
    (["--channel", "x"], "--channel 'x': a channel index"),
    (["--channel", "3"], "channel 3 does not exist (the audio has 1 channels)"),
    (["--out", "{file}"], "--out {file}: {file} is a file, not a folder"),
])
def test_bad_runs_are_one_line(tiny_dataset, tmp_path, capsys, squeezenet_int8, options, message):
    (tmp_path / "a-file").write_text("")
    options = [o.format(file=tmp_path / "a-file") for o in options]
    out = [] if "--out" in options else ["--out", str(tmp_path / "out")]
    code = main(["evaluate", str(tiny_dataset), "--models", str(squeezenet_int8), "--presets", "none", "--peers",
                 "none", "--seeds", "1", "--max-normal-test", "5", *out, *options])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and err[-1].startswith("humwatch evaluate: error: ")
    assert message.format(file=tmp_path / "a-file") in err[-1], err


def test_calibrate_presets_are_rows_fitted_and_judged_as_a_user_would(tmp_path, squeezenet_int8):
    """The default preset and `paper`: `calibrate` on the training clips, each test clip's highest window score from
    the agent's pipeline, and calibrate's own threshold for the operating point."""
    from humwatch.agent.model.bundle import Bundle
    from humwatch.agent.model.pipeline import Pipeline
    from humwatch.agent.service.score import score_file
    from humwatch.calibration.calibrate import DEFAULT_PRESET
    from humwatch.evaluation.methods import PresetMethod

    root = tmp_path / "data"
    write_dataset(root, ["pump"], [0], 28, 4, seconds=10.0, seed=3)  # the paper preset needs 4 min
    machines = find_machines(root)
    methods = [PresetMethod(squeezenet_int8, 0, preset) for preset in (DEFAULT_PRESET, "paper")]
    results = run_protocol(machines, methods, [0], FeatureCache(tmp_path / "cache"))
    assert [r.method.split(" + ")[1] for r in results] == [DEFAULT_PRESET, "paper"]
    test = split(machines[0], 0, 150).test
    for method, r in zip(methods, results):
        assert r.auc == pytest.approx(roc_auc_score(r.labels, r.scores), abs=1e-12)
        assert r.n_train == 24 and r.n_test_normal == 4 and np.isfinite(r.scores).all()
        bundle = Bundle.load(pathlib.Path(method._scratch.name) / "seed-0")
        assert method.threshold == bundle.spec.threshold_high
        assert r.scores[0] == score_file(Pipeline(bundle), test[0])["max_window_score"]


def test_autoencoder_peers_run_the_protocol(tiny_dataset):
    from humwatch.evaluation.autoencoders import ConvAutoencoder, Dcase2023Autoencoder, stacked_frames
    from humwatch.evaluation.features import dcase2023_logmel_source, patch_db_source

    frames = np.arange(20 * 128, dtype=np.float32).reshape(20, 128)
    stacked = stacked_frames(frames)
    assert stacked.shape == (16, 640)  # 5 consecutive frames per vector, as the DCASE 2023 baseline
    assert np.array_equal(stacked[1], np.concatenate(frames[1:6]))
    clip = next(tiny_dataset.rglob("*.wav"))
    logmel = dcase2023_logmel_source().compute(clip)
    assert logmel.shape == (3 * 16000 // 512 + 1, 128)  # 3 s at hop 512, centred frames
    machines = find_machines(tiny_dataset)[:1]
    methods = [Dcase2023Autoencoder(dcase2023_logmel_source(), epochs=2), ConvAutoencoder(patch_db_source(), epochs=1)]
    results = run_protocol(machines, methods, [0], FeatureCache(None))
    check_results(results, machines, [0], methods)


def test_cli_writes_table_csv_and_figure(tiny_dataset, tmp_path, capsys, squeezenet_int8):
    out = tmp_path / "out"
    assert main(["evaluate", str(tiny_dataset), "--models", str(squeezenet_int8), "--detectors", "gmm",
                 "--presets", "none", "--peers", "knn", "--seeds", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "| squeezenet1_1-int8 + kNN (k=1) |" in captured.out and "fewer than 150" in captured.err
    assert (out / "auc_bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "auc_per_seed.csv").read_text().splitlines()
    assert rows[0].startswith("method,machine,seed,auc") and len(rows) == 1 + 2 * 2 * 2
    assert "mean" in (out / "auc_table.csv").read_text()


def test_dcase_layout_runs_the_official_protocol(tmp_path_factory, tmp_path, capsys, squeezenet_int8):
    """Fit on train/ as given, score test/, the official figures and the operating point; --train-minutes."""
    import csv

    from humwatch.evaluation.dcase_metrics import MAX_FPR
    from tests.plugins.datasets import write_dcase2023_dataset

    data = write_dcase2023_dataset(tmp_path_factory.mktemp("dcase10s"), {"source": 22, "target": 4}, 3, 10.0)
    out = tmp_path / "out"
    assert main(["evaluate", str(data), "--models", str(squeezenet_int8), "--detectors", "none",
                 "--presets", "logmel-gmm", "--peers", "knn", "--seeds", "1", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for column in ("AUC source", "AUC target", "pAUC", "official score", "AUC source, domain only",
                   "anomalous above threshold (source · target)", "normal above threshold (source · target)"):
        assert f"| {column} |" in table
    knn_row = next(line for line in table.splitlines() if "kNN (k=1)" in line)
    assert knn_row.endswith("| — | — |")  # kNN sets no alarm threshold
    with open(out / "dcase_scores.csv", newline="") as f:
        scores = list(csv.DictReader(f))
    with open(out / "dcase_per_seed.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"]: bool(r["threshold"]) for r in rows} == {  # calibrate's threshold; kNN sets none
        "squeezenet1_1-int8.tflite + logmel-gmm": True, "squeezenet1_1-int8 + kNN (k=1)": False}
    for row in rows:
        clips = [s for s in scores if s["method"] == row["method"]]
        y = np.array([int(s["anomalous"]) for s in clips])
        x = np.array([float(s["score"]) for s in clips])
        d = np.array([s["domain"] for s in clips])
        assert len(clips) == 12 and int(row["train_clips"]) == 26
        for domain in ("source", "target"):  # the evaluator's definitions, recomputed with scikit-learn
            keep = (d == domain) | (y == 1)
            assert float(row[f"auc_{domain}"]) == pytest.approx(roc_auc_score(y[keep], x[keep]), abs=1e-4)
            assert float(row[f"auc_{domain}_domain_only"]) == pytest.approx(
                roc_auc_score(y[d == domain], x[d == domain]), abs=1e-4)
            if row["threshold"]:
                above = int(np.sum(x[(d == domain) & (y == 1)] > float(row["threshold"])))
                assert row[f"anomalous_above_{domain}"] == f"{above}/3"
                above = int(np.sum(x[(d == domain) & (y == 0)] > float(row["threshold"])))
                assert row[f"normal_above_{domain}"] == f"{above}/3"
            else:
                assert row[f"anomalous_above_{domain}"] == ""
        assert float(row["pauc"]) == pytest.approx(roc_auc_score(y, x, max_fpr=MAX_FPR), abs=1e-4)
    assert main(["evaluate", str(data), "--models", str(squeezenet_int8), "--detectors", "none", "--presets",
                 "none", "--peers", "knn", "--seeds", "1", "--train-minutes", "1", "--out", str(out)]) == 0
    assert "| 6 (1 min) |" in capsys.readouterr().out  # 6 clips of 10 s, round-robin over domain and speed
