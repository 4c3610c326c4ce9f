"""The JSON messages the agent publishes on `<prefix>/<machine>/alarm`, `state` and `score`, as typed objects.

The agent builds them, `humwatch listen` and the demo parse them, and docs/mqtt.md is generated from them: each
class is the one description of its message. `to_json` is the one encoder and `from_json` the one decoder, which
checks every field's type and refuses a message that lacks one; fields it does not know are skipped, so a listener
keeps reading messages from a newer agent. Every field is always sent (null when it has no value), so a subscriber
never meets a missing key. A new field with a default (e.g. `None`) is added without breaking older senders.
"""
from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, TypeVar

from humwatch.agent.errors import MessageError
from humwatch.agent.typed import documented, read

State = Literal["normal", "anomaly", "sensor_fault"]
M = TypeVar("M", bound="Message")


def utc_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. 2026-11-25T12:33:44.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_alarm_id() -> str:
    return uuid.uuid4().hex


def to_json(payload: Any) -> bytes:
    """Compact JSON; numpy scalars and arrays become plain numbers and lists."""
    def plain(value: Any) -> Any:
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return json.dumps(payload, default=plain, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, kw_only=True)
class Message:
    """What every message shares: its topic leaf, how it is sent, the encoder and the decoder."""

    TOPIC: ClassVar[str]  # the last topic level: <prefix>/<machine>/<TOPIC>
    QOS: ClassVar[int]
    RETAINED: ClassVar[bool]

    def to_json(self) -> bytes:
        return to_json(dataclasses.asdict(self))

    @classmethod
    def from_json(cls: type[M], payload: bytes | bytearray | str) -> M:
        """The message in a payload; a MessageError names every field at fault, one line each."""
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise MessageError(f"{cls.TOPIC} message: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise MessageError(f"{cls.TOPIC} message: must be a JSON object, not {data!r}")
        message, problems = read(cls, data, refuse_unknown=False)
        if problems:
            raise MessageError([p.under(cls.TOPIC) for p in problems])
        return message


@dataclass(frozen=True)
class ModelIds:
    """Which model judged."""

    bundle: str = documented(doc="the bundle's id")
    extractor: str = documented(doc="the first 12 hex digits of the feature extractor's sha256 ('none' without one)")
    detectors: tuple[str, ...] = documented(doc="the bundle's detectors, in its order")

    @classmethod
    def of(cls, ids: Mapping[str, Any]) -> ModelIds:
        """From a bundle's `model_ids`."""
        return cls(bundle=str(ids["bundle"]), extractor=str(ids["extractor"]), detectors=tuple(ids["detectors"]))


@dataclass(frozen=True, kw_only=True)
class AlarmEvidence:
    """The sound and picture the board keeps of a raised alarm ([evidence] on)."""

    id: str = documented(doc="the alarm's id: `humwatch evidence show ID` on the board shows it")
    seconds: float = documented(doc="seconds of sound kept around the decision")
    files: tuple[str, ...] = documented(doc="the files kept: 'audio.wav' and 'picture.png'")
    sha256: Mapping[str, str] | None = documented(
        None, doc="each file's sha256 (null in the alarm message: the files are written after it, when the "
                  "after-roll has been heard; given on the evidence topic)")


@dataclass(frozen=True, kw_only=True)
class AlarmMessage(Message):
    """An alarm raised or cleared: the machine sounds wrong (`anomaly`) or the microphone is at fault
    (`sensor_fault`). Sent at least once (de-duplicate by `id`), in order, never retained."""

    TOPIC, QOS, RETAINED = "alarm", 1, False  # QoS: [mqtt] alarm_qos (1 or 2)

    id: str = documented(factory=new_alarm_id, doc="unique id of this event (uuid4 hex): the key to de-duplicate on")
    machine: str = documented(doc="the machine's name (also in the topic)")
    time: str = documented(factory=utc_now, doc="when the agent decided (ISO 8601 UTC); not when it was delivered")
    kind: Literal["anomaly", "sensor_fault"] = documented(
        doc="'anomaly' (machine trouble, from the window score) or 'sensor_fault' (microphone trouble)")
    event: Literal["raised", "cleared"] = documented(
        doc="'raised' or 'cleared' (for a sensor fault: the fault started or ended)")
    window_score: float | None = documented(
        doc="the anomaly score of the 10 s window that decided (higher = more anomalous); for a sensor fault, the "
            "last one before it (null if none yet)")
    threshold: float = documented(
        doc="the threshold crossed: the high one for 'raised', the low (hysteresis) one for 'cleared'")
    detector_scores: Mapping[str, float] | None = documented(
        None, doc="anomaly events: each detector's reading of that window, in standard deviations of its held-out "
                  "normal patch scores, by detector name (null for a sensor fault). It says which part of the sound "
                  "moved: 'logmel-gmm' the spectrum, 'logmel-dynamics-gmm' its frame-to-frame change, 'cnn-gmm80' "
                  "the CNN's picture of the patch, 'timing' the shaft speed or cycle period")
    model: ModelIds = documented(doc="which model judged")
    reason: str = documented(doc="one short sentence for a person (for a sensor fault: 'silence', 'clipping' or "
                                 "'stalled' and detail)")
    audio_time: float = documented(doc="seconds of audio received since the agent started; for an anomaly, the end "
                                       "of the deciding window")
    evidence: AlarmEvidence | None = documented(
        None, doc="raised alarms with [evidence] on: the sound and picture kept on the board (null otherwise)")


@dataclass(frozen=True, kw_only=True)
class StateMessage(Message):
    """The machine's state, retained: the latest is re-sent on every (re)connect."""

    TOPIC, QOS, RETAINED = "state", 1, True

    state: State = documented(doc="'normal', 'anomaly' (the machine sounds wrong) or 'sensor_fault' (the microphone "
                                  "is silent, clipping or stalled: fix the sensor, not the machine)")
    detail: str | None = documented(None, doc="a short text, or null")
    machine_alarm: bool = documented(doc="whether the machine alarm is raised; stays true through a sensor fault "
                                         "that `state` shows instead")
    time: str = documented(factory=utc_now, doc="when the state changed (ISO 8601 UTC)")
    recalibration_suggested: bool = documented(
        False, doc="whether the daily window scores have drifted from calibration for [drift] days days running")
    recalibration_reason: str | None = documented(None, doc="why recalibration is suggested, or null")


@dataclass(frozen=True, kw_only=True)
class ScoreMessage(Message):
    """Score telemetry every `[alarm] score_interval` seconds of audio; dropped while offline."""

    TOPIC, QOS, RETAINED = "score", 0, False

    time: str = documented(factory=utc_now, doc="when it was sent (ISO 8601 UTC)")
    window_score: float = documented(doc="the latest window score (higher = more anomalous)")
    threshold: float = documented(doc="the high threshold that raises an alarm")
    detector_scores: Mapping[str, float] = documented(doc="each detector's reading of that window, by name")
    state: State = documented(doc="the machine's state when it was sent")
    audio_time: float = documented(doc="seconds of audio received since the agent started, at the window's end")
    drift: DriftToday | None = documented(None, doc="today's window score statistics, against which drift is judged")


@dataclass(frozen=True, kw_only=True)
class DayScores:
    """One UTC day's window scores (the machine alarm off), as the drift rules judge them."""

    day: str = documented(doc="the UTC date, YYYY-MM-DD")
    windows: int = documented(doc="windows scored that day")
    median: float | None = documented(doc="their median window score (null before the first)")
    p95: float | None = documented(doc="their 95th percentile (null before the first)")


@dataclass(frozen=True, kw_only=True)
class DriftToday(DayScores):
    """One UTC day's window scores (the machine alarm off), for the drift advice."""

    unit: str = documented("held-out SD", doc="the scores' unit: standard deviations of the held-out normal scores")
    baseline_median: float | None = documented(doc="the median held-out window score at calibration, or null")


@dataclass(frozen=True, kw_only=True)
class EvidenceMessage(AlarmEvidence, Message):
    """The last raised alarm's evidence, retained, once its files are written; its picture (PNG) and sound (WAV)
    follow, retained, on `evidence/image` and `evidence/audio` when [evidence] publishes them."""

    TOPIC, QOS, RETAINED = "evidence", 1, True

    time: str = documented(factory=utc_now, doc="when the evidence was written (ISO 8601 UTC)")
