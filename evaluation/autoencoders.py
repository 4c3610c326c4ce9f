"""Peers: the autoencoders humwatch's transfer features are measured against (workstation only, tensorflow).

- dcase2023_ae: the DCASE 2023 task 2 baseline autoencoder in its published configuration
  (github.com/nttcslab/dcase2023_task2_baseline_ae, baseline.yaml and networks/dcase2023t2_ae/network.py;
  arXiv 2303.00455). Input: 128-band log-Mel (n_fft 1024, hop 512, power 2, 10·log10(mel + eps), librosa),
  5 consecutive frames → 640 values; Dense 128 ×4, bottleneck 8, Dense 128 ×4, each followed by batch norm
  (momentum 0.01 in PyTorch's sense, eps 1e-3) and ReLU, linear output; Adam lr 1e-3, batch 256, 100 epochs,
  MSE, 10 % of the training vectors drawn at random held out for validation (never trained on). Clip score:
  mean squared reconstruction error over the clip's vectors (the baseline's "MSE" score).
  Differences: Keras instead of PyTorch (same layers, initialisers are Keras's); trained per section on the
  training clips given to it (e.g. the 208 of a ToyCar subset, not the full 990 + 10 of the development set),
  and on a paper-protocol split for MIMII / DCASE 2020 layouts.
- dcae: a LeNet-style convolutional autoencoder on the 64×64 dB Mel patches (the paper's peer): conv 5×5 (8) →
  pool → conv 5×5 (16) → pool → conv 3×3 (32) → pool → dense 64 code, mirrored with transposed convolutions
  (LeNet-sized, ≈ 17 M multiply-adds per patch, so that 40 trainings fit a shared 2-core machine).
  Input standardised with the training patches' mean and std. Patch score: MSE; clip score: mean over patches.
"""
from __future__ import annotations

import os

import numpy as np

from humwatch.evaluation.features import FeatureSource
from humwatch.evaluation.methods import FeatureMethod

AE2023_FRAMES = 5
AE2023_UNITS = (128, 128, 128, 128, 8, 128, 128, 128, 128)
AE2023_EPOCHS = 100
AE2023_BATCH = 256
AE2023_VALIDATION = 0.1
DCAE_EPOCHS = 20
DCAE_BATCH = 64
CODE_MAPS = 32  # feature maps of the DCAE's last conv layer


def _keras(seed: int):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep tensorflow's start-up chatter out of the progress
    import tensorflow as tf

    if not getattr(_keras, "configured", False):
        try:  # two threads for training on a shared machine, unless tensorflow already runs (e.g. a conversion)
            tf.config.threading.set_intra_op_parallelism_threads(2)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass
        _keras.configured = True
    tf.keras.utils.set_random_seed(seed)
    return tf.keras


def stacked_frames(logmel: np.ndarray, frames: int = AE2023_FRAMES) -> np.ndarray:
    """(n_frames, bands) log-Mel → (n_frames - frames + 1, frames·bands): each row the frames t..t+frames-1
    concatenated, frame by frame, as the baseline's vectors."""
    n = len(logmel) - frames + 1
    return np.concatenate([logmel[t: t + n] for t in range(frames)], axis=1)


def ae2023_model(keras, dim: int):
    inputs = keras.Input((dim,))
    h = inputs
    for units in AE2023_UNITS:
        h = keras.layers.Dense(units)(h)
        h = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3)(h)  # = PyTorch momentum 0.01
        h = keras.layers.Activation("relu")(h)
    return keras.Model(inputs, keras.layers.Dense(dim)(h))


def dcae_model(keras, size: int = 64):
    layers = keras.layers
    inputs = keras.Input((size, size, 1))
    h = inputs
    for filters, kernel in ((8, 5), (16, 5), (CODE_MAPS, 3)):
        h = layers.Conv2D(filters, kernel, padding="same")(h)
        h = layers.MaxPooling2D(2)(layers.Activation("relu")(layers.BatchNormalization()(h)))
    code = layers.Dense(64)(layers.Flatten()(h))
    h = layers.Reshape((size // 8, size // 8, CODE_MAPS))(
        layers.Dense((size // 8) ** 2 * CODE_MAPS, activation="relu")(code))
    for filters, kernel in ((16, 3), (8, 5), (8, 5)):
        h = layers.Conv2DTranspose(filters, kernel, strides=2, padding="same")(h)
        h = layers.Activation("relu")(layers.BatchNormalization()(h))
    return keras.Model(inputs, layers.Conv2D(1, 3, padding="same")(h))


class Dcase2023Autoencoder(FeatureMethod):
    def __init__(self, source: FeatureSource, epochs: int = AE2023_EPOCHS) -> None:
        self.source, self.epochs = source, epochs
        self.name = "DCASE 2023 baseline AE" + ("" if epochs == AE2023_EPOCHS else f" ({epochs} epochs)")
        self._model = None

    def fit(self, train: list[np.ndarray], seed: int) -> None:
        keras = _keras(seed)
        x = np.concatenate([stacked_frames(c) for c in train]).astype(np.float32)
        order = np.random.default_rng(seed).permutation(len(x))
        n_valid = int(round(AE2023_VALIDATION * len(x)))
        fit, valid = x[order[n_valid:]], x[order[:n_valid]]
        self._model = ae2023_model(keras, x.shape[1])
        self._model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        self._model.fit(fit, fit, epochs=self.epochs, batch_size=AE2023_BATCH, shuffle=True, verbose=0,
                        validation_data=(valid, valid) if n_valid else None)

    def clip_scores(self, clips: list[np.ndarray]) -> np.ndarray:
        vectors = [stacked_frames(c).astype(np.float32) for c in clips]
        errors = _reconstruction_error(self._model, np.concatenate(vectors), AE2023_BATCH)
        return np.array([e.mean() for e in np.split(errors, np.cumsum([len(v) for v in vectors])[:-1])])


class ConvAutoencoder(FeatureMethod):
    def __init__(self, source: FeatureSource, epochs: int = DCAE_EPOCHS) -> None:
        self.source, self.epochs = source, epochs
        self.name = "DCAE (conv AE on patches)"
        self._model = None
        self._mean = self._std = 0.0

    def fit(self, train: list[np.ndarray], seed: int) -> None:
        keras = _keras(seed)
        x = np.concatenate(train).astype(np.float32)
        self._mean, self._std = float(x.mean()), float(x.std()) or 1.0
        x = ((x - self._mean) / self._std)[..., None]
        self._model = dcae_model(keras, x.shape[1])
        self._model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        self._model.fit(x, x, epochs=self.epochs, batch_size=DCAE_BATCH, shuffle=True, verbose=0)

    def clip_scores(self, clips: list[np.ndarray]) -> np.ndarray:
        x = ((np.concatenate(clips).astype(np.float32) - self._mean) / self._std)[..., None]
        errors = _reconstruction_error(self._model, x, DCAE_BATCH)
        return np.array([e.mean() for e in np.split(errors, np.cumsum([len(c) for c in clips])[:-1])])


def _reconstruction_error(model, x: np.ndarray, batch: int) -> np.ndarray:
    """Mean squared error per input row (per vector or per patch)."""
    y = model.predict(x, batch_size=batch, verbose=0)
    return np.square(y - x).reshape(len(x), -1).mean(axis=1)
