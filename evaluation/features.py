"""What each method looks at, computed per clip: CNN embeddings of the patch images, dB patches, log-Mel frames.

A FeatureSource describes itself (for the cache key) and computes one clip's features from its WAV file.
"""
from __future__ import annotations

import pathlib
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from humwatch.agent.contract import SAMPLE_RATE, FrontEndParams, signal_contract
from humwatch.agent.signal.audio import read_wav
from humwatch.agent.signal.frontend import clip_patches
from humwatch.agent.signal.mel import mel_db
from humwatch.evaluation.cache import FeatureCache


@dataclass(frozen=True)
class FeatureSource:
    name: str
    description: dict
    compute: Callable[[pathlib.Path], np.ndarray]
    extractor: object | None = None  # CNN sources: the agent.model.extractor.Extractor that computes the features

    @property
    def extractor_sha256(self) -> str:
        """What a detector fitted on these features records as their origin ("" for non-CNN sources)."""
        return self.extractor.sha256 if self.extractor is not None else ""

    def clips(self, paths, cache: FeatureCache) -> list[np.ndarray]:
        return [cache.get(p, self.description, self.compute) for p in paths]


def cnn_source(model_path: pathlib.Path, params: FrontEndParams, channel=0, num_threads: int = 1) -> FeatureSource:
    """(18, d) float32 CNN features of a 10 s clip's patch images, from a converted TFLite extractor."""
    from humwatch.agent.model.extractor import Extractor  # the TFLite runtime loads only when a backbone is evaluated

    extractor = Extractor(model_path, num_threads=num_threads)
    name = pathlib.Path(model_path).name.removesuffix(".tflite")

    def compute(path: pathlib.Path) -> np.ndarray:
        return extractor.embed(clip_patches(read_wav(path, channel), params).images).astype(np.float32)

    description = {"source": "cnn", "extractor_sha256": extractor.sha256, "frontend": params.to_dict(),
                   "channel": channel}
    return FeatureSource(name, description, compute, extractor)


def patch_db_source(channel=0) -> FeatureSource:
    """(18, 64 mels, 64 frames) float32 dB patches, as the front end cuts them."""
    def compute(path: pathlib.Path) -> np.ndarray:
        return clip_patches(read_wav(path, channel)).db.astype(np.float32)

    return FeatureSource("patch-db", {"source": "patch_db", "contract": signal_contract(), "channel": channel},
                         compute)


def logmel_source(channel=0) -> FeatureSource:
    """(n_frames, 64) float32 log-Mel (dB) frames, hop 256, centred as librosa does."""
    def compute(path: pathlib.Path) -> np.ndarray:
        return mel_db(read_wav(path, channel)).T.astype(np.float32)

    return FeatureSource("logmel", {"source": "logmel", "contract": signal_contract(), "channel": channel}, compute)


def dcase2023_logmel_source(channel=0) -> FeatureSource:
    """(n_frames, 128) float32 log-Mel frames as the DCASE 2023 baseline computes them (librosa melspectrogram:
    n_fft 1024, hop 512, 128 bands, power 2; 10·log10(mel + float eps))."""
    def compute(path: pathlib.Path) -> np.ndarray:
        import librosa  # the peer's own feature code: workstation only

        mel = librosa.feature.melspectrogram(y=read_wav(path, channel), sr=SAMPLE_RATE, n_fft=1024, hop_length=512,
                                             n_mels=128, power=2.0)
        return (10.0 * np.log10(mel + sys.float_info.epsilon)).T.astype(np.float32)

    description = {"source": "dcase2023_logmel", "n_fft": 1024, "hop": 512, "n_mels": 128, "power": 2.0,
                   "channel": channel}
    return FeatureSource("dcase2023-logmel", description, compute)
