"""`humwatch synth`: write a synthetic machine-sound dataset in the MIMII layout.

OUT_DIR/<snr>_dB_<type>/<type>/id_XX/{normal,abnormal}/NNNNNNNN.wav, 16-bit PCM at 16 kHz, plus
OUT_DIR/synth_manifest.csv naming the fault (kind, severity) in every abnormal clip, and OUT_DIR/synth.json with
the arguments. Re-running with the same arguments writes the same bytes; existing files are kept, so an interrupted
run resumes. A folder written with other arguments (or not by this command) is refused: its clips would be kept
while the manifest described new ones.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import pathlib
import wave

import numpy as np

from humwatch.agent.contract import FIRST_PATCH_SAMPLES, SAMPLE_RATE
from humwatch.agent.durable import refuse_unwritable, write_atomic
from humwatch.agent.errors import ConfigError
from humwatch.evaluation.synth import DEFAULT_SNR_DB, MACHINE_TYPES, synth_clip

log = logging.getLogger(__name__)

MAX_CHANNELS = 8  # MIMII's array


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=pathlib.Path, metavar="OUT_DIR")
    parser.add_argument("--types", default=",".join(MACHINE_TYPES),
                        help="comma-separated machine types (default: %(default)s)")
    parser.add_argument("--ids", default="2",
                        help="number of machine ids per type (numbered 00, 02, 04, ... as in MIMII) "
                             "or a comma-separated list of ids, e.g. 4,6 or 0, for id 0 alone (default: %(default)s)")
    parser.add_argument("--normal", type=int, default=100, help="normal clips per id (default: %(default)s)")
    parser.add_argument("--abnormal", type=int, default=50, help="abnormal clips per id (default: %(default)s)")
    parser.add_argument("--snr", type=float, default=DEFAULT_SNR_DB,
                        help="machine-to-background SNR in dB (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default: %(default)s)")
    parser.add_argument("--channels", type=int, default=1, help="microphones, 1 to 8; MIMII has 8 (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: %(default)s)")


def parse_ids(text: str) -> list[int]:
    """'2' -> [0, 2]; '0,2,6' -> [0, 2, 6]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--ids: expected a count or a comma-separated list of integers, got {text!r}") from None
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise ConfigError(f"--ids: the count must be at least 1, got {values[0]}")
        return [2 * i for i in range(values[0])]
    if not values or min(values) < 0:
        raise ConfigError(f"--ids: ids must be non-negative integers, got {text!r}")
    return values


def parse_types(text: str) -> list[str]:
    types = [t.strip() for t in text.split(",") if t.strip()]
    unknown = sorted(set(types) - set(MACHINE_TYPES))
    if unknown or not types:
        raise ConfigError(f"--types: unknown machine type(s) {unknown or text!r}; choose from {','.join(MACHINE_TYPES)}")
    return types


def snr_dir_name(snr_db: float, machine_type: str) -> str:
    """MIMII's top-level folder name, e.g. '-6_dB_pump'."""
    snr = int(snr_db) if float(snr_db).is_integer() else snr_db
    return f"{snr}_dB_{machine_type}"


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV of float samples in [-1, 1], shape (n,) or (n, channels)."""
    frames = np.asarray(samples)
    channels = 1 if frames.ndim == 1 else frames.shape[1]
    pcm = np.clip(np.round(frames * 32767), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buffer.getvalue()


def write_dataset(out_dir: pathlib.Path, types: list[str], ids: list[int], n_normal: int, n_abnormal: int,
                  snr_db: float = DEFAULT_SNR_DB, seconds: float = 10.0, channels: int = 1, seed: int = 0
                  ) -> list[dict]:
    """Write (or complete) the dataset; returns one manifest row per clip."""
    rows = []
    total = len(types) * len(ids) * (n_normal + n_abnormal)
    done = 0
    for machine_type in types:
        for machine_id in ids:
            id_dir = out_dir / snr_dir_name(snr_db, machine_type) / machine_type / f"id_{machine_id:02d}"
            for label, count in (("normal", n_normal), ("abnormal", n_abnormal)):
                for index in range(count):
                    path = id_dir / label / f"{index:08d}.wav"
                    abnormal = label == "abnormal"
                    samples, anomaly = synth_clip(machine_type, machine_id, index, abnormal, seconds, snr_db,
                                                  seed, channels)
                    if not path.exists():
                        write_atomic(path, wav_bytes(samples))
                    rows.append({"file": str(path.relative_to(out_dir)), "type": machine_type,
                                 "id": f"id_{machine_id:02d}", "label": label,
                                 "fault": anomaly.kind if anomaly else "",
                                 "severity": f"{anomaly.severity:.3f}" if anomaly else ""})
                    done += 1
                log.info("%s id_%02d %s: %d clips (%d/%d)", machine_type, machine_id, label, count, done, total)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["file"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out_dir / "synth_manifest.csv", text.getvalue().encode())
    return rows


def check_folder(out_dir: pathlib.Path, arguments: dict) -> None:
    """Refuse a folder that holds a dataset of other arguments, or anything not written by synth; record the
    arguments in a new one."""
    record = out_dir / "synth.json"
    if record.exists():
        try:
            before = json.loads(record.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{record}: unreadable ({exc}); use a new folder") from None
        if before != arguments:
            changed = ", ".join(f"{k} {before.get(k)!r} -> {v!r}" for k, v in arguments.items() if before.get(k) != v)
            raise ConfigError(f"{out_dir}: holds a dataset made with other arguments ({changed}); use a new folder")
        return
    refuse_unwritable(f"OUT_DIR {out_dir}", out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: not empty and not a dataset of humwatch synth (no synth.json); use a new folder")
    write_atomic(record, (json.dumps(arguments, indent=2) + "\n").encode())


def run(args: argparse.Namespace) -> int:
    types, ids = parse_types(args.types), parse_ids(args.ids)
    if args.normal < 1 or args.abnormal < 0:
        raise ConfigError("--normal must be at least 1 and --abnormal at least 0")
    if not 1 <= args.channels <= MAX_CHANNELS:
        raise ConfigError(f"--channels {args.channels}: must be 1 to {MAX_CHANNELS}")
    if not args.seconds * SAMPLE_RATE >= FIRST_PATCH_SAMPLES:
        raise ConfigError(f"--seconds {args.seconds:g}: must be at least {FIRST_PATCH_SAMPLES / SAMPLE_RATE:.3g}, "
                          "one patch")
    if not math.isfinite(args.snr):
        raise ConfigError(f"--snr {args.snr}: must be a number of dB")
    check_folder(args.out_dir, {"types": sorted(types), "ids": sorted(ids), "normal": args.normal, "abnormal": args.abnormal,
                                "snr_db": args.snr, "seconds": args.seconds, "channels": args.channels,
                                "seed": args.seed})
    rows = write_dataset(args.out_dir, types, ids, args.normal, args.abnormal, args.snr, args.seconds,
                         args.channels, args.seed)
    print(f"wrote {len(rows)} clips ({len(types)} types x {len(ids)} ids) to {args.out_dir} "
          f"(synthetic, SNR {args.snr:g} dB; faults listed in synth_manifest.csv)")
    return 0
