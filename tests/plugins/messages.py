"""Alarm messages for tests: complete and valid, with only the fields a test cares about given."""
from __future__ import annotations

from typing import Any

from humwatch.agent.transport.messages import AlarmMessage, ModelIds

MODEL = ModelIds(bundle="20261125T101500Z-3c9e1a", extractor="3f2a9c1e0b7d", detectors=("gmm",))


def an_alarm(machine: str = "pump-1", **fields: Any) -> AlarmMessage:
    """A raised anomaly alarm of `machine`; `fields` override any field (e.g. id, kind, window_score)."""
    values: dict[str, Any] = {"kind": "anomaly", "event": "raised", "window_score": 3.0, "threshold": 2.5,
                              "model": MODEL, "reason": "window score above the threshold", "audio_time": 30.0}
    return AlarmMessage(machine=machine, **(values | fields))
