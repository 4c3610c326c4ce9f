

"""`humwatch run` end to end: a real ALSA capture device, real TFLite models, a real mosquitto broker.

The bundle is calibrated (with `calibration.calibrate`, the code `humwatch calibrate` runs) on the shared DCASE
normal clips. Normal sound for a run is one of those clips played forwards then backwards, over and over, so the
stream has no splice between different recordings (a splice is itself an abrupt change a detector rightly flags).
The fault is the shared DCASE anomalous recording of the same machine, played the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from humwatch.agent.model.bundle import Bundle, write_bundle
from humwatch.agent.signal.audio import read_wav
from tests.plugins.notify import NotifySocket

REPO = pathlib.Path(__file__).resolve().parents[2]


SPEED = 3.0  # the capture device plays three times faster than real time


FAULT_ONSET = 30.0  # seconds of normal sound before the fault


WINDOW_SECONDS = 10.24 + 0.512  # the first window ends after 18 patches


LATENCY_GOAL = WINDOW_SECONDS + 2.0  # an alarm must be decided within one window + 2 s of the fault onset


@pytest.fixture(scope="session")
def dcase(shared_dir) -> pathlib.Path:
    return shared_dir / "audio" / "dcase2020-id00"


@pytest.fixture(scope="session")
def agent_bundle(tmp_path_factory, squeezenet_int8, dcase) -> Bundle:
    from humwatch.calibration.calibrate import calibrate
    from humwatch.calibration.collect import wav_blocks

    link = tmp_path_factory.mktemp("bundle") / "pump1"
    # the paper's pipeline: these tests are about the service, not about which pipeline a machine gets
    calibrate(wav_blocks([dcase / "train"]), squeezenet_int8, link, preset="paper", machine="pump1", report=False)
    return Bundle.load(link)


def back_and_forth(clip: np.ndarray, seconds: float) -> np.ndarray:
    """The clip forwards, backwards, forwards...: continuous sound without a splice, `seconds` long."""
    n = int(seconds * 16000)
    reps = -(-n // (2 * len(clip)))
    return np.tile(np.concatenate([clip, clip[::-1]]), reps)[:n]


@pytest.fixture(scope="session")
def normal_clip(dcase) -> np.ndarray:
    return read_wav(dcase / "train" / "normal_id_00_00000000.wav")


@pytest.fixture(scope="session")
def fault_clip(dcase) -> np.ndarray:
    return read_wav(dcase / "test" / "anomaly_id_00_00000000.wav")


class AgentProcess:
    """`humwatch run` as a subprocess with its own config; stderr goes to a log file."""

    def __init__(self, directory: pathlib.Path, env: dict, bundle: pathlib.Path, broker, **sections) -> None:
        self.directory = directory
        self.config = directory / "humwatch.toml"
        settings = {
            "machine": {"name": "pump1"},
            "model": {"bundle": str(bundle)},
            "audio": {"device": "humwatch_test"},
            "alarm": {"score_interval": 2.0},
            "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
            "state": {"dir": str(directory / "state")},
        }
        for name, values in sections.items():
            settings.setdefault(name, {}).update(values)
        self.config.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
                                       for name, values in settings.items()))
        self.env = {**env, "PYTHONPATH": str(REPO)}
        self.log_path = directory / "agent.log"
        self.process: subprocess.Popen | None = None

    def start(self, notify: NotifySocket | None = None, journal: bool = False) -> "AgentProcess":
        """journal: tell the agent its stderr is the journal, as systemd does (JOURNAL_STREAM=device:inode)."""
        env = dict(self.env)
        if notify is not None:
            env["NOTIFY_SOCKET"] = notify.name
        self.log_path.touch()
        if journal:
            stat = self.log_path.stat()
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "humwatch", "run", "--config", str(self.config)],
                                            env=env, cwd=REPO, stdout=log, stderr=log)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            if self.process.poll() is not None:
                pytest.fail(f"the agent exited ({self.process.returncode}) before logging {pattern!r}:\n{self.log()}")
            time.sleep(0.1)
        pytest.fail(f"the agent did not log {pattern!r} within {timeout} s:\n{self.log()}")

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def agents(tmp_path):
    started: list[AgentProcess] = []

    def make(*args, **kwargs) -> AgentProcess:
        directory = tmp_path / f"agent{len(started)}"
        directory.mkdir()
        agent = AgentProcess(directory, *args, **kwargs)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        if agent.process is not None and agent.process.poll() is None:
            agent.kill()


def alarms(subscriber, kind: str = "anomaly") -> list[dict]:
    return [m.json() for m in subscriber.on("humwatch/pump1/alarm") if m.json()["kind"] == kind]


def test_fault_alarm_end_to_end_with_systemd_notify_and_clean_stop(
        alsa_device, mosquitto, subscribe, agents, agent_bundle, normal_clip, fault_clip):
    device = alsa_device(speed=SPEED)
    after = 35.0
    device.play(np.concatenate([back_and_forth(normal_clip, FAULT_ONSET), back_and_forth(fault_clip, 20.0),
                                back_and_forth(normal_clip, after)]))
    subscriber = subscribe(["humwatch/pump1/#"])
    notify = NotifySocket()
    try:
        agent = agents(device.env, agent_bundle.path, mosquitto).start(notify, journal=True)
        subscriber.wait_for(lambda msgs: len([m for m in msgs if m.topic.endswith("/alarm")
                                              and m.json()["event"] == "cleared"]) >= 1, timeout=120)
        # After the audio, the device delivers digital silence: a dead microphone, not a machine fault.
        subscriber.wait_for(lambda msgs: any(m.topic.endswith("/alarm") and m.json()["kind"] == "sensor_fault"
                                             for m in msgs), timeout=60)
        assert agent.terminate() == 0
    finally:
        notify.close()

    anomalies = alarms(subscriber)
    assert len(anomalies) == 2, [(a["event"], a["audio_time"], a["window_score"]) for a in anomalies]
    raised, cleared = anomalies
    assert (raised["event"], cleared["event"]) == ("raised", "cleared")
    assert re.fullmatch(r"[0-9a-f]{32}", raised["id"]) and raised["id"] != cleared["id"]
    assert raised["machine"] == "pump1" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", raised["time"])
    assert raised["threshold"] == pytest.approx(agent_bundle.spec.threshold_high)
    assert raised["window_score"] > agent_bundle.spec.threshold_high
    assert cleared["threshold"] == pytest.approx(agent_bundle.spec.threshold_low)
    assert cleared["window_score"] < agent_bundle.spec.threshold_low
    assert raised["model"] == agent_bundle.model_ids
    # the paper's bundle has one detector: its reading is the window score
    assert raised["detector_scores"] == {"cnn-gmm80": pytest.approx(raised["window_score"])}
    assert "3 decisions in a row" in raised["reason"]
    # Normal sound before the fault raised nothing; the fault was decided within one window + 2 s of its onset.
    assert FAULT_ONSET < raised["audio_time"] <= FAULT_ONSET + LATENCY_GOAL
    scores = [m.json() for m in subscriber.on("humwatch/pump1/score")]
    before = [s["window_score"] for s in scores if s["audio_time"] < FAULT_ONSET]
    assert all(s["detector_scores"] == {"cnn-gmm80": pytest.approx(s["window_score"])} for s in scores)
    assert len(before) >= 5 and max(before) < agent_bundle.spec.threshold_high

    sensor = alarms(subscriber, "sensor_fault")
    assert sensor[0]["event"] == "raised" and sensor[0]["reason"].startswith("silence")
    assert sensor[0]["audio_time"] > cleared["audio_time"]
    assert sensor[0]["detector_scores"] is None  # the sound of a dead microphone, not the machine's
    states = [(m.json()["state"], m.json()["machine_alarm"]) for m in subscriber.on("humwatch/pump1/state")]
    assert states[-4:] == [("normal", False), ("anomaly", True), ("normal", False), ("sensor_fault", False)]
    status = [m.text for m in subscriber.on("humwatch/pump1/status")]
    assert status[0] == "online" and status[-1] == "offline"

    assert "READY=1" in notify.lines and "WATCHDOG=1" in notify.lines and notify.lines[-1] == "STOPPING=1"
    # journald's priorities: `journalctl -p warning` shows the raise and the sensor fault, not the routine lines
    log = agent.log().splitlines()
    unmarked = [line for line in log if re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line)]
    assert not unmarked and any(line.startswith("<6>INFO ") for line in log), unmarked  # (TFLite writes its own)
    warnings = [line for line in log if re.match(r"<[0-4]>", line)]
    assert any(line.startswith("<4>WARNING humwatch.agent.service.run: machine anomaly raised") for line in warnings), log
    assert any("sensor silence fault" in line for line in warnings), warnings
    assert all(re.match(r"<4>WARNING |<3>ERROR ", line) for line in warnings), warnings
    assert any(line.startswith("<6>INFO humwatch.agent.service.run: machine anomaly cleared") for line in log)
    assert notify.lines.index("READY=1") < notify.lines.index("WATCHDOG=1")
    assert any(re.match(r"STATUS=\w+; window score [-0-9.e]+ \(threshold [-0-9.e]+\); pending alarms \d+; "
                        r"overflows \d+; mqtt connected", line) for line in notify.lines), notify.lines
    assert any(line.startswith("STATUS=sensor_fault (silence); window score") for line in notify.lines)


def test_stalled_device_is_a_sensor_fault_and_does_not_block_the_stop(
        alsa_device, mosquitto, subscribe, agents, agent_bundle, normal_clip):
    device = alsa_device(speed=SPEED)
    device.play(back_and_forth(normal_clip, 300.0))
    subscriber = subscribe(["humwatch/pump1/alarm", "humwatch/pump1/status"])
    agent = agents(device.env, agent_bundle.path, mosquitto, sensor={"stall_seconds": 2.0}).start()
    agent.wait_log("listening to device", timeout=60)
    device.pause()  # the device delivers nothing more: a hung driver or a pulled USB microphone
    subscriber.wait_for(lambda msgs: any(m.topic.endswith("/alarm") for m in msgs), timeout=60)
    assert agent.terminate() == 0
    fault = subscriber.on("humwatch/pump1/alarm")[0].json()
    assert (fault["kind"], fault["event"]) == ("sensor_fault", "raised") and fault["reason"].startswith("stalled")
    assert subscriber.on("humwatch/pump1/status")[-1].text == "offline"
    assert "did not stop within" in agent.log()


def test_broker_down_at_start_and_during_the_fault_alarm_arrives_exactly_once(
        alsa_device, mosquitto, subscribe, agents, agent_bundle, normal_clip, fault_clip):
    device = alsa_device(speed=SPEED)
    subscriber = subscribe(["humwatch/pump1/alarm"])  # a persistent session: the broker keeps its alarms
    mosquitto.stop()
    device.play(np.concatenate([back_and_forth(normal_clip, FAULT_ONSET), back_and_forth(fault_clip, 20.0),
                                back_and_forth(normal_clip, 40.0)]))
    agent = agents(device.env, agent_bundle.path, mosquitto).start()
    queued = agent.wait_log(r"alarm ([0-9a-f]{32}) \(anomaly\) queued", timeout=120)
    agent.wait_log(r"machine anomaly cleared", timeout=120)  # raised and cleared, both while the broker is away
    mosquitto.start()
    agent.wait_log(r"delivered \(PUBACK\), 0 pending", timeout=60)
    received = subscriber.wait_for(lambda msgs: len(msgs) >= 2, timeout=30)
    assert agent.terminate() == 0
    ids = [m.json()["id"] for m in subscriber.messages]
    assert ids[0] == queued.group(1)
    assert len(ids) == len(set(ids)), f"an alarm arrived twice: {ids}"
    assert [m.json()["event"] for m in received if m.json()["kind"] == "anomaly"][:2] == ["raised", "cleared"]
    log = agent.log()
    assert log.count(f"cannot connect to {mosquitto.host}:{mosquitto.port}") == 1  # said once, clearly


def test_alarm_pending_when_the_agent_is_killed_is_delivered_after_restart(
        alsa_device, mosquitto, subscribe, agents, agent_bundle, normal_clip, fault_clip):
    device = alsa_device(speed=SPEED)
    subscriber = subscribe(["humwatch/pump1/alarm"])
    mosquitto.stop()
    device.play(np.concatenate([back_and_forth(normal_clip, FAULT_ONSET), back_and_forth(fault_clip, 20.0),
                                back_and_forth(normal_clip, 60.0)]))
    agent = agents(device.env, agent_bundle.path, mosquitto).start()
    queued = agent.wait_log(r"alarm ([0-9a-f]{32}) \(anomaly\) queued", timeout=120).group(1)
    agent.kill()  # SIGKILL: no flush, no goodbye
    mosquitto.start()
    restarted = agent.start()
    restarted.wait_log(rf"alarm {queued} delivered \(PUBACK\)", timeout=60)
    subscriber.wait_for(lambda msgs: any(m.json()["id"] == queued for m in msgs), timeout=30)
    assert restarted.terminate() == 0
    first = [m.json() for m in subscriber.messages][0]
    assert (first["id"], first["kind"], first["event"]) == (queued, "anomaly", "raised")
    assert [m.json()["id"] for m in subscriber.messages].count(queued) == 1


def test_sighup_reloads_a_new_bundle_without_stopping(
        alsa_device, mosquitto, subscribe, agents, agent_bundle, normal_clip, tmp_path):
    link = tmp_path / "reloaded"
    details = {"machine": agent_bundle.machine}

    def copy_detector(directory: pathlib.Path) -> None:
        for entry in agent_bundle.spec.detectors:
            (directory / entry.file).write_bytes((agent_bundle.path / entry.file).read_bytes())

    write_bundle(link, agent_bundle.spec, details, copy_detector, extractor=agent_bundle.extractor_path)
    device = alsa_device(speed=SPEED)
    device.play(back_and_forth(normal_clip, 120.0))
    subscriber = subscribe(["humwatch/pump1/score"])
    agent = agents(device.env, link, mosquitto, alarm={"score_interval": 1.0}).start()
    subscriber.wait_on("humwatch/pump1/score", 1, timeout=60)
    new = write_bundle(link, replace(agent_bundle.spec, threshold_high=50.0, threshold_low=40.0), details,
                       copy_detector, extractor=agent_bundle.extractor_path)
    agent.process.send_signal(signal.SIGHUP)
    agent.wait_log(rf"now judging with bundle {new.name} \(threshold 50, clear 40\)", timeout=30)
    subscriber.wait_for(lambda msgs: any(m.json()["threshold"] == 50.0 for m in msgs), timeout=30)
    assert agent.process.poll() is None
    assert agent.terminate() == 0
    # the reload starts the new pipeline's window afresh, not the agent's clock: between the last score of the old
    # bundle and the first of the new one, audio_time moves as far as the device played (SPEED x the wall time)
    scores = [m.json() for m in subscriber.on("humwatch/pump1/score")]
    last = [s for s in scores if s["threshold"] != 50.0][-1]
    first = next(s for s in scores if s["threshold"] == 50.0)
    wall = (dt.datetime.fromisoformat(first["time"]) - dt.datetime.fromisoformat(last["time"])).total_seconds()
    assert first["audio_time"] - last["audio_time"] == pytest.approx(SPEED * wall, abs=2.0), (last, first)


def start_failure(agents, env, bundle, broker, **sections) -> str:
    agent = agents(env, bundle, broker, **sections).start()
    assert agent.process.wait(60) == 2, agent.log()
    log = agent.log()
    errors = [line for line in log.splitlines() if line.startswith("humwatch run: error:")]
    assert len(errors) == 1 and "Traceback" not in log, log
    return errors[0]


def test_start_failures_are_one_line_and_exit_2(alsa_device, mosquitto, agents, agent_bundle, squeezenet_float,
                                               tmp_path):
    env = alsa_device().env
    good = agent_bundle.path
    line = start_failure(agents, env, good, mosquitto, alarm={"raise_after": 0})
    assert "alarm.raise_after: must be at least 1" in line
    line = start_failure(agents, env, tmp_path / "no-bundle", mosquitto)
    assert "no bundle here" in line and "no-bundle" in line

    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    for item in good.iterdir():
        (mismatched / item.name).write_bytes(item.read_bytes())
    for suffix in ("", ".json"):  # the float model in place of the int8 one the detector was fitted on
        (mismatched / f"extractor.tflite{suffix}").write_bytes(pathlib.Path(f"{squeezenet_float}{suffix}").read_bytes())
    line = start_failure(agents, env, mismatched, mosquitto)
    assert "extractor.tflite" in line and "is not the extractor the bundle was calibrated with" in line

    (mismatched / "extractor.tflite").unlink()  # the model the bundle names is missing
    line = start_failure(agents, env, mismatched, mosquitto)
    assert re.search(r"mismatched/extractor\.tflite: model file not found", line), line

    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate\n")
    agent = agents(env, good, mosquitto)
    agent.config.write_text(agent.config.read_text() + f'[mqtt.tls]\nca_file = "{bad_ca}"\n')
    agent.start(journal=True)
    assert agent.process.wait(60) == 2
    errors = [line for line in agent.log().splitlines() if line.startswith("<3>humwatch run: error:")]
    assert len(errors) == 1 and "mqtt.tls.ca_file" in errors[0] and str(bad_ca) in errors[0]

    line = start_failure(agents, env, good, mosquitto, audio={"device": "no-such-mic"})
    assert "audio.device: no input device named like 'no-such-mic'" in line


def test_file_replay_runs_to_the_end_and_exits_cleanly(mosquitto, subscribe, agents, agent_bundle, normal_clip,
                                                       fault_clip, tmp_path):
    from scipy.io import wavfile

    replay = tmp_path / "replay.wav"
    audio = np.concatenate([back_and_forth(normal_clip, FAULT_ONSET), back_and_forth(fault_clip, 15.0)])
    wavfile.write(replay, 16000, (audio * 32767).astype(np.int16))
    subscriber = subscribe(["humwatch/pump1/alarm", "humwatch/pump1/status"])
    agent = agents(os.environ, agent_bundle.path, mosquitto,
                   audio={"source": "file", "file": str(replay), "realtime": False}).start()
    assert agent.process.wait(120) == 0, agent.log()
    raised = [m.json() for m in subscriber.wait_on("humwatch/pump1/alarm", 1)]
    assert [(a["kind"], a["event"]) for a in raised] == [("anomaly", "raised")]
    assert FAULT_ONSET < raised[0]["audio_time"] <= FAULT_ONSET + LATENCY_GOAL
    assert "the audio source has ended" in agent.log()
    assert subscriber.wait_on("humwatch/pump1/status", 2)[-1].text == "offline"


def test_a_machine_running_fast_alarms_through_the_timing_reading(mosquitto, subscribe, agents, squeezenet_int8,
                                                                  dcase, normal_clip, tmp_path):
    """The default pipeline in the running agent: the real fan, then the same sound 5 % fast. The spectrum keeps
    its shape; the timing reading carries the alarm."""
    from scipy import signal as dsp
    from scipy.io import wavfile

    from humwatch.calibration.calibrate import calibrate
    from humwatch.calibration.collect import wav_blocks

    link = tmp_path / "pump1"
    calibrate(wav_blocks([dcase / "train"]), squeezenet_int8, link, preset="fusion-timing", machine="pump1",
              report=False)
    normal = back_and_forth(normal_clip, FAULT_ONSET)
    fast = dsp.resample_poly(back_and_forth(normal_clip, 21.0), 20, 21)
    replay = tmp_path / "replay.wav"
    wavfile.write(replay, 16000, (np.concatenate([normal, fast]) * 32767).astype(np.int16))
    subscriber = subscribe(["humwatch/pump1/alarm"])
    agent = agents(os.environ, link, mosquitto,
                   audio={"source": "file", "file": str(replay), "realtime": False}).start()
    assert agent.process.wait(120) == 0, agent.log()
    raised = [m.json() for m in subscriber.wait_on("humwatch/pump1/alarm", 1)]
    assert [(a["kind"], a["event"]) for a in raised] == [("anomaly", "raised")]
    assert FAULT_ONSET < raised[0]["audio_time"] <= FAULT_ONSET + LATENCY_GOAL
    assert raised[0]["detector_scores"]["timing"] > Bundle.load(link).spec.timing.gate
    assert "timing" in raised[0]["model"]["detectors"]


def run_score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "humwatch", "score", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_score_command_judges_files_with_the_agents_pipeline(agent_bundle, dcase, tmp_path):
    from scipy.io import wavfile

    from humwatch.agent.model.pipeline import Pipeline

    normal = dcase / "train" / "normal_id_00_00000000.wav"
    anomaly = dcase / "test" / "anomaly_id_00_00000000.wav"
    short = tmp_path / "short.wav"
    wavfile.write(short, 16000, np.zeros(16000 * 3, np.int16))
    done = run_score("--bundle", str(agent_bundle.path), "--json", str(normal), str(anomaly), str(short))
    assert done.returncode == 2, done.stderr  # a file too short to judge: a script must not read it as normal
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["verdict"] for r in results] == ["normal", "anomaly", "too_short"]
    pipeline = Pipeline(agent_bundle)
    for result, path in zip(results[:2], (normal, anomaly)):
        pipeline.reset()
        expected = [r.window_score for r in pipeline.push(read_wav(path)) if r.window_score is not None]
        assert result["windows"] == 1 and result["window_scores"] == pytest.approx(expected, abs=1e-5)
        assert result["window_detector_scores"] == {"cnn-gmm80": pytest.approx(expected, abs=1e-5)}
        assert result["max_window_detector_scores"] == {"cnn-gmm80": pytest.approx(expected[0])}
        assert result["threshold"] == agent_bundle.spec.threshold_high and result["bundle"] == agent_bundle.id
    assert results[1]["max_window_score"] > agent_bundle.spec.threshold_high > results[0]["max_window_score"]

    done = run_score("--bundle", str(agent_bundle.path), str(normal))
    assert done.returncode == 0
    assert done.stdout.startswith(f"{normal}: NORMAL  max window score") and "0 of 1 windows above" in done.stdout
    assert re.search(r"\(threshold [0-9.]+; cnn-gmm80 -?[0-9.e+-]+\)", done.stdout), done.stdout
    done = run_score("--bundle", str(agent_bundle.path), str(normal), str(anomaly))
    assert done.returncode == 1  # at least one file sounds anomalous
    done = run_score("--bundle", str(agent_bundle.path), str(tmp_path / "absent.wav"))
    assert done.returncode == 2 and "absent.wav: no such file" in done.stderr
