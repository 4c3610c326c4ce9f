"""`humwatch run`: the long-running agent that listens to one machine and reports over MQTT.

Wired in explicit steps, each failing fast with one line: config → bundle → pipeline (model warmed up) → outbox
and publisher → audio source. Then three threads share one stop event:
    capture thread  → bounded queue → analysis thread (pipeline → alarm policy / sensor health → publisher)
    paho's network thread (inside the publisher)
The main thread only waits for signals: SIGTERM/SIGINT stop cleanly (outbox kept, `offline` published), SIGHUP
reloads the bundle (after a new calibration) without dropping audio. systemd hears READY=1 once audio flows
through a live model, WATCHDOG=1 from the analysis loop, and a one-line STATUS=.

An unreachable broker at start is not fatal: the agent keeps listening, alarms wait in the outbox and the
publisher retries with capped backoff (it logs the reason once).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pathlib
import queue
import signal
import threading
import time
from datetime import datetime, timezone
from typing import Literal

# One BLAS thread, set before numpy loads: the analysis loop is one thread by design, and OpenBLAS's worker threads
# stall the many small matrix products of the Mel projection and the detectors on a busy board.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

from humwatch.agent.config import Config, load_config
from humwatch.agent.contract import SAMPLE_RATE
from humwatch.agent.errors import HumwatchError, ModelError
from humwatch.agent.model.bundle import Bundle
from humwatch.agent.model.pipeline import PatchScore, Pipeline, check_known_answer
from humwatch.agent.service.alarm import AlarmPolicy, ChunkStats, SensorEvent, SensorHealth
from humwatch.agent.service.capture import AudioSource, DeviceSource, open_source
from humwatch.agent.service.drift import DailyScoreStats
from humwatch.agent.service.evidence import EvidenceStore
from humwatch.agent.service.feedback import CommandHandler
from humwatch.agent.service.ownership import refuse_foreign_state
from humwatch.agent.service.recorder import EvidenceRecorder
from humwatch.agent.service.sdnotify import Notifier, watchdog_interval
from humwatch.agent.signal.frontend import clip_patches
from humwatch.agent.transport.messages import (
    AlarmEvidence,
    AlarmMessage,
    EvidenceMessage,
    ModelIds,
    ScoreMessage,
    State,
    StateMessage,
)
from humwatch.agent.transport.outbox import Outbox
from humwatch.agent.transport.publish import MqttPublisher, describe_detector_scores

log = logging.getLogger(__name__)

QUEUE_CHUNKS = 64  # chunks between capture and analysis (about 4 s of device audio) before capture waits
STATUS_EVERY = 2.0  # seconds between STATUS= lines
_END = None  # what the capture thread queues when a file source has ended


def load_pipeline(config: Config) -> Pipeline:
    """The bundle and its model, checked to belong together and run once, so a bad one fails at start."""
    bundle = Bundle.load(config.model.bundle)
    pipeline = Pipeline(bundle, num_threads=config.model.threads)
    try:
        pipeline.scorer.score(clip_patches(np.zeros(SAMPLE_RATE * 2, np.float32), bundle.spec.frontend))
    except (ValueError, IndexError) as exc:
        raise ModelError(f"{bundle.path}: the detectors do not fit the feature extractor ({exc})") from None
    check_known_answer(pipeline)
    return pipeline


class Analysis:
    """The analysis loop: audio chunks in, decisions and messages out. Runs on its own thread."""

    def __init__(self, config: Config, pipeline: Pipeline, publisher: MqttPublisher, source: AudioSource,
                 chunks: queue.Queue, stop: threading.Event, notifier: Notifier,
                 recorder: EvidenceRecorder | None = None) -> None:
        self.config, self.publisher, self.source = config, publisher, source
        self.chunks, self.stop, self.notifier = chunks, stop, notifier
        self.recorder = recorder  # keeps the sound around raised alarms; None: [evidence] enabled = false
        sensor = config.sensor
        self.health = SensorHealth(sensor.silence_dbfs, sensor.silence_seconds, sensor.clipping_fraction,
                                   sensor.clipping_seconds, sensor.stall_seconds)
        # Samples received since the start, and when the pipeline's stream began (a pipeline starts its clock at 0
        # after a silence, a stall or a reload): audio_time stays a position in the sound since the agent started.
        self._samples_in = 0
        self._set_pipeline(pipeline)
        self._next_pipeline: Pipeline | None = None
        self._swap = threading.Lock()
        self.state: State = "normal"
        self._state_stale = False
        self._gap = False  # silence or a stall interrupted the sound: the next sound starts a fresh window
        self.last_window_score: float | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._last_score_sent: float | None = None
        self._watchdog_every = min(1.0, watchdog_interval() or 1.0)
        self._last_watchdog = self._last_status = -float("inf")

    def _set_pipeline(self, pipeline: Pipeline) -> None:
        previous: AlarmPolicy | None = getattr(self, "policy", None)
        active = previous is not None and previous.active
        alarm = self.config.alarm
        self.pipeline = pipeline
        self._model_ids = ModelIds.of(pipeline.bundle.model_ids)
        self._stream_start = self._samples_in
        self.policy = AlarmPolicy(pipeline.bundle.spec.threshold_high, pipeline.bundle.spec.threshold_low,
                                  alarm.raise_after, alarm.clear_after)
        self.policy.active = active  # a raised alarm stays raised until the new model clears it
        previous_drift: DailyScoreStats | None = getattr(self, "drift", None)
        if previous_drift is not None:
            previous_drift.save()
        bundle = pipeline.bundle
        baseline = (bundle.manifest.get("calibration") or {}).get("heldout_score_median")  # absent: no median rule
        self.drift = DailyScoreStats(bundle.id, self.policy.threshold_high,
                                     float(baseline) if isinstance(baseline, (int, float)) else None,
                                     self.config.drift, self.config.state.dir / "drift.json")
        self._advice = self.drift.advice()

    def replace_pipeline(self, pipeline: Pipeline) -> None:
        """Hand over a new pipeline; the loop switches to it between two chunks."""
        with self._swap:
            self._next_pipeline = pipeline

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread, which exits non-zero
            log.exception("the analysis loop failed")
            self.error = exc
        finally:
            self.stop.set()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                chunk = self.chunks.get(timeout=0.25)
            except queue.Empty:
                chunk = None
            else:
                if chunk is _END:
                    log.info("the audio source has ended")
                    return
            now = time.monotonic()
            with self._swap:
                pipeline, self._next_pipeline = self._next_pipeline, None
            if pipeline is not None:
                self._set_pipeline(pipeline)
                log.info("now judging with bundle %s (threshold %.4g, clear %.4g)", pipeline.bundle.id,
                         self.policy.threshold_high, self.policy.threshold_low)
            events = self.health.check(now)
            if self.recorder is not None:
                if chunk is not None:
                    self.recorder.push(chunk, now)  # before judging: an alarm's pre-roll ends with this chunk
                else:
                    self.recorder.check(now)
            if chunk is not None:
                events += self.health.observe(now, ChunkStats.of(chunk, SAMPLE_RATE))
                self._gap |= any(e.reason == "stalled" for e in events)
                self._judge(chunk)
                if not self.ready.is_set():
                    self.ready.set()
                    self.notifier.ready(self.status_line())
            for event in events:
                self._sensor_event(event)
            self._update_state()
            self._heartbeat(now)

    def _judge(self, chunk: np.ndarray) -> None:
        """Score the machine's sound. Silence is not the machine's sound: it is left out, and after a silence or a
        stall a fresh window starts, so a dead microphone never reads as a machine anomaly."""
        received, self._samples_in = self._samples_in, self._samples_in + len(chunk)
        if self.health.silent:
            self._gap = True
            return
        if self._gap:
            self._gap = False
            self.pipeline.reset()
            self._stream_start = received
        for result in self.pipeline.push(chunk):
            self._decide(result)

    def _decide(self, result: PatchScore) -> None:
        if result.window_score is None:
            return
        audio_time, window_score = self._stream_start / SAMPLE_RATE + result.time, result.window_score
        self.last_window_score = window_score
        self._maybe_send_score(audio_time, window_score, result.readings)
        if self.health.faults:
            return  # the sound of a broken sensor says nothing about the machine
        if not self.policy.active:
            self._observe_drift(window_score)
        event = self.policy.update(audio_time, window_score)
        if event is None:
            return
        if event.kind == "raised":
            reason = f"window score above the threshold for {event.consecutive} decisions in a row"
        else:
            reason = f"window score below the clear threshold for {event.consecutive} decisions in a row"
        level = logging.WARNING if event.kind == "raised" else logging.INFO  # as a sensor fault and its recovery
        log.log(level, "machine anomaly %s at %.1f s of audio: window score %.4g, threshold %.4g (%s)", event.kind,
                audio_time, window_score, event.threshold, describe_detector_scores(result.readings))
        self._send_alarm(AlarmMessage(
            machine=self.config.machine.name, kind="anomaly", event=event.kind, window_score=window_score,
            threshold=event.threshold, detector_scores=result.readings, model=self._model_ids, reason=reason,
            audio_time=round(audio_time, 3)))

    def _sensor_event(self, event: SensorEvent) -> None:
        kind: Literal["raised", "cleared"] = "raised" if event.kind == "fault" else "cleared"
        level = logging.WARNING if kind == "raised" else logging.INFO
        log.log(level, "sensor %s %s: %s", event.reason, "fault" if kind == "raised" else "recovered", event.detail)
        self._send_alarm(AlarmMessage(
            machine=self.config.machine.name, kind="sensor_fault", event=kind, window_score=self.last_window_score,
            threshold=self.policy.threshold_high, model=self._model_ids, reason=f"{event.reason}: {event.detail}",
            audio_time=round(self._samples_in / SAMPLE_RATE, 3)))

    def _send_alarm(self, alarm: AlarmMessage) -> None:
        """Queue an alarm in the outbox; a raised one also starts keeping its evidence, which is written later on
        the recorder's thread (the alarm never waits for it)."""
        if self.recorder is not None and alarm.event == "raised":
            evidence = self.recorder.alarm_raised(alarm, time.monotonic(), self.pipeline.bundle.path)
            alarm = dataclasses.replace(alarm, evidence=evidence)
        self.publisher.publish_alarm(alarm)

    def _observe_drift(self, window_score: float) -> None:
        if not self.drift.add(window_score, datetime.now(timezone.utc)):
            return  # the advice changes only when a day is completed
        advice = self.drift.advice()
        if advice != self._advice:
            self._advice = advice
            if advice[0]:
                log.warning("recalibration suggested: %s", advice[1])
            self._state_stale = True  # the state message carries the advice: send it again

    def _update_state(self) -> None:
        state: State
        detail: str | None
        if self.health.faults:
            state, detail = "sensor_fault", ", ".join(sorted(self.health.faults))
        elif self.policy.active:
            state, detail = "anomaly", f"window score {self.last_window_score:.4g}"
        else:
            state, detail = "normal", None
        if state != self.state or self._state_stale:
            self.state, self._state_stale = state, False
            self.publisher.publish_state(self.state_message(state, detail))
            self._last_status = -float("inf")

    def state_message(self, state: State = "normal", detail: str | None = None) -> StateMessage:
        """The state as published, with the drift advice."""
        suggested, reason = self._advice
        return StateMessage(state=state, detail=detail, machine_alarm=self.policy.active,
                            recalibration_suggested=suggested, recalibration_reason=reason)

    def _maybe_send_score(self, audio_time: float, window_score: float, readings: dict[str, float]) -> None:
        interval = self.config.alarm.score_interval
        if interval <= 0 or (self._last_score_sent is not None and audio_time - self._last_score_sent < interval):
            return
        self._last_score_sent = audio_time
        self.publisher.publish_score(ScoreMessage(
            window_score=window_score, threshold=self.policy.threshold_high, detector_scores=readings,
            state=self.state, audio_time=round(audio_time, 3), drift=self.drift.today()))

    def _heartbeat(self, now: float) -> None:
        if now - self._last_watchdog >= self._watchdog_every:
            self._last_watchdog = now
            self.notifier.watchdog()
        if now - self._last_status >= STATUS_EVERY:
            self._last_status = now
            self.notifier.status(self.status_line())

    def status_line(self) -> str:
        score = "none yet" if self.last_window_score is None else f"{self.last_window_score:.3g}"
        faults = f" ({', '.join(sorted(self.health.faults))})" if self.health.faults else ""
        return (f"{self.state}{faults}; window score {score} (threshold {self.policy.threshold_high:.3g}); "
                f"pending alarms {self.publisher.pending_alarms()}; overflows {self.source.overflows}; "
                f"mqtt {'connected' if self.publisher.connected else 'not connected'}")


def open_evidence_store(config: Config) -> EvidenceStore | None:
    """The evidence store, or None when evidence is off or its folder cannot be made (alarms go on without)."""
    if not config.evidence.enabled:
        return None
    try:
        return EvidenceStore(config.state.dir, config.evidence.max_bytes, writer=True)
    except OSError as exc:
        log.warning("evidence is not kept: cannot use %s (%s)", config.state.dir / "evidence", exc.strerror or exc)
        return None


def capture(source: AudioSource, chunks: queue.Queue, stop: threading.Event, errors: list) -> None:
    """The capture thread: move chunks from the source into the bounded queue, waiting when it is full."""
    try:
        for chunk in source:
            while not stop.is_set():
                try:
                    chunks.put(chunk, timeout=0.25)
                    break
                except queue.Full:
                    continue
        if not stop.is_set():
            chunks.put(_END)
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread, which exits non-zero
        log.error("audio capture failed: %s", exc)
        errors.append(exc)
        stop.set()


class Agent:
    """Owns the parts of one running agent and the order they start and stop in."""

    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.pipeline = load_pipeline(config)
        bundle = self.pipeline.bundle
        log.info("machine %s: bundle %s (%s), threshold %.4g, clear %.4g", config.machine.name, bundle.id,
                 ", ".join(bundle.model_ids["detectors"]), bundle.spec.threshold_high, bundle.spec.threshold_low)
        self.outbox = Outbox(config.state.outbox)
        store = open_evidence_store(config)
        self.publisher = MqttPublisher(config.mqtt, self.outbox, config.machine.name, evidence=store is not None,
                                       on_command=CommandHandler(store) if store is not None else None)
        self.recorder = None
        if store is not None:
            self.recorder = EvidenceRecorder(store, config.evidence.pre_seconds, config.evidence.post_seconds,
                                             self._publish_evidence)
        self.source = open_source(config.audio, self.stop)
        self.chunks: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self.capture_errors: list[BaseException] = []
        self.analysis = Analysis(config, self.pipeline, self.publisher, self.source, self.chunks, self.stop,
                                 self.notifier, self.recorder)

    def _publish_evidence(self, evidence: AlarmEvidence, picture: bytes, audio: bytes) -> None:
        settings = self.config.evidence
        send_audio = settings.publish_audio and len(audio) <= settings.audio_max_kb * 1000
        if settings.publish_audio and not send_audio:
            log.info("evidence %s: the WAV (%d kB) is over [evidence] audio_max_kb; kept on the board only",
                     evidence.id, len(audio) // 1000)
        self.publisher.publish_evidence(EvidenceMessage(**dataclasses.asdict(evidence)),
                                        picture if settings.publish_image else None, audio if send_audio else None)

    def run(self) -> int:
        """Run until stopped; returns the exit status (raises the error that stopped it, if any)."""
        if isinstance(self.source, DeviceSource):
            self.source.open()  # a missing or refusing microphone fails here, before any thread runs
        self.publisher.start()
        self.publisher.publish_state(self.analysis.state_message())
        threads = [threading.Thread(target=self.analysis.run, name="analysis", daemon=True),
                   threading.Thread(target=capture, args=(self.source, self.chunks, self.stop, self.capture_errors),
                                    name="capture", daemon=True)]
        for thread in threads:
            thread.start()
        log.info("listening to %s", self.source.describe())
        try:
            while not self.stop.wait(0.25):
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload()
        finally:
            self.shutdown(threads)
        for error in self.capture_errors + [self.analysis.error]:
            if isinstance(error, HumwatchError):
                raise error
            if error is not None:
                return 1
        return 0

    def reload(self) -> None:
        """Load the bundle again (SIGHUP); on failure keep judging with the current one."""
        log.info("reloading the bundle %s", self.config.model.bundle)
        try:
            pipeline = load_pipeline(self.config)
        except HumwatchError as exc:
            log.error("reload failed, keeping bundle %s: %s", self.analysis.pipeline.bundle.id, exc)
            return
        self.analysis.replace_pipeline(pipeline)

    def shutdown(self, threads: list[threading.Thread]) -> None:
        log.info("stopping")
        self.stop.set()
        for thread in threads:
            thread.join(10)
        self.notifier.stopping()
        if self.recorder is not None:
            self.recorder.close()  # what has arrived of a pending alarm's after-roll is kept
        self.analysis.drift.save()
        self.publisher.stop()
        self.outbox.close()
        self.notifier.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=pathlib.Path, required=True, help="the agent's TOML configuration file")


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload while starting must not kill the agent
    config = load_config(args.config)
    refuse_foreign_state(config.state.dir, args.config, args.config.stem)  # humwatch@<stem> reads <stem>.toml
    agent = Agent(config)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop.set())
    signal.signal(signal.SIGHUP, lambda *_: agent.reload_requested.set())
    return agent.run()
