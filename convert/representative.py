"""Representative model inputs for int8 quantisation: real Mel patch images, made by the agent's own front end.

The quantiser learns each tensor's range from these images, so they must be what the board will feed: viridis
patches of machine sound. They come from the WAV files the user points at (files or folders), by default the
shared clips; with no audio at all, from the synthetic machines of `evaluation.synth`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from humwatch.agent import contract
from humwatch.agent.errors import AudioError
from humwatch.agent.signal.audio import read_wav
from humwatch.agent.signal.frontend import clip_patches

log = logging.getLogger(__name__)

# Two images that pin the quantised input range to the full 0..255, so the uint8 input has scale 1, zero point 0
# and the board feeds its images unchanged.
RANGE_PINS = np.stack([np.zeros(contract.IMAGE_SHAPE, np.uint8), np.full(contract.IMAGE_SHAPE, 255, np.uint8)])


def wav_files(paths: list[Path]) -> list[Path]:
    """The WAV files named, and those under the folders named, sorted; AudioError for a path that is neither."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() == ".wav")
        elif path.is_file():
            files.append(path)
        else:
            raise AudioError(f"{path}: no such audio file or folder")
    return files


def spread(items: list, count: int) -> list:
    """`count` items evenly spread over the list (all of them if it is shorter), keeping their order."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def images_from_audio(files: list[Path], max_patches: int,
                      params: contract.FrontEndParams = contract.FrontEndParams()) -> np.ndarray:
    """Up to `max_patches` patch images, drawn evenly from clips spread over `files` (channel 0 of each)."""
    chosen = spread(files, -(-max_patches // contract.WINDOW_PATCHES))  # clips of the usual 10 s
    batches = []
    for i, path in enumerate(chosen, 1):
        batch = clip_patches(read_wav(path, channel=0), params)
        batches.append(batch.images)
        log.debug("representative audio %d/%d: %s, %d patches", i, len(chosen), path, len(batch))
    images = np.concatenate(batches)
    return images[spread(list(range(len(images))), max_patches)]


def images_from_synth(max_patches: int, params: contract.FrontEndParams = contract.FrontEndParams(),
                      seed: int = 0) -> np.ndarray:
    """Patch images of synthetic machine sound, one 10 s clip per machine type and id in turn."""
    from humwatch.evaluation.synth import MACHINE_TYPES, synth_clip

    images: list[np.ndarray] = []
    index = 0
    while sum(map(len, images)) < max_patches:
        machine_type = MACHINE_TYPES[index % len(MACHINE_TYPES)]
        samples, _ = synth_clip(machine_type, machine_id=index // len(MACHINE_TYPES), index=index, seed=seed)
        images.append(clip_patches(samples, params).images)
        index += 1
    return np.concatenate(images)[:max_patches]


def representative_images(audio: list[Path] | None, max_patches: int,
                          params: contract.FrontEndParams = contract.FrontEndParams()) -> tuple[np.ndarray, str]:
    """uint8 (n, 64, 64, 3) images for quantisation and a one-line description of where they came from."""
    files = wav_files(audio) if audio else []
    if audio and not files:
        raise AudioError(f"no .wav files in {', '.join(map(str, audio))}")
    if files:
        images = images_from_audio(files, max_patches, params)
        if len(images) == 0:
            raise AudioError(f"{', '.join(map(str, audio))}: no clip is long enough for one "
                             f"{contract.PATCH_FRAMES}-frame patch")
        return images, f"{len(images)} patches from {len(files)} WAV file(s) under {', '.join(map(str, audio))}"
    images = images_from_synth(max_patches, params)
    return images, f"{len(images)} patches of synthetic machine sound (humwatch.evaluation.synth)"


def default_audio(shared_dir: Path) -> list[Path] | None:
    """The shared machine recordings, when this checkout has them."""
    audio = shared_dir / "audio"
    return [audio] if audio.is_dir() else None
