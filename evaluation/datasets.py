"""Find the machines and their normal and abnormal clips in a MIMII or DCASE 2020 task 2 dataset folder.

MIMII:      <snr>_<type>/<type>/id_XX/{normal,abnormal}/NNNNNNNN.wav
DCASE 2020: <type>/{train,test}/{normal,anomaly}_id_XX_NNNNNNNN.wav
The root may be the dataset folder or any folder inside it that still holds whole machines.
"""
from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass

from humwatch.agent.errors import ConfigError

_DCASE_NAME = re.compile(r"^(normal|anomaly)_(id_\d+)_.*\.wav$", re.IGNORECASE)
_MIMII_SNR = re.compile(r"^(-?\d+(?:\.\d+)?)_?dB_", re.IGNORECASE)


@dataclass(frozen=True)
class MachineClips:
    """One machine (type + id) and its clips, sorted by path so that splits are reproducible."""

    machine_type: str
    machine_id: str
    normal: tuple[pathlib.Path, ...]
    abnormal: tuple[pathlib.Path, ...]
    snr: str = ""  # MIMII's SNR folder prefix when the dataset holds several

    @property
    def name(self) -> str:
        base = f"{self.machine_type}/{self.machine_id}"
        return f"{self.snr} {base}" if self.snr else base


def find_machines(root: str | pathlib.Path) -> list[MachineClips]:
    """Every machine under root, in MIMII or DCASE 2020 layout; ConfigError when none or when one lacks a class."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: dataset folder not found")
    machines = _mimii(root) or _dcase(root)
    if not machines:
        raise ConfigError(f"{root}: no machines found; expected the MIMII layout "
                          "<snr>_<type>/<type>/id_XX/{normal,abnormal}/*.wav or the DCASE 2020 layout "
                          "<type>/{train,test}/{normal,anomaly}_id_XX_*.wav")
    return machines


def _wavs(folder: pathlib.Path) -> tuple[pathlib.Path, ...]:
    return tuple(sorted(p for p in folder.glob("*.wav") if p.is_file())) if folder.is_dir() else ()


def _mimii(root: pathlib.Path) -> list[MachineClips]:
    id_dirs = sorted({p.parent for p in root.rglob("*") if p.is_dir() and p.name in ("normal", "abnormal")
                      and p.parent.name.lower().startswith("id_")} | ({root} if root.name.startswith("id_") else set()))
    found = []
    for id_dir in id_dirs:
        normal, abnormal = _wavs(id_dir / "normal"), _wavs(id_dir / "abnormal")
        for label, clips in (("normal", normal), ("abnormal", abnormal)):
            if not clips:
                raise ConfigError(f"{id_dir / label}: no {label} clips (*.wav); the protocol needs both classes")
        snr_match = next((_MIMII_SNR.match(p.name) for p in id_dir.parents if _MIMII_SNR.match(p.name)), None)
        snr = f"{snr_match.group(1)} dB" if snr_match else ""
        found.append(MachineClips(id_dir.parent.name, id_dir.name, normal, abnormal, snr))
    if len({m.snr for m in found}) <= 1:  # one SNR: leave it out of the names
        found = [MachineClips(m.machine_type, m.machine_id, m.normal, m.abnormal) for m in found]
    return found


def _dcase(root: pathlib.Path) -> list[MachineClips]:
    groups: dict[tuple[str, str], dict[str, list[pathlib.Path]]] = {}
    for split_dir in sorted(p for p in [root, *root.rglob("*")] if p.is_dir() and p.name in ("train", "test")):
        for wav in _wavs(split_dir):
            match = _DCASE_NAME.match(wav.name)
            if match:
                label, machine_id = match.group(1).lower(), match.group(2).lower()
                entry = groups.setdefault((split_dir.parent.name, machine_id), {"normal": [], "anomaly": []})
                entry[label].append(wav)
    found = []
    for (machine_type, machine_id), clips in sorted(groups.items()):
        for label in ("normal", "anomaly"):
            if not clips[label]:
                raise ConfigError(f"{root}: machine {machine_type} {machine_id} has no {label}_{machine_id}_*.wav "
                                  "clips; the protocol needs both classes")
        found.append(MachineClips(machine_type, machine_id, tuple(sorted(clips["normal"])),
                                  tuple(sorted(clips["anomaly"]))))
    return found
