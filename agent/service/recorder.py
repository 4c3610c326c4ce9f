"""Keeps the sound around each raised alarm: a bounded pre-roll ring of recent samples, the alarms waiting for
their after-roll, and a writer thread that turns each into a WAV, a picture and an evidence folder.

The analysis thread only copies samples into the ring and, once an alarm's after-roll has arrived, one slice of
it into a small bounded queue: the alarm itself was queued in the outbox before any of this, and a slow or full disk
delays nothing but the evidence. When the queue or the disk is full, the evidence is skipped with one log line.
"""
from __future__ import annotations

import json
import logging
import pathlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from humwatch.agent.contract import SAMPLE_RATE
from humwatch.agent.errors import ModelError
from humwatch.agent.model.reference import load_normal_reference
from humwatch.agent.service.evidence import AUDIO, PICTURE, EvidenceStore, EvidenceTooLarge
from humwatch.agent.signal.picture import evidence_picture
from humwatch.agent.signal.png import encode_png
from humwatch.agent.signal.wav import to_pcm16, wav_bytes
from humwatch.agent.transport.messages import AlarmEvidence, AlarmMessage

log = logging.getLogger(__name__)

WRITE_QUEUE = 4  # alarms whose evidence may wait for the writer; more at once are skipped, never the alarm
STALL_GRACE = 5.0  # seconds past the after-roll's due time before what has arrived is kept (a stalled device)

Published = Callable[[AlarmEvidence, bytes, bytes], None]  # (evidence object, PNG, WAV) once a folder is written


class PreRoll:
    """The last `capacity` samples of the stream as int16 (2 bytes each), addressed by stream position."""

    def __init__(self, seconds: float) -> None:
        self._data = np.zeros(int(seconds * SAMPLE_RATE), np.int16)
        self.total = 0  # samples pushed since the start

    @property
    def oldest(self) -> int:
        return max(0, self.total - len(self._data))

    @property
    def nbytes(self) -> int:
        return self._data.nbytes

    def push(self, samples: np.ndarray) -> None:
        pcm = to_pcm16(samples)[-len(self._data):]
        start = (self.total + len(samples) - len(pcm)) % len(self._data)
        first = min(len(pcm), len(self._data) - start)
        self._data[start: start + first] = pcm[:first]
        self._data[: len(pcm) - first] = pcm[first:]
        self.total += len(samples)

    def take(self, start: int, stop: int) -> np.ndarray:
        """A copy of stream samples [start, stop) (start no earlier than `oldest`)."""
        start, stop = max(start, self.oldest), min(stop, self.total)
        index = np.arange(start, max(start, stop)) % len(self._data)
        return self._data[index]


@dataclass
class _Pending:
    alarm_id: str
    event: dict[str, Any]
    start: int  # stream position of the first kept sample
    decision: int  # stream position of the decision
    stop: int  # stream position after the after-roll
    due: float  # monotonic time by which the after-roll should have arrived
    bundle_dir: pathlib.Path | None


class EvidenceRecorder:
    """Pre-roll + after-roll around raised alarms, written by a background thread into an `EvidenceStore`."""

    def __init__(self, store: EvidenceStore, pre_seconds: float, post_seconds: float,
                 published: Published | None = None) -> None:
        self.store = store
        self.pre, self.post = int(pre_seconds * SAMPLE_RATE), int(post_seconds * SAMPLE_RATE)
        self.ring = self.ring_for(pre_seconds, post_seconds)
        self._published = published
        self._pending: list[_Pending] = []
        self._jobs: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE)
        self._writer = threading.Thread(target=self._write_loop, name="evidence-writer", daemon=True)
        self._writer.start()

    @staticmethod
    def ring_for(pre_seconds: float, post_seconds: float) -> PreRoll:
        """The ring an alarm's whole span fits in: its pre-roll must outlive the after-roll."""
        return PreRoll(pre_seconds + post_seconds + 1.0)

    def push(self, samples: np.ndarray, now: float) -> None:
        """Every chunk of the stream, in order (silence too: a dead microphone is evidence of itself)."""
        self.ring.push(samples)
        self.check(now)

    def alarm_raised(self, alarm: AlarmMessage, now: float, bundle_dir: pathlib.Path | None) -> AlarmEvidence:
        """Start keeping an alarm's sound; returns the evidence object for the alarm message (its sha256 follow
        on the evidence topic once the after-roll is written)."""
        position = self.ring.total
        self._pending.append(_Pending(alarm.id, json.loads(alarm.to_json()), max(self.ring.oldest, position - self.pre),
                                      position, position + self.post, now + self.post / SAMPLE_RATE + STALL_GRACE,
                                      bundle_dir))
        seconds = (min(position, self.pre) + self.post) / SAMPLE_RATE
        return AlarmEvidence(id=alarm.id, seconds=round(seconds, 3), files=(AUDIO, PICTURE))

    def check(self, now: float) -> None:
        """Hand every alarm whose after-roll is complete (or overdue) to the writer."""
        waiting = []
        for pending in self._pending:
            if self.ring.total >= pending.stop or now >= pending.due:
                self._hand_over(pending)
            else:
                waiting.append(pending)
        self._pending = waiting

    def _hand_over(self, pending: _Pending) -> None:
        samples = self.ring.take(pending.start, pending.stop)
        try:
            self._jobs.put_nowait((pending, samples))
        except queue.Full:
            log.warning("evidence for alarm %s skipped: %d earlier alarms are still being written (the alarm itself "
                        "is unaffected)", pending.alarm_id, WRITE_QUEUE)

    def close(self, timeout: float = 10.0) -> None:
        """Keep what has arrived of every pending alarm, then let the writer finish (at most `timeout` s)."""
        for pending in self._pending:
            self._hand_over(pending)
        self._pending = []
        self._jobs.put(None)
        self._writer.join(timeout)

    def _write_loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            pending, samples = job
            try:
                self._write(pending, samples)
            except EvidenceTooLarge as exc:
                log.warning("evidence for alarm %s skipped: %s ([evidence] max_mb)", pending.alarm_id, exc)
            except OSError as exc:
                log.warning("evidence for alarm %s skipped: cannot write in %s (%s); the alarm itself is unaffected",
                            pending.alarm_id, self.store.root, exc.strerror or exc)
            except Exception:  # noqa: BLE001 - evidence must never take the agent down
                log.exception("evidence for alarm %s skipped", pending.alarm_id)

    def _write(self, pending: _Pending, pcm: np.ndarray) -> None:
        decision = (pending.decision - max(pending.start, 0)) / SAMPLE_RATE
        samples = pcm.astype(np.float32) / 32768.0
        reference, caption = None, []
        if pending.bundle_dir is not None:
            try:
                found = load_normal_reference(pending.bundle_dir)
            except ModelError as exc:
                log.warning("evidence picture without the normal reference: %s", exc)
                found = None
            if found is not None:
                reference = found.db
                caption = ["TYPICAL NORMAL SOUND", f"MEDIAN OF {found.windows} CALIBRATION", "WINDOWS OF "
                           f"{found.seconds:.1f} S"]
        picture = encode_png(evidence_picture(samples, decision, picture_title(pending.alarm_id, pending.event),
                                              picture_readings(pending.event), reference, caption))
        audio = wav_bytes(pcm)
        seconds = round(len(pcm) / SAMPLE_RATE, 3)
        evidence = self.store.write(pending.alarm_id, {AUDIO: audio, PICTURE: picture},
                                    {"alarm": pending.event, "seconds": seconds, "decision_second": round(decision, 3),
                                     "sample_rate": SAMPLE_RATE})
        log.info("evidence for alarm %s kept: %.1f s of sound in %s", pending.alarm_id, seconds,
                 self.store.root / pending.alarm_id)
        if self._published is not None:
            self._published(evidence, picture, audio)


def picture_title(alarm_id: str, event: dict[str, Any]) -> str:
    kind = "MACHINE ANOMALY" if event.get("kind") == "anomaly" else "SENSOR FAULT"
    return f"{event.get('machine', '')} {kind} {event.get('time', '')} ID {alarm_id[:8]}".strip()


def picture_readings(event: dict[str, Any]) -> list[str]:
    """The lines beside the alarm's spectrogram: window score, threshold, each detector's reading, the reason."""
    score, threshold = event.get("window_score"), event.get("threshold")
    lines = [f"WINDOW SCORE {score:.3g}" if isinstance(score, (int, float)) else "WINDOW SCORE NONE",
             f"THRESHOLD    {threshold:.3g}" if isinstance(threshold, (int, float)) else "", ""]
    lines += [f"{name[:18]:<18} {value:.3g}" for name, value in (event.get("detector_scores") or {}).items()
              if isinstance(value, (int, float))]
    reason = str(event.get("reason", ""))
    lines += ["", *[reason[i: i + 38] for i in range(0, min(len(reason), 114), 38)]]
    return lines
