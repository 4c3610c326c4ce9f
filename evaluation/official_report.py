"""Tables of the DCASE 2021–2025 protocol: one Markdown row per method and section (figures averaged over seeds),
a CSV per seed, and every test clip's score."""
from __future__ import annotations

import csv
import io
import pathlib

import numpy as np

from humwatch.agent.durable import write_atomic
from humwatch.evaluation.dcase_layout import DOMAINS
from humwatch.evaluation.dcase_metrics import official_score
from humwatch.evaluation.official import SectionResult

NO_THRESHOLD = "—"
LEGEND = (
    "AUC source / target: the official DCASE 2023 evaluator's definition (a domain's normal clips against all "
    "anomalous clips of the section, both domains). pAUC: FPR ≤ 0.1 over all clips of the section. Official score: "
    "harmonic mean of the three. Domain only: a domain's normal clips against that domain's anomalous clips, what an "
    "operator of one machine in that condition sees. Above threshold: test clips whose score (a clip's highest "
    "window score, as the agent alarms) exceeds the alarm threshold `calibrate` set for one false alarm a week; "
    f"{NO_THRESHOLD} = the method sets no threshold.")


def _mean(values: list[float]) -> str:
    text = f"{np.mean(values):.3f}"
    return text + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")


def _above(rows: list[SectionResult], kind: str) -> str:
    counts = [getattr(r.figures, kind) for r in rows]
    if any(c is None for c in counts):
        return NO_THRESHOLD
    parts = []
    for d in DOMAINS:
        hits, total = sum(c[d][0] for c in counts), sum(c[d][1] for c in counts)
        parts.append(f"{hits}/{total} ({100.0 * hits / total:.0f} %)" if total else "0/0")
    return " · ".join(parts)


def markdown_table(results: list[SectionResult]) -> str:
    methods = list(dict.fromkeys(r.method for r in results))
    sections = list(dict.fromkeys(r.section for r in results))
    lines = ["| method | section | training clips | AUC source | AUC target | pAUC | official score | "
             "AUC source, domain only | AUC target, domain only | anomalous above threshold (source · target) | "
             "normal above threshold (source · target) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for section in sections:
        for method in methods:
            rows = [r for r in results if r.method == method and r.section == section]
            f = [r.figures for r in rows]
            lines.append(" | ".join([
                f"| {method}", section, f"{rows[0].n_train} ({rows[0].train_seconds / 60:.0f} min)",
                _mean([x.auc["source"] for x in f]), _mean([x.auc["target"] for x in f]), _mean([x.pauc for x in f]),
                _mean([x.official_hmean for x in f]),
                _mean([x.auc_domain_only["source"] for x in f]), _mean([x.auc_domain_only["target"] for x in f]),
                _above(rows, "anomalous_above"), _above(rows, "normal_above")]) + " |")
    if len(sections) > 1:
        for method in methods:
            seeds = sorted({r.seed for r in results if r.method == method})
            totals = [official_score([r.figures for r in results if r.method == method and r.seed == s])
                      for s in seeds]
            lines.append(f"| {method} | all sections | | | | | {_mean(totals)} | | | | |")
    return "\n".join(lines) + "\n"


def per_seed_csv(results: list[SectionResult]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "section", "seed", "train_clips", "train_minutes", "auc_source", "auc_target", "pauc",
                     "official_hmean", "auc_source_domain_only", "auc_target_domain_only", "threshold",
                     "anomalous_above_source", "anomalous_above_target", "normal_above_source", "normal_above_target"])
    for r in results:
        f = r.figures
        above = [f"{c[d][0]}/{c[d][1]}" if c is not None else "" for c in (f.anomalous_above, f.normal_above)
                 for d in DOMAINS]
        writer.writerow([r.method, r.section, r.seed, r.n_train, f"{r.train_seconds / 60:.2f}",
                         *(f"{v:.4f}" for v in (f.auc["source"], f.auc["target"], f.pauc, f.official_hmean,
                                                f.auc_domain_only["source"], f.auc_domain_only["target"])),
                         "" if r.threshold is None else f"{r.threshold:.6g}", *above])
    return out.getvalue()


def scores_csv(results: list[SectionResult], test_names: dict[str, list[str]]) -> str:
    """Every test clip's score per method and seed, for re-analysis without rerunning."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "section", "seed", "clip", "domain", "anomalous", "score"])
    for r in results:
        for name, domain, label, score in zip(test_names[r.section], r.domains, r.labels, r.scores):
            writer.writerow([r.method, r.section, r.seed, name, domain, int(label), f"{score:.6g}"])
    return out.getvalue()


def write_official_reports(results: list[SectionResult], out_dir: pathlib.Path, title: str,
                           test_names: dict[str, list[str]]) -> dict[str, pathlib.Path]:
    out_dir = pathlib.Path(out_dir)
    files = {"markdown": out_dir / "dcase_table.md", "per_seed": out_dir / "dcase_per_seed.csv",
             "scores": out_dir / "dcase_scores.csv"}
    write_atomic(files["markdown"], f"# {title}\n\n{markdown_table(results)}\n{LEGEND}\n".encode())
    write_atomic(files["per_seed"], per_seed_csv(results).encode())
    write_atomic(files["scores"], scores_csv(results, test_names).encode())
    return files
