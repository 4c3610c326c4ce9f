"""Find the sections of a DCASE 2021–2025 task 2 dataset folder: the official train/test split, as given.

    <type>/{train,test}/section_XX_{source,target}_{train,test}_{normal,anomaly}_NNNN[_attributes].wav
    <type>/attributes_XX.csv   (optional: file_name + attribute columns, as the challenge ships it)

A section is one machine (type + section number). Its clips carry their domain (source: the conditions most
training clips come from; target: the shifted conditions with few training clips) and an attribute group (car
model, speed, microphone, ...) that `--train-minutes` spreads its choice over.
"""
from __future__ import annotations

import csv
import pathlib
import re
from dataclasses import dataclass

import numpy as np

from humwatch.agent.errors import ConfigError

NAME = re.compile(r"^section_(\d+)_(source|target)_(train|test)_(normal|anomaly)_(\d+)(?:_(.+))?\.wav$",
                  re.IGNORECASE)
ANY_SECTION = re.compile(r"^section_\d+_", re.IGNORECASE)
DOMAINS = ("source", "target")


@dataclass(frozen=True)
class Clip:
    path: pathlib.Path
    domain: str  # "source" or "target"
    anomalous: bool
    attributes: str  # the attribute group, e.g. "car_B1_spd_31V_mic_1" ("" when the data give none)


@dataclass(frozen=True)
class Section:
    """One machine of the official split: its training clips (all normal) and its labelled test clips."""

    machine_type: str
    section: str  # "00"
    train: tuple[Clip, ...]
    test: tuple[Clip, ...]

    @property
    def name(self) -> str:
        return f"{self.machine_type}/section_{self.section}"

    @property
    def labels(self) -> np.ndarray:
        """1 = anomalous, in the order of .test."""
        return np.array([c.anomalous for c in self.test], dtype=int)

    @property
    def domains(self) -> np.ndarray:
        return np.array([c.domain for c in self.test])


def find_sections(root: str | pathlib.Path) -> list[Section]:
    """Every section under root in the DCASE 2021–2025 layout ([] when root holds none); ConfigError, naming the
    file or folder, when the layout is there but unusable (a test split without both classes, an anomalous
    training clip, a train/test mix-up, an unreadable attributes table)."""
    root = pathlib.Path(root)
    found: dict[tuple[pathlib.Path, str], dict[str, list[Clip]]] = {}
    split_dirs = sorted(p for p in [root, *root.rglob("*")] if p.is_dir() and p.name in ("train", "test"))
    for split_dir in split_dirs:
        wavs = sorted(p for p in split_dir.glob("*.wav") if ANY_SECTION.match(p.name))
        if not wavs:
            continue
        attributes = _attribute_table(split_dir.parent)
        for wav in wavs:
            clip, section, split = _clip(wav, attributes)
            if split != split_dir.name:
                raise ConfigError(f"{wav}: a {split} clip in the {split_dir.name}/ folder")
            if split == "train" and clip.anomalous:
                raise ConfigError(f"{wav}: an anomalous clip in train/; training must be normal sound only")
            found.setdefault((split_dir.parent, section), {"train": [], "test": []})[split].append(clip)
    sections = []
    for (type_dir, section), clips in sorted(found.items()):
        where = f"{type_dir} section_{section}"
        if not clips["train"]:
            raise ConfigError(f"{where}: no training clips in {type_dir / 'train'}")
        labels = {c.anomalous for c in clips["test"]}
        if labels != {False, True}:
            raise ConfigError(f"{where}: the test clips in {type_dir / 'test'} need both normal and anomaly "
                              "clips (section_XX_<domain>_test_{normal,anomaly}_NNNN.wav)")
        sections.append(Section(type_dir.name, section, tuple(clips["train"]), tuple(clips["test"])))
    return sections


def _clip(wav: pathlib.Path, attributes: dict[str, str]) -> tuple[Clip, str, str]:
    match = NAME.match(wav.name)
    if not match:
        raise ConfigError(f"{wav}: not a DCASE 2021–2025 clip name; expected "
                          "section_XX_{source,target}_{train,test}_{normal,anomaly}_NNNN[_attributes].wav")
    section, domain, split, label, _, from_name = match.groups()
    group = attributes.get(wav.name, from_name or "")
    return Clip(wav, domain.lower(), label.lower() == "anomaly", group), section, split.lower()


def _attribute_table(type_dir: pathlib.Path) -> dict[str, str]:
    """{clip file name: attribute group} from the type folder's attributes_XX.csv tables (empty when none)."""
    groups: dict[str, str] = {}
    for table in sorted(type_dir.glob("attributes_*.csv")):
        try:
            with open(table, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"{table}: unreadable attributes table ({exc})") from None
        if rows and "file_name" not in rows[0]:
            raise ConfigError(f"{table}: no file_name column; expected file_name followed by attribute columns")
        for row in rows:
            name = pathlib.PurePosixPath(row.pop("file_name") or "").name
            groups[name] = "_".join(v for v in row.values() if v is not None and v != "")
    return groups
