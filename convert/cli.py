"""`humwatch convert`: an ImageNet CNN in torchvision layout -> TFLite feature extractors for the board.

Builds `<name>-float32.tflite` and `<name>-int8.tflite`, each with its `.json` sidecar and its known answers
(`.known.npz`: fixed reference images and their features, which the board checks its runtime against), and checks
them: the float model against Keras, the int8 model's features against float on held-out Mel patches. Only models
that pass reach the output folder, so a failed conversion leaves the models already there as they were.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from humwatch.agent import contract
from humwatch.agent.durable import refuse_unwritable
from humwatch.agent.errors import ConfigError
from humwatch.convert.backbones import ARCHITECTURES

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "int8")  # what one conversion writes by default

DEFAULT_ARCH = "squeezenet1_1"
DEFAULT_PATCHES = 250
MIN_PATCHES = 10
HELD_OUT_EVERY = 5  # every 5th representative patch checks the int8 model instead of calibrating it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=ARCHITECTURES, default=DEFAULT_ARCH,
                        help=f"architecture (default {DEFAULT_ARCH})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", type=Path, metavar="FILE",
                        help="torchvision-layout state dict (.npz, or a torch .pth: read without torch)")
    source.add_argument("--download", action="store_true",
                        help="fetch torchvision's official checkpoint into torch's hub cache (sha256 checked)")
    source.add_argument("--random-weights", type=int, metavar="SEED",
                        help="seeded random weights (for timing and tests only; the features mean nothing)")
    parser.add_argument("--weights-dir", type=Path, metavar="DIR",
                        help="look here first for <arch>-imagenet.npz/.pth or the torch hub file name "
                             "(then $HUMWATCH_WEIGHTS, ../shared/weights, $TORCH_HOME/hub/checkpoints)")
    parser.add_argument("--precision", choices=("both", *PRECISIONS), default="both",
                        help="which models to write (default both)")
    parser.add_argument("--audio", type=Path, nargs="+", metavar="PATH",
                        help="WAV files or folders of normal machine sound to quantise on "
                             "(default: the shared recordings if present, else synthetic machine sound)")
    parser.add_argument("--patches", type=int, default=DEFAULT_PATCHES,
                        help=f"representative patches to draw (default {DEFAULT_PATCHES}; 1 in "
                             f"{HELD_OUT_EVERY} is held out to check the int8 model)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: humwatch's models folder)")
    parser.add_argument("--name", help="file name stem (default: the architecture; <arch>-random<SEED> for "
                                       "--random-weights)")


def run(args: argparse.Namespace) -> int:
    from humwatch.agent.paths import models_dir

    precisions = PRECISIONS if args.precision == "both" else (args.precision,)
    paths = convert(args.arch, precisions=precisions, weights=args.weights, weights_dir=args.weights_dir,
                    download=args.download, random_seed=args.random_weights, audio=args.audio,
                    patches=args.patches, out_dir=args.out or models_dir(), name=args.name)
    for path in paths.values():
        print(path)
    return 0


def resolve_weights(arch: str, weights: Path | None, weights_dir: Path | None, download: bool,
                    random_seed: int | None) -> tuple[dict[str, np.ndarray], dict, Path | None]:
    """The checked state dict, its description for the sidecar (file name and sha256) and its file."""
    from humwatch.convert import weights as w
    from humwatch.convert.backbones import random_state_dict

    if random_seed is not None:
        state = random_state_dict(arch, random_seed)
        digest = hashlib.sha256(b"".join(state[k].tobytes() for k in sorted(state))).hexdigest()
        log.info("weights: seeded random (seed %d), tensors sha256 %s", random_seed, digest)
        return state, {"file": None, "random_seed": random_seed, "sha256": digest}, None
    path = weights or (w.download(arch) if download else w.locate_weights(arch, weights_dir))
    state = w.load_state_dict(path)  # first: it names a missing or damaged file in one line
    digest = w.file_sha256(path)
    log.info("weights: %s (sha256 %s)", path, digest)
    w.check_state_dict(arch, state, source=str(path))
    return state, {"file": path.name, "random_seed": None, "sha256": digest}, path


def convert(arch: str, *, out_dir: Path, precisions: tuple[str, ...] = PRECISIONS,
            weights: Path | None = None, weights_dir: Path | None = None, download: bool = False,
            random_seed: int | None = None, audio: list[Path] | None = None, patches: int = DEFAULT_PATCHES,
            name: str | None = None) -> dict[str, Path]:
    """Convert `arch` and write the requested precisions to `out_dir`; returns {precision: model path}."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of the progress log
    from humwatch.agent.model.extractor import Extractor
    from humwatch.agent.model.known_answers import write_known_answers
    from humwatch.convert import representative, tflite, verify
    from humwatch.convert.backbones import build_backbone, feature_dim
    from humwatch.convert.known_answers import reference_images
    from humwatch.convert.weights import default_shared_dir

    if patches < MIN_PATCHES:
        raise ConfigError(f"--patches {patches}: need at least {MIN_PATCHES} to quantise and check the int8 model")
    # Random weights never take the real model's name: a timing run must not replace the model a board uses.
    stem = name or (arch if random_seed is None else f"{arch}-random{random_seed}")
    if Path(stem).name != stem or stem.startswith("."):
        raise ConfigError(f"--name {stem!r}: a file name stem, without '/' and not starting with '.'")
    refuse_unwritable(f"--out {out_dir}", out_dir)
    started = time.monotonic()
    state, weights_info, weights_path = resolve_weights(arch, weights, weights_dir, download, random_seed)
    if not audio:  # the recordings shared beside the weights, else those of this checkout's shared folder
        near_weights = representative.default_audio(weights_path.parent.parent) if weights_path else None
        audio = near_weights or representative.default_audio(default_shared_dir())
    images, source = representative.representative_images(audio, patches)
    log.info("representative data: %s", source)
    held_out = images[::HELD_OUT_EVERY]
    calibration = np.delete(images, np.s_[::HELD_OUT_EVERY], axis=0)

    log.info("building %s in Keras", arch)
    model = build_backbone(arch, state)
    built: dict[str, tuple[bytes, dict]] = {}  # precision -> (model, sidecar), each checked
    with tempfile.TemporaryDirectory() as scratch:
        log.info("exporting float32")
        content = tflite.export_float(model)
        built["float32"] = content, tflite.sidecar(content, architecture=arch, precision="float32",
                                                   weights=weights_info, feature_dim=feature_dim(arch))
        float_path = tflite.write_extractor(Path(scratch) / f"{stem}-float32.tflite", *built["float32"])
        verify.float_matches_keras(model, float_path, held_out)
        if "int8" in precisions:
            log.info("quantising to int8 on %d patches (and %d range pins)", len(calibration),
                     len(representative.RANGE_PINS))
            content = tflite.export_int8(model, np.concatenate([representative.RANGE_PINS, calibration]))
            built["int8"] = content, tflite.sidecar(
                content, architecture=arch, precision="int8", weights=weights_info, feature_dim=feature_dim(arch),
                calibration={"representative": source, "patches": len(calibration),
                             "image_scaling": asdict(contract.FrontEndParams())})
            int8_path = tflite.write_extractor(Path(scratch) / f"{stem}-int8.tflite", *built["int8"])
            verify.int8_matches_float(int8_path, float_path, held_out)
        references = reference_images()
        known = {precision: Extractor(Path(scratch) / f"{stem}-{precision}.tflite", check=False).embed(references)
                 for precision in precisions}
    paths = {}
    for precision in precisions:
        paths[precision] = tflite.write_extractor(out_dir / f"{stem}-{precision}.tflite", *built[precision])
        write_known_answers(paths[precision], references, known[precision])
    for precision, path in paths.items():
        log.info("wrote %s (%.2f MB)", path, len(built[precision][0]) / 1e6)
    log.info("converted %s in %.0f s", arch, time.monotonic() - started)
    return paths
