"""The technician's calibration report: one PNG (a spectrogram of the calibration audio, the histogram of normal
window scores with the thresholds, the summary) and a text file with the same summary.

Drawn with the agent's own numpy picture code (viridis, the 5x7 font, the PNG writer): no plotting library is
loaded on the board, where it would cost a calibration some 50 MB.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np

from humwatch.agent.contract import HOP_LENGTH, SAMPLE_RATE
from humwatch.agent.durable import write_atomic
from humwatch.agent.signal.glyphs import ADVANCE, LINE_HEIGHT
from humwatch.agent.signal.picture import (
    ALERT,
    BACKGROUND,
    DIM,
    MARGIN,
    PANEL_HEIGHT,
    SPECTROGRAM_WIDTH,
    columns,
    paint_spectrogram,
    write_lines,
)
from humwatch.agent.signal.png import encode_png
from humwatch.calibration.threshold import Threshold

PNG_NAME = "calibration-report.png"
TEXT_NAME = "calibration-report.txt"
WIDTH = 800
HISTOGRAM_HEIGHT, BINS = 150, 40
FIT, HELDOUT, CLEAR = (110, 110, 116), (70, 140, 230), (255, 180, 60)


def write_report(report_dir: str | os.PathLike, summary_lines: list[str], threshold: Threshold,
                 heldout_scores: np.ndarray, fit_scores: np.ndarray, spectrogram_db: np.ndarray,
                 spectrogram_title: str) -> tuple[Path, Path]:
    """Write the PNG and the text summary into report_dir (created if needed); return their paths.

    `heldout_scores` and `fit_scores` are window scores; `spectrogram_db` is a (64, frames) Mel dB excerpt.
    """
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    png = write_atomic(folder / PNG_NAME, encode_png(report_picture(
        summary_lines, threshold, heldout_scores, fit_scores, spectrogram_db, spectrogram_title)))
    text = write_atomic(folder / TEXT_NAME, ("\n".join(summary_lines) + "\n").encode())
    return png, text


def report_picture(summary_lines: list[str], threshold: Threshold, heldout_scores: np.ndarray,
                   fit_scores: np.ndarray, spectrogram_db: np.ndarray, spectrogram_title: str) -> np.ndarray:
    """The report as an (height, WIDTH, 3) uint8 picture."""
    text = [part for line in summary_lines for part in (textwrap.wrap(line, (WIDTH - 2 * MARGIN) // ADVANCE)
                                                         or [""])]
    spectrogram_y = 6 + LINE_HEIGHT + 4
    histogram_y = spectrogram_y + PANEL_HEIGHT + 14 + 2 * LINE_HEIGHT
    text_y = histogram_y + HISTOGRAM_HEIGHT + 8 + 3 * LINE_HEIGHT
    canvas = np.empty((text_y + len(text) * LINE_HEIGHT + MARGIN, WIDTH, 3), np.uint8)
    canvas[:] = BACKGROUND

    seconds = spectrogram_db.shape[1] * HOP_LENGTH / SAMPLE_RATE
    write_lines(canvas, MARGIN, 6, [spectrogram_title])
    db = columns(spectrogram_db, SPECTROGRAM_WIDTH)
    low, high = np.percentile(db, [1.0, 99.5]) if db.size else (-100.0, 0.0)
    paint_spectrogram(canvas, MARGIN, spectrogram_y, db, low, max(high, low + 1.0))
    write_lines(canvas, MARGIN + SPECTROGRAM_WIDTH + 12, spectrogram_y,
                [f"{seconds:.0f} S OF CALIBRATION AUDIO", "MEL BANDS, LOW AT THE BOTTOM",
                 f"{low:.0f} .. {high:.0f} DB"], DIM)

    write_lines(canvas, MARGIN, histogram_y - 2 * LINE_HEIGHT,
                ["WINDOW SCORES ON NORMAL SOUND (HIGHER = MORE ANOMALOUS)"])
    _histogram(canvas, histogram_y, threshold, np.asarray(heldout_scores, float), np.asarray(fit_scores, float))
    write_lines(canvas, MARGIN, text_y, text)
    return canvas


def _histogram(canvas: np.ndarray, y: int, threshold: Threshold, heldout: np.ndarray, fit: np.ndarray) -> None:
    """Fitting windows (grey) and held-out windows (blue) over 40 bins, the alarm threshold (red) and the clear
    threshold (orange) as vertical lines; the legend and the score range below."""
    x, width = MARGIN, SPECTROGRAM_WIDTH
    values = np.concatenate([heldout, fit, [threshold.high, threshold.low]])
    values = values[np.isfinite(values)]
    edges = np.histogram_bin_edges(values, bins=BINS)
    counts = [np.histogram(scores, bins=edges)[0] for scores in (fit, heldout)]
    tallest = max(1, *(int(c.max()) for c in counts if c.size))
    bar = width // BINS
    canvas[y + HISTOGRAM_HEIGHT, x: x + width] = DIM  # the axis
    for colour, count in zip((FIT, HELDOUT), counts):
        for i, n in enumerate(count):
            top = y + HISTOGRAM_HEIGHT - int(round(n / tallest * HISTOGRAM_HEIGHT))
            canvas[top: y + HISTOGRAM_HEIGHT, x + i * bar: x + (i + 1) * bar - 1] = colour
    span = max(edges[-1] - edges[0], 1e-12)
    for value, colour in ((threshold.low, CLEAR), (threshold.high, ALERT)):
        column = x + min(int((value - edges[0]) / span * (width - 2)), width - 2)
        canvas[y: y + HISTOGRAM_HEIGHT, column: column + 2] = colour
    write_lines(canvas, x, y + HISTOGRAM_HEIGHT + 4, [f"{edges[0]:.3g}"], DIM)
    write_lines(canvas, x + width - ADVANCE * len(f"{edges[-1]:.3g}"), y + HISTOGRAM_HEIGHT + 4,
                [f"{edges[-1]:.3g}"], DIM)
    legend_x = x + width + 12
    write_lines(canvas, legend_x, y, [f"FITTING WINDOWS ({len(fit)})"], FIT)
    write_lines(canvas, legend_x, y + LINE_HEIGHT, [f"HELD-OUT WINDOWS ({len(heldout)})"], HELDOUT)
    write_lines(canvas, legend_x, y + 2 * LINE_HEIGHT,
                [f"ALARM THRESHOLD {threshold.high:.4g}", f"  ({threshold.governed_by})"], ALERT)
    write_lines(canvas, legend_x, y + 4 * LINE_HEIGHT, [f"CLEAR THRESHOLD {threshold.low:.4g}"], CLEAR)
    write_lines(canvas, legend_x, y + 6 * LINE_HEIGHT, [f"TALLEST BAR: {tallest} WINDOWS"], DIM)
