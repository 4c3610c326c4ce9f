"""The technician's calibration report: one PNG (spectrogram, score histogram with thresholds, summary) and a
text file with the same summary."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from humwatch.agent.contract import HOP_LENGTH, SAMPLE_RATE
from humwatch.agent.durable import write_atomic
from humwatch.calibration.threshold import Threshold

PNG_NAME = "calibration-report.png"
TEXT_NAME = "calibration-report.txt"


def write_report(report_dir: str | os.PathLike, summary_lines: list[str], threshold: Threshold,
                 heldout_scores: np.ndarray, fit_scores: np.ndarray, spectrogram_db: np.ndarray,
                 spectrogram_title: str) -> tuple[Path, Path]:
    """Write the PNG and the text summary into report_dir (created if needed); return their paths.

    `heldout_scores` and `fit_scores` are window scores; `spectrogram_db` is a (64, frames) Mel dB excerpt.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on a board
    import matplotlib.pyplot as plt

    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    figure, (spec_ax, hist_ax, text_ax) = plt.subplots(
        3, 1, figsize=(10, 11), gridspec_kw={"height_ratios": [3, 3, 1.8]})
    seconds = spectrogram_db.shape[1] * HOP_LENGTH / SAMPLE_RATE
    image = spec_ax.imshow(spectrogram_db, origin="lower", aspect="auto", cmap="viridis",
                           extent=(0.0, seconds, 0, spectrogram_db.shape[0]))
    figure.colorbar(image, ax=spec_ax, label="dB")
    spec_ax.set(title=spectrogram_title, xlabel="time (s)", ylabel="Mel band")

    bins = np.histogram_bin_edges(np.concatenate([heldout_scores, fit_scores, [threshold.high]]), bins=40)
    hist_ax.hist(fit_scores, bins=bins, color="0.75", label=f"fitting windows ({len(fit_scores)})")
    hist_ax.hist(heldout_scores, bins=bins, color="tab:blue", alpha=0.8,
                 label=f"held-out normal windows ({len(heldout_scores)})")
    hist_ax.axvline(threshold.high, color="tab:red", lw=2,
                    label=f"alarm threshold {threshold.high:.4g} ({threshold.governed_by})")
    hist_ax.axvline(threshold.low, color="tab:orange", lw=2, ls="--", label=f"clear threshold {threshold.low:.4g}")
    hist_ax.set(title="window scores on normal sound (higher = more anomalous)", xlabel="window score",
                ylabel="windows")
    hist_ax.legend(loc="upper left", fontsize=8)

    text_ax.axis("off")
    text_ax.text(0.0, 1.0, "\n".join(summary_lines), va="top", ha="left", family="monospace", fontsize=8,
                 wrap=True)
    figure.tight_layout()
    png = folder / PNG_NAME
    write_atomic(png, lambda f: figure.savefig(f, format="png", dpi=90))
    plt.close(figure)
    text = folder / TEXT_NAME
    write_atomic(text, lambda f: f.write(("\n".join(summary_lines) + "\n").encode()))
    return png, text
