"""Frozen-feature variants on a DCASE 2021–2025 section: how far features without training reach on real faults.

Issue 18 asks for a ToyCar source-domain AUC of 0.80. This script measures, on the official split and in one run,
the product's default (`window-knn`, simulated here on the same cached features: a window is the mean of 18 patches,
a part's distance is to the nearest training window, standardised on each training clip's leave-out distances, a
clip scores its highest window; the window, distance and leave-out code are the product's) beside the variants tried
against the goal: each of its two parts alone, a third part on the window's log-Mel spectrum or its band contrast
(in the mean, in the max, or added beyond a gate), clip statistics of log-Mel and STFT spectra, frame-level k-NN,
longer modulation windows, and a linear discriminant of the CNN features on the training clips' attribute groups. No
variant is chosen by these figures: with 50 + 50 test clips per domain an AUC is uncertain by about ±0.09, and
picking the best of 15 on the test clips would be tuning to them.

    python benchmarks/frozen_variants.py /work/shared/audio/dcase2023-toycar \
        --model MODELS/squeezenet1_1-int8.tflite --cache CACHE

Features come from `humwatch evaluate`'s own feature sources and cache (`--cache` shared with an evaluate run
skips the CNN). Needs the `evaluate` extras (scikit-learn, librosa).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from humwatch.agent.contract import SAMPLE_RATE, FrontEndParams  # noqa: E402
from humwatch.agent.model.scorers import nearest_distances as nearest  # noqa: E402
from humwatch.agent.signal.audio import read_wav  # noqa: E402
from humwatch.agent.signal.modulation import modulation_spectrum  # noqa: E402
from humwatch.calibration.window_knn import leave_out_distances, rolling_means  # noqa: E402
from humwatch.evaluation.cache import FeatureCache  # noqa: E402
from humwatch.evaluation.dcase_layout import Section, find_sections  # noqa: E402
from humwatch.evaluation.dcase_metrics import domain_only_auc, official_domain_auc  # noqa: E402
from humwatch.evaluation.features import cnn_source, dcase2023_logmel_source, patch_db_source  # noqa: E402

Scores = list[np.ndarray]  # per test clip: its windows' (or frames') scores


def standardiser(rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    mean, scale = rows.mean(0), rows.std(0)
    scale[scale == 0] = 1.0
    return lambda x: (x - mean) / scale


def projector(rows: np.ndarray, components: int) -> Callable[[np.ndarray], np.ndarray]:
    mean = rows.mean(0)
    basis = np.linalg.svd(rows - mean, full_matrices=False)[2][:components]
    return lambda x: (x - mean) @ basis.T


def window_part(train: list[np.ndarray], test: list[np.ndarray], standardise: bool) -> tuple[Scores, np.ndarray]:
    """A window-knn part with the product's own window, distance and leave-out code (one training clip a stretch,
    as calibrate makes of short recordings): test windows' distances in leave-out standard deviations, and the
    leave-out references."""
    raw = [rolling_means(t) for t in train]
    transform = standardiser(np.vstack(raw)) if standardise else projector(np.vstack(raw), 128)
    banks = [transform(w) for w in raw]
    bank = np.vstack(banks)
    references = leave_out_distances(bank, np.repeat(np.arange(len(banks)), [len(b) for b in banks]), stride=1)
    mean, spread = references.mean(), references.std(ddof=1)
    return [(nearest(transform(rolling_means(t)), bank) - mean) / spread for t in test], (references - mean) / spread


def clip_knn(train: np.ndarray, test: np.ndarray) -> Scores:
    """One row per clip, standardised on the training rows, distance to the nearest training clip."""
    transform = standardiser(train)
    return list(nearest(transform(test), transform(train))[:, None])


def band_contrast(db: np.ndarray) -> np.ndarray:
    """Each Mel band's patch mean minus the mean of its two neighbours: a tone is a local peak."""
    level = db.mean(axis=2)
    return level[:, 1:-1] - 0.5 * (level[:, :-2] + level[:, 2:])


def modulation(mel: np.ndarray, frames: int, groups: int, bins: int) -> np.ndarray:
    """Mean log modulation spectrum of a clip's (mels, time) dB spectrogram over segments of `frames`."""
    segments = np.stack([mel[:, i:i + frames] for i in range(0, mel.shape[1] - frames + 1, frames // 2)])
    centred = (segments - segments.mean(2, keepdims=True)) * np.hanning(frames)
    magnitude = np.abs(np.fft.rfft(centred, axis=2))[:, :, 1:bins + 1]
    grouped = magnitude.reshape(len(segments), groups, -1, bins).mean(axis=2)
    return np.log(grouped + 1e-3).reshape(len(segments), -1).mean(axis=0)


def stft_mean(path: Path, n_fft: int) -> np.ndarray:
    from scipy.signal import stft

    _, _, spectrum = stft(read_wav(path), fs=SAMPLE_RATE, nperseg=n_fft, noverlap=n_fft // 2)
    return np.log(np.abs(spectrum) ** 2 + 1e-10).mean(axis=1)


def variants(section: Section, model: Path, cache: FeatureCache) -> dict[str, Scores]:
    train_paths, test_paths = [c.path for c in section.train], [c.path for c in section.test]
    cnn = cnn_source(model, FrontEndParams())
    db = patch_db_source()
    cnn_train, cnn_test = cnn.clips(train_paths, cache), cnn.clips(test_paths, cache)
    db_train, db_test = db.clips(train_paths, cache), db.clips(test_paths, cache)
    mod = window_part([modulation_spectrum(d) for d in db_train], [modulation_spectrum(d) for d in db_test], True)
    pca = window_part(cnn_train, cnn_test, False)
    level = window_part([d.mean(2) for d in db_train], [d.mean(2) for d in db_test], True)
    contrast = window_part([band_contrast(d) for d in db_train], [band_contrast(d) for d in db_test], True)
    default = [(m + c) / 2 for m, c in zip(mod[0], pca[0])]
    out: dict[str, Scores] = {"window-knn, two parts (the default before its tone part)": default,
                              "  its modulation part alone": mod[0], "  its CNN part alone": pca[0]}
    for name, third in (("log-Mel level", level), ("band contrast", contrast)):
        out[f"+ {name} part, mean of three"] = [(m + c + t) / 3 for m, c, t in zip(mod[0], pca[0], third[0])]
        out[f"+ {name} part, max of three"] = [np.maximum.reduce([m, c, t]) for m, c, t in zip(mod[0], pca[0],
                                                                                           third[0])]
        gate = 2 * third[1].max()
        out[f"+ {name} part beyond 2x its largest reference"] = [d + np.maximum(0, t - gate)
                                                                for d, t in zip(default, third[0])]

    logmel = dcase2023_logmel_source()
    mel_train, mel_test = logmel.clips(train_paths, cache), logmel.clips(test_paths, cache)
    stats = lambda clips: np.array([np.r_[m.mean(0), m.std(0)] for m in clips])  # noqa: E731
    out["clip k-NN: 128-band log-Mel mean + std"] = clip_knn(stats(mel_train), stats(mel_test))
    for n_fft in (1024, 4096):
        out[f"clip k-NN: STFT {n_fft} log power mean"] = clip_knn(
            np.array([stft_mean(p, n_fft) for p in train_paths]), np.array([stft_mean(p, n_fft) for p in test_paths]))
    rng = np.random.default_rng(0)
    context = lambda m: np.hstack([m[i:len(m) - 4 + i] for i in range(5)])  # noqa: E731  5 frames, as the AE
    frames = np.vstack([context(m) for m in mel_train])
    scale = standardiser(frames)
    sample = scale(frames[rng.choice(len(frames), 20000, replace=False)])
    project = projector(sample, 64)
    bank = project(sample)
    out["frame k-NN: 5 log-Mel frames, PCA 64, clip mean"] = [
        nearest(project(scale(context(m)))[::2], bank).mean(keepdims=True) for m in mel_test]
    mel = lambda clips: [np.concatenate([d[0]] + [d[i][:, 32:] for i in range(1, len(d))], axis=1)  # noqa: E731
                         for d in clips]
    for frames_, groups, bins in ((128, 16, 64), (512, 4, 256)):
        out[f"clip k-NN: modulation over {frames_} frames, {groups} band groups"] = clip_knn(
            np.array([modulation(m, frames_, groups, bins) for m in mel(db_train)]),
            np.array([modulation(m, frames_, groups, bins) for m in mel(db_test)]))
    out["clip k-NN: CNN means in an LDA of the attribute groups"] = _attribute_lda(section, cnn_train, cnn_test)
    return out


def _attribute_lda(section: Section, cnn_train: list[np.ndarray], cnn_test: list[np.ndarray]) -> Scores:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    rows = np.vstack(cnn_train)
    groups = np.repeat([c.attributes for c in section.train], [len(c) for c in cnn_train])
    project = projector(rows, 256)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(project(rows), groups)
    means = lambda clips: np.array([lda.transform(project(c)).mean(0) for c in clips])  # noqa: E731
    return list(nearest(means(cnn_test), means(cnn_train))[:, None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    cache = FeatureCache(args.cache)
    for section in find_sections(args.dataset):
        labels, domains = section.labels, section.domains
        print(f"{section.name}: {len(section.train)} training clips, {len(section.test)} test clips; clip score = "
              f"its highest window; AUC domain only (evaluator's definition)")
        print(f"{'variant':60s} {'source':>15s} {'target':>15s}")
        for name, scores in variants(section, args.model, cache).items():
            clip = np.array([s.max() for s in scores])
            figures = [f"{domain_only_auc(labels, clip, domains, d):.3f} "
                       f"({official_domain_auc(labels, clip, domains, d):.3f})" for d in ("source", "target")]
            print(f"{name:60s} {figures[0]:>15s} {figures[1]:>15s}", flush=True)


if __name__ == "__main__":
    main()
