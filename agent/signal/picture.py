"""The evidence picture: the alarm audio's Mel spectrogram above the bundle's typical normal spectrogram, both in
viridis on one dB scale, with the readings written beside them. numpy alone, for `png.encode_png`.

Layout (PICTURE_WIDTH x PICTURE_HEIGHT, always, whether or not a reference exists):
    title line;
    alarm spectrogram (SPECTROGRAM_WIDTH x 2 rows per Mel band), a red tick above it at the decision;
    its caption and the readings to its right;
    normal reference spectrogram, same size (or a grey panel saying the bundle has none), its caption to the right;
    the dB colour scale at the bottom.
"""
from __future__ import annotations

import numpy as np

from humwatch.agent.contract import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE
from humwatch.agent.signal.glyphs import LINE_HEIGHT, draw_text
from humwatch.agent.signal.mel import frame_count, mel_db_frames
from humwatch.agent.signal.viridis import VIRIDIS_RGB, colour_indices

PICTURE_WIDTH, PICTURE_HEIGHT = 800, 330
SPECTROGRAM_WIDTH = 520
BAND_ROWS = 2
PANEL_HEIGHT = N_MELS * BAND_ROWS
MARGIN = 6
TOP_PANEL_Y = 20
BOTTOM_PANEL_Y = TOP_PANEL_Y + PANEL_HEIGHT + 18
SCALE_Y = BOTTOM_PANEL_Y + PANEL_HEIGHT + 10
TEXT_X = MARGIN + SPECTROGRAM_WIDTH + 12
BACKGROUND, INK, DIM, ALERT = (24, 24, 28), (235, 235, 235), (150, 150, 150), (255, 110, 90)


BLOCK_FRAMES = 256  # frames per STFT block: the picture's spectrogram costs a few MB, not the whole clip's FFT


def mel_db_in_blocks(samples: np.ndarray) -> np.ndarray:
    """(N_MELS, frames) dB Mel spectrogram as `mel.mel_db` (centred frames), computed BLOCK_FRAMES frames at a
    time: 40 s at once would hold some 25 MB of FFT input and output on the board."""
    padded = np.pad(np.asarray(samples, dtype=np.float32), N_FFT // 2)
    frames = frame_count(len(padded))
    blocks = [mel_db_frames(padded[start * HOP_LENGTH: (min(start + BLOCK_FRAMES, frames) - 1) * HOP_LENGTH + N_FFT])
              for start in range(0, frames, BLOCK_FRAMES)]
    return np.concatenate(blocks).T if blocks else np.empty((N_MELS, 0), np.float32)


def columns(db: np.ndarray, width: int) -> np.ndarray:
    """(bands, frames) → (bands, width): each column the mean of the frames it covers (a frame repeated when there
    are fewer frames than columns)."""
    frames = db.shape[1]
    if frames == 0:
        return np.full((db.shape[0], width), np.nan, np.float32)
    edges = np.linspace(0, frames, width + 1)
    start = np.minimum(edges[:-1].astype(int), frames - 1)
    stop = np.maximum(edges[1:].astype(int), start + 1)
    total = np.concatenate([np.zeros((db.shape[0], 1)), np.cumsum(db, axis=1, dtype=np.float64)], axis=1)
    return ((total[:, stop] - total[:, start]) / (stop - start)).astype(np.float32)


def paint_spectrogram(canvas: np.ndarray, x: int, y: int, db: np.ndarray, low: float, high: float) -> None:
    """Paint (N_MELS, width) dB into the canvas in viridis over [low, high], BAND_ROWS pixel rows a band."""
    unit = np.clip((db - low) / (high - low), 0.0, 1.0)
    rgb = VIRIDIS_RGB.take(colour_indices(unit[::-1]), axis=0)  # high bands on top
    canvas[y: y + PANEL_HEIGHT, x: x + db.shape[1]] = np.repeat(rgb, BAND_ROWS, axis=0)


def write_lines(canvas: np.ndarray, x: int, y: int, lines: list[str], colour=INK) -> None:
    for i, line in enumerate(lines):
        draw_text(canvas, x, y + i * LINE_HEIGHT, line, colour)


def evidence_picture(samples: np.ndarray, decision_second: float, title: str, readings: list[str],
                     reference_db: np.ndarray | None, reference_caption: list[str]) -> np.ndarray:
    """The picture (PICTURE_HEIGHT, PICTURE_WIDTH, 3) uint8 of float samples at 16 kHz; `readings` are the lines
    written beside the alarm spectrogram (detector readings, threshold)."""
    canvas = np.empty((PICTURE_HEIGHT, PICTURE_WIDTH, 3), np.uint8)
    canvas[:] = BACKGROUND
    alarm = columns(mel_db_in_blocks(samples), SPECTROGRAM_WIDTH)
    finite = alarm[np.isfinite(alarm)]
    pool = finite if reference_db is None else np.concatenate([finite, reference_db.ravel()])
    low, high = (np.percentile(pool, [1.0, 99.5]) if pool.size else (-100.0, 0.0))
    high = max(high, low + 1.0)
    write_lines(canvas, MARGIN, 6, [title])
    paint_spectrogram(canvas, MARGIN, TOP_PANEL_Y, np.nan_to_num(alarm, nan=low), low, high)
    seconds = len(samples) / SAMPLE_RATE
    if seconds > 0:
        tick = MARGIN + min(int(decision_second / seconds * SPECTROGRAM_WIDTH), SPECTROGRAM_WIDTH - 1)
        canvas[TOP_PANEL_Y - 7: TOP_PANEL_Y - 1, tick: tick + 2] = ALERT
    write_lines(canvas, TEXT_X, TOP_PANEL_Y, [f"ALARM AUDIO {seconds:.1f} S", f"DECISION AT {decision_second:.1f} S",
                                         ""], DIM)
    write_lines(canvas, TEXT_X, TOP_PANEL_Y + 3 * LINE_HEIGHT, readings)
    if reference_db is not None:
        paint_spectrogram(canvas, MARGIN, BOTTOM_PANEL_Y, columns(reference_db, SPECTROGRAM_WIDTH), low, high)
        write_lines(canvas, TEXT_X, BOTTOM_PANEL_Y, reference_caption, DIM)
    else:
        canvas[BOTTOM_PANEL_Y: BOTTOM_PANEL_Y + PANEL_HEIGHT, MARGIN: MARGIN + SPECTROGRAM_WIDTH] = (60, 60, 64)
        write_lines(canvas, MARGIN + 12, BOTTOM_PANEL_Y + PANEL_HEIGHT // 2 - 4, ["NO NORMAL REFERENCE IN THIS BUNDLE"],
               DIM)
    scale = np.linspace(0.0, 1.0, SPECTROGRAM_WIDTH)
    canvas[SCALE_Y: SCALE_Y + 8, MARGIN: MARGIN + SPECTROGRAM_WIDTH] = VIRIDIS_RGB[colour_indices(scale)][None]
    write_lines(canvas, TEXT_X, SCALE_Y, [f"{low:.0f} .. {high:.0f} DB MEL POWER"], DIM)
    write_lines(canvas, MARGIN, SCALE_Y + 12, [f"TIME LEFT TO RIGHT, 0 - {SAMPLE_RATE // 2} HZ BOTTOM TO TOP, "
                                          f"HOP {HOP_LENGTH} SAMPLES"], DIM)
    return canvas
