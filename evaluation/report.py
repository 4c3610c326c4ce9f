"""Tables and a figure from protocol results: Markdown shaped like the paper's Table 1, CSV, and AUC bars."""
from __future__ import annotations

import csv
import io
import pathlib

import numpy as np

from humwatch.agent.durable import write_atomic
from humwatch.evaluation.runner import Result

MEAN = "mean"


def summarise(results: list[Result]) -> tuple[list[str], list[str], dict[tuple[str, str], tuple[float, float]]]:
    """(methods, columns, {(method, column): (mean AUC, std over seeds)}); column 'mean' averages the machines
    within each seed first, so its ± is the spread over seeds of the all-machine mean."""
    methods = list(dict.fromkeys(r.method for r in results))
    machines = list(dict.fromkeys(r.machine for r in results))
    cells = {}
    for method in methods:
        per_seed: dict[int, list[float]] = {}
        for machine in machines:
            aucs = [r.auc for r in results if r.method == method and r.machine == machine]
            cells[(method, machine)] = (float(np.mean(aucs)), float(np.std(aucs)))
            for r in results:
                if r.method == method and r.machine == machine:
                    per_seed.setdefault(r.seed, []).append(r.auc)
        seed_means = [np.mean(v) for v in per_seed.values()]
        cells[(method, MEAN)] = (float(np.mean(seed_means)), float(np.std(seed_means)))
    return methods, machines + [MEAN], cells


def markdown_table(results: list[Result]) -> str:
    methods, columns, cells = summarise(results)
    best = {c: max(cells[(m, c)][0] for m in methods) for c in columns}
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for m in methods:
        row = []
        for c in columns:
            mean, std = cells[(m, c)]
            text = f"{mean:.3f} ± {std:.3f}"
            row.append(f"**{text}**" if np.isclose(mean, best[c]) else text)
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def operating_point_table(results: list[Result]) -> str:
    """Test clips above each fit's alarm threshold, summed over seeds: anomalous (want many) and normal (want
    none); "—" for a method that sets no threshold."""
    lines = ["| method | machine | abnormal test clips above threshold | normal test clips above threshold |",
             "|---|---|---|---|"]
    for method in dict.fromkeys(r.method for r in results):
        for machine in dict.fromkeys(r.machine for r in results):
            rows = [r for r in results if r.method == method and r.machine == machine]
            if not rows or any(r.threshold is None for r in rows):
                cells = ["—", "—"]
            else:
                cells = []
                for label in (1, 0):
                    hits = sum(int(np.sum(r.scores[r.labels == label] > r.threshold)) for r in rows)
                    total = sum(int(np.sum(r.labels == label)) for r in rows)
                    cells.append(f"{hits}/{total}")
            lines.append(f"| {method} | {machine} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def summary_csv(results: list[Result]) -> str:
    methods, columns, cells = summarise(results)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "machine", "auc_mean", "auc_std", "seeds"])
    seeds = len({r.seed for r in results})
    for m in methods:
        for c in columns:
            writer.writerow([m, c, f"{cells[(m, c)][0]:.4f}", f"{cells[(m, c)][1]:.4f}", seeds])
    return out.getvalue()


def per_seed_csv(results: list[Result]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "machine", "seed", "auc", "train_clips", "test_normal_clips", "test_abnormal_clips"])
    for r in results:
        writer.writerow([r.method, r.machine, r.seed, f"{r.auc:.4f}", r.n_train, r.n_test_normal,
                         int(r.labels.sum())])
    return out.getvalue()


def read_per_seed_csv(path: pathlib.Path) -> list[Result]:
    """Results back from an auc_per_seed.csv (AUCs and counts; no clip scores), to put several runs in one table."""
    with open(path, newline="") as f:
        return [Result(row["method"], row["machine"], int(row["seed"]), float(row["auc"]), int(row["train_clips"]),
                       int(row["test_normal_clips"]), np.empty(0), np.empty(0)) for row in csv.DictReader(f)]


def auc_bars_png(results: list[Result], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, columns, cells = summarise(results)
    x = np.arange(len(columns))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(9.0, 1.3 * len(columns) + 5), 4.8))
    for i, m in enumerate(methods):
        means = [cells[(m, c)][0] for c in columns]
        stds = [cells[(m, c)][1] for c in columns]
        ax.bar(x - 0.4 + (i + 0.5) * width, means, width, yerr=stds, capsize=2, label=m)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, columns, rotation=30, ha="right")
    ax.set_ylim(0.0, 1.0)  # all of it: an AUC below chance is a finding too (a fault quieter than normal)
    ax.set_ylabel("ROC AUC (mean ± std over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_atomic(pathlib.Path(path), buffer.getvalue())


def write_reports(results: list[Result], out_dir: pathlib.Path, title: str) -> dict[str, pathlib.Path]:
    out_dir = pathlib.Path(out_dir)
    files = {"markdown": out_dir / "auc_table.md", "csv": out_dir / "auc_table.csv",
             "per_seed": out_dir / "auc_per_seed.csv", "png": out_dir / "auc_bars.png"}
    write_atomic(files["markdown"], (f"# {title}\n\n" + markdown_table(results) + "\nAt the alarm threshold "
                                     "`calibrate` sets (one false alarm a week), summed over seeds:\n\n"
                                     + operating_point_table(results)).encode())
    write_atomic(files["csv"], summary_csv(results).encode())
    write_atomic(files["per_seed"], per_seed_csv(results).encode())
    auc_bars_png(results, files["png"], title)
    return files
