"""A calibrated model bundle: everything the agent needs to judge one machine, written and swapped atomically.

On disk a bundle path (e.g. /var/lib/humwatch/pump1/bundle) is a symlink into `<path>.versions/<id>/`, holding
`bundle.json`, the detector `.npz` files and a copy of the feature extractor. A new calibration fills a fresh
version directory, fsyncs it, and replaces the symlink in one rename, so an interrupted calibration never touches
the bundle in use, and `rollback` points the link back at the previous version.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import pathlib
import shutil
import uuid
from dataclasses import dataclass
from typing import Callable

from humwatch.agent.contract import SCHEMA_VERSION, WINDOW_PATCHES, FrontEndParams
from humwatch.agent.durable import fsync_directory
from humwatch.agent.errors import ModelError
from humwatch.agent.model.known_answers import SUFFIX as KNOWN_ANSWERS_SUFFIX
from humwatch.agent.model.scorers import WINDOW_KINDS
from humwatch.agent.npz import read_json_object
from humwatch.agent.signal.frames import FRAME_SOURCES

MANIFEST = "bundle.json"
EXTRACTOR_FILE = "extractor.tflite"
MODULATION = "logmel-modulation"  # agent.signal.modulation, one row per patch
TONE = "fft-tone"  # agent.signal.tone, one row per patch
FEATURE_SOURCES = ("cnn", *FRAME_SOURCES, MODULATION, TONE)
FUSIONS = ("mean", "max")
KEEP_VERSIONS = 3


@dataclass(frozen=True)
class DetectorEntry:
    """One detector of a bundle; scores are standardised by the held-out normal score mean/std before fusion."""

    file: str
    kind: str
    feature_source: str
    score_mean: float = 0.0
    score_std: float = 1.0
    # Two-sided detector: its window reading is the window mean's distance from this centre (the held-out normal
    # window mean), so a window far *more* normal than normal counts too (agent.model.pipeline.window_reading).
    window_centre: float | None = None
    # What alarms, score messages and logs call this detector's reading: the calibration part it came from (two
    # readings of one file have two names). A bundle written before names existed gets the name calibration gives
    # (calibration.candidates.PARTS): the file's stem, "-2s" added for a two-sided reading.
    name: str = ""
    # A gated detector is not averaged with the others: its reading beyond `gate` (held-out standard deviations) is
    # added to their fused score (agent.model.pipeline.fuse_gated), as the timing detector's is. None: averaged.
    gate: float | None = None

    @property
    def window_level(self) -> bool:
        """Read on a window's mean features (nearest normal window), not as a mean of patch scores."""
        return self.kind in WINDOW_KINDS

    def __post_init__(self) -> None:
        if not self.name:
            two_sided = "-2s" if self.window_centre is not None else ""
            object.__setattr__(self, "name", pathlib.PurePath(self.file).stem + two_sided)


@dataclass(frozen=True)
class TimingEntry:
    """The bundle's timing detector (agent.model.timing): its file, and how many held-out standard deviations
    from normal
    timing a window must be before its distance adds to the fused score."""

    file: str
    gate: float


@dataclass(frozen=True)
class PipelineSpec:
    """What a bundle means: how the agent turns sound into a window score, and when that score alarms.

    Calibration builds one and writes `to_json()` into bundle.json; the agent reads it back with `from_json`, the one
    validator of a bundle's meaning, so the writer and the reader cannot disagree. Fields: the front end, the
    detectors with their standardisation, how their readings are fused, the cap on patch scores, the window length,
    the timing detector (opt-in presets), the thresholds and the feature extractor's sha256.
    """

    frontend: FrontEndParams
    detectors: tuple[DetectorEntry, ...]
    threshold_high: float
    threshold_low: float
    fusion: str = "mean"
    patch_score_cap: float | None = None  # each patch-level detector's standardised score is limited to this
    window_patches: int = WINDOW_PATCHES
    extractor_sha256: str | None = None
    timing: TimingEntry | None = None

    def to_json(self) -> dict:
        return {
            "frontend": self.frontend.to_dict(),
            "detectors": [_entry_json(e) for e in self.detectors],
            "fusion": self.fusion,
            "patch_score_cap": self.patch_score_cap,
            "window_patches": self.window_patches,
            "threshold": {"high": self.threshold_high, "low": self.threshold_low},
            "extractor": {"sha256": self.extractor_sha256} if self.extractor_sha256 else None,
            "timing": {"file": self.timing.file, "gate": self.timing.gate} if self.timing else None,
        }

    @classmethod
    def from_json(cls, m: dict, where: pathlib.Path | str) -> "PipelineSpec":
        """The spec in a bundle.json; every problem is a ModelError naming `where` and the field."""
        try:
            frontend = FrontEndParams.from_dict(_field(m, where, "frontend", dict))
        except ValueError as exc:
            raise ModelError(f"{where}: {exc}") from None
        high, low = _thresholds(m, where)
        entries = _entries(_field(m, where, "detectors", list), where)
        extractor = m.get("extractor")
        extractor_sha = extractor.get("sha256") if isinstance(extractor, dict) else None
        if any(e.feature_source == "cnn" for e in entries) and not isinstance(extractor_sha, str):
            raise ModelError(f"{where}: a CNN detector needs extractor.sha256")
        fusion = _field(m, where, "fusion", str, "mean")
        if fusion not in FUSIONS:
            raise ModelError(f"{where}: fusion {fusion!r} is not one of {FUSIONS}")
        cap = m.get("patch_score_cap")
        if cap is not None and not (_is_number(cap) and cap > 0):
            raise ModelError(f"{where}: patch_score_cap must be a positive number or null")
        window = _field(m, where, "window_patches", int, WINDOW_PATCHES)
        if window < 1:
            raise ModelError(f"{where}: window_patches must be at least 1")
        timing = _timing_entry(m.get("timing"), where, entries)
        if timing is not None and window != WINDOW_PATCHES:
            raise ModelError(f"{where}: the timing detector reads windows of {WINDOW_PATCHES} patches, not {window}")
        return cls(frontend=frontend, detectors=tuple(entries), threshold_high=high, threshold_low=low,
                   fusion=fusion, patch_score_cap=None if cap is None else float(cap), window_patches=window,
                   extractor_sha256=extractor_sha, timing=timing)


@dataclass(frozen=True)
class Bundle:
    """A bundle version on disk: where it is, which calibration made it, and its spec."""

    path: pathlib.Path  # the resolved version directory
    id: str
    machine: str
    spec: PipelineSpec
    manifest: dict  # all of bundle.json, calibration statistics included

    @property
    def extractor_path(self) -> pathlib.Path | None:
        return self.path / EXTRACTOR_FILE if self.spec.extractor_sha256 else None

    @property
    def model_ids(self) -> dict:
        """Short identifiers an alarm carries so a subscriber knows which model judged."""
        spec = self.spec
        return {"bundle": self.id, "extractor": (spec.extractor_sha256 or "none")[:12],
                "detectors": [d.kind + ("" if d.feature_source == "cnn" else f"@{d.feature_source}")
                              for d in spec.detectors] + ([TIMING_NAME] if spec.timing else [])}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Bundle":
        """Read and validate a bundle; every problem is a ModelError naming the file and field."""
        root = pathlib.Path(path)
        manifest_path = root / MANIFEST
        if not root.exists():
            raise ModelError(f"{root}: no bundle here (run `humwatch calibrate` first)")
        manifest = read_json_object(manifest_path, f"missing; {root} is not a calibrated bundle")
        _check_schema(manifest, manifest_path)
        return cls(path=root.resolve(), id=_field(manifest, manifest_path, "id", str),
                   machine=_field(manifest, manifest_path, "machine", str, ""),
                   spec=PipelineSpec.from_json(manifest, manifest_path), manifest=manifest)


def _check_schema(m: dict, where: pathlib.Path) -> None:
    if m.get("schema_version") != SCHEMA_VERSION:
        raise ModelError(f"{where}: schema_version {m.get('schema_version')!r} is not {SCHEMA_VERSION}; "
                         "recalibrate with this humwatch")


def _field(m: dict, where: pathlib.Path | str, name: str, kind: type | tuple, default=...):
    value = m.get(name, default)
    if value is ... or not isinstance(value, kind):
        raise ModelError(f"{where}: field {name!r} is missing or not {_kind_name(kind)}")
    return value


def _thresholds(m: dict, where: pathlib.Path | str) -> tuple[float, float]:
    threshold = _field(m, where, "threshold", dict)
    high, low = threshold.get("high"), threshold.get("low")
    if not all(_is_number(v) and math.isfinite(v) for v in (high, low)) or not low <= high:
        raise ModelError(f"{where}: threshold.high and threshold.low must be numbers with low <= high")
    return float(high), float(low)


def _entries(items: list, where: pathlib.Path | str) -> list[DetectorEntry]:
    entries: list[DetectorEntry] = []
    for i, d in enumerate(items):
        entry = _entry(d, f"{where}: detectors[{i}]")
        if any(e.name == entry.name for e in entries):
            raise ModelError(f"{where}: detectors[{i}] is named {entry.name!r} like an earlier detector (without "
                             "a name, a detector is named after its file)")
        entries.append(entry)
    if not entries:
        raise ModelError(f"{where}: the bundle has no detector")
    if all(e.gate is not None for e in entries):
        raise ModelError(f"{where}: every detector is gated; a bundle needs one whose readings are averaged")
    return entries


def _entry(d, where: str) -> DetectorEntry:
    try:
        if not isinstance(d, dict):
            raise TypeError("not an object")
        if "two_sided_centre" in d:
            raise ValueError("two_sided_centre is from an earlier humwatch (read per patch); recalibrate")
        numbers = {k: d[k] for k in _ENTRY_NUMBERS if k in d and not (k in _OPTIONAL_NUMBERS and d[k] is None)}
        bad = [f"{k} {v!r}" for k, v in numbers.items() if not (_is_number(v) and math.isfinite(v))]
        if bad:
            raise ValueError(f"{', '.join(bad)} is not a finite number")
        name = d.get("name", "")
        plain = isinstance(name, str) and name != "" and name.isprintable() and name.strip() == name
        if "name" in d and not plain:
            raise ValueError(f"name {name!r} is not a plain non-empty text")
        entry = DetectorEntry(file=str(d["file"]), kind=str(d["kind"]), feature_source=str(d["feature_source"]),
                              name=name, **{k: float(v) for k, v in numbers.items()})
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where} is malformed ({exc})") from None
    if entry.feature_source not in FEATURE_SOURCES or not entry.score_std > 0:
        raise ModelError(f"{where} has feature_source {entry.feature_source!r} "
                         f"(expected one of {FEATURE_SOURCES}) or a non-positive score_std")
    if entry.gate is not None and entry.gate < 0:
        raise ModelError(f"{where} has a negative gate")
    if entry.window_level and entry.window_centre is not None:
        raise ModelError(f"{where} is a window-level {entry.kind} detector and has no window_centre")
    if pathlib.PurePath(entry.file).name != entry.file:
        raise ModelError(f"{where}.file must be a file name inside the bundle")
    return entry


def _entry_json(entry: DetectorEntry) -> dict:
    data = {"file": entry.file, "kind": entry.kind, "feature_source": entry.feature_source,
            "score_mean": entry.score_mean, "score_std": entry.score_std, "name": entry.name}
    if entry.window_centre is not None:
        data["window_centre"] = entry.window_centre
    if entry.gate is not None:
        data["gate"] = entry.gate
    return data


_ENTRY_NUMBERS = ("score_mean", "score_std", "window_centre", "gate")
_OPTIONAL_NUMBERS = ("window_centre", "gate")
TIMING_NAME = "timing"  # the timing detector's reading in alarms and logs


def _timing_entry(section: object, where: pathlib.Path | str, entries: list[DetectorEntry]) -> TimingEntry | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ModelError(f"{where}: timing must be an object or null")
    file, gate = section.get("file"), section.get("gate")
    if not isinstance(file, str) or not file or pathlib.PurePath(file).name != file:
        raise ModelError(f"{where}: timing.file must be a file name inside the bundle")
    if not (isinstance(gate, (int, float)) and _is_number(gate) and math.isfinite(gate) and gate >= 0):
        raise ModelError(f"{where}: timing.gate must be a number of at least 0, not {gate!r}")
    if any(e.name == TIMING_NAME for e in entries):
        raise ModelError(f"{where}: a detector is named {TIMING_NAME!r}, the name of the timing reading")
    return TimingEntry(file, float(gate))


def _is_number(value) -> bool:
    """An int or float from JSON; not a bool, which Python counts as an int."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({dict: "an object", list: "a list", str: "a string", int: "an integer"}.get(k, k.__name__)
                       for k in kinds)


def write_bundle(link: str | os.PathLike, spec: PipelineSpec, details: dict, fill: Callable[[pathlib.Path], None],
                 extractor: str | os.PathLike | None = None,
                 known_answer: Callable[["Bundle"], dict] | None = None) -> pathlib.Path:
    """Write a new bundle version and make `link` point at it; the version in use until now stays for rollback.

    bundle.json holds `spec.to_json()` and the `details` beside it (machine, calibration statistics; a `threshold` or
    `extractor` object in `details` adds its fields to the spec's). `fill(directory)` saves the detector files the
    spec names. `known_answer(bundle)` computes, on the complete new version, what the agent must reproduce at start
    (stored as `known_answer`). The id, schema version, creation time and the previous version's id are added
    here. Returns the new version directory.
    """
    link = pathlib.Path(link)
    versions = versions_dir(link)
    versions.mkdir(parents=True, exist_ok=True)
    for leftover in versions.glob(".*.partial"):  # from a calibration killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    _adopt_plain_directory(link, versions)
    bundle_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    staging = versions / f".{bundle_id}.partial"
    staging.mkdir()
    try:
        if extractor is not None:
            for suffix in ("", ".json", KNOWN_ANSWERS_SUFFIX):  # known answers travel with the model they check
                if suffix != KNOWN_ANSWERS_SUFFIX or os.path.exists(f"{os.fspath(extractor)}{suffix}"):
                    shutil.copyfile(f"{os.fspath(extractor)}{suffix}", staging / f"{EXTRACTOR_FILE}{suffix}")
        fill(staging)
        if known_answer is not None:
            details = {**details, "known_answer": known_answer(_staged(staging, spec, details))}
        previous = current_version(link)
        full = {**details, **_merged(details, spec.to_json()), "schema_version": SCHEMA_VERSION, "id": bundle_id,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "previous": previous.name if previous else None}
        (staging / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        if PipelineSpec.from_json(full, staging / MANIFEST) != spec:  # never publish what the agent reads otherwise
            raise ModelError(f"{staging / MANIFEST}: the written spec does not read back as written")
        for item in staging.iterdir():
            _fsync_file(item)
        final = versions / bundle_id
        os.rename(staging, final)
        fsync_directory(versions)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _point(link, final)
    _prune(versions, keep={final.name, previous.name if previous else ""})
    return final


def _staged(staging: pathlib.Path, spec: PipelineSpec, details: dict) -> Bundle:
    return Bundle(path=staging, id=staging.name, machine=str(details.get("machine", "")), spec=spec, manifest={})


def _merged(details: dict, spec_json: dict) -> dict:
    """The spec's JSON, its threshold and extractor objects completed by the details' (fit statistics, model name)."""
    merged = dict(spec_json)
    for key in ("threshold", "extractor"):
        if isinstance(details.get(key), dict) and isinstance(spec_json.get(key), dict):
            merged[key] = {**details[key], **spec_json[key]}
    return merged


def rollback(link: str | os.PathLike) -> pathlib.Path:
    """Point `link` back at the version the current one replaced; if the current one is too damaged to say which,
    at the newest other version kept (a damaged bundle is when a rollback is needed most)."""
    link = pathlib.Path(link)
    current = current_version(link)
    if current is None:
        raise ModelError(f"{link}: there is no bundle to roll back")
    try:
        previous = json.loads((current / MANIFEST).read_text()).get("previous")
    except (OSError, ValueError, AttributeError):
        kept = _finished_versions(versions_dir(link))
        previous = next((p.name for p in kept if p.name != current.name), None)
    target = versions_dir(link) / str(previous)
    if not previous or not (target / MANIFEST).exists():
        raise ModelError(f"{link}: no previous bundle is kept to roll back to")
    Bundle.load(target)
    _point(link, target)
    return target


def current_version(link: pathlib.Path) -> pathlib.Path | None:
    return link.resolve() if link.is_symlink() and link.exists() else None


def versions_dir(link: pathlib.Path) -> pathlib.Path:
    """Where the versions of the bundle at `link` live (the link points into it)."""
    return link.with_name(link.name + ".versions")


def _adopt_plain_directory(link: pathlib.Path, versions: pathlib.Path) -> None:
    """A bundle copied in by hand as a plain directory becomes a kept version, so it can be rolled back to."""
    if link.is_dir() and not link.is_symlink():
        adopted = versions / f"adopted-{uuid.uuid4().hex[:6]}"
        os.rename(link, adopted)
        _point(link, adopted)


def _point(link: pathlib.Path, target: pathlib.Path) -> None:
    temporary = link.with_name(f".{link.name}.{uuid.uuid4().hex[:6]}.link")
    os.symlink(os.path.relpath(target, link.parent), temporary)
    os.replace(temporary, link)
    fsync_directory(link.parent)


def _finished_versions(versions: pathlib.Path) -> list[pathlib.Path]:
    """The complete version directories, newest first (a hidden one is a write in progress or killed)."""
    return sorted((p for p in versions.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime, reverse=True)


def _prune(versions: pathlib.Path, keep: set[str]) -> None:
    for old in _finished_versions(versions)[KEEP_VERSIONS:]:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)


def _fsync_file(path: pathlib.Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
