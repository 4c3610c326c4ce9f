"""Evidence, verdicts and drift through the running agent: a real ALSA capture device, real TFLite, a real mosquitto.

The fault is the shared DCASE slider anomaly played between stretches of a normal clip of the same machine, as in
test_service. The evidence WAV is compared with the samples the device played, the PNG is decoded with zlib.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys
import uuid

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from humwatch.agent.model.bundle import Bundle
from humwatch.agent.service.evidence import AUDIO, PICTURE, EvidenceStore
from humwatch.agent.signal.audio import read_wav
from humwatch.agent.signal.picture import BOTTOM_PANEL_Y, PICTURE_HEIGHT, PICTURE_WIDTH
from humwatch.agent.signal.wav import WAV_HEADER_BYTES, to_pcm16, wav_bytes
from tests.integration import test_service
from tests.integration.test_service import back_and_forth
from tests.plugins.broker import Subscriber
from tests.unit.test_evidence import decode_png

REPO = pathlib.Path(__file__).resolve().parents[2]
# test_service's fixtures, shared: one calibrated bundle per run
agent_bundle, agents = test_service.agent_bundle, test_service.agents
normal_clip, fault_clip = test_service.normal_clip, test_service.fault_clip
SPEED = 3.0
ONSET, FAULT_SECONDS = 30.0, 20.0
RATE = 16000


def as_played(samples: np.ndarray) -> np.ndarray:
    """The int16 samples the ALSA test device delivers for float samples (its own conversion)."""
    return np.round(np.clip(samples, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def where_in(played: np.ndarray, kept: np.ndarray) -> list[int]:
    """Every offset at which `kept` is exactly a stretch of `played`."""
    candidates = np.flatnonzero(played[: len(played) - len(kept) + 1] == kept[0])
    for k in range(1, 64):
        candidates = candidates[played[candidates + k] == kept[k]]
    return [int(i) for i in candidates if np.array_equal(played[i: i + len(kept)], kept)]


def publish(broker, topic: str, payloads: list[bytes]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"operator-{uuid.uuid4().hex[:6]}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    for payload in payloads:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def test_a_fault_leaves_its_sound_and_picture_delivered_and_judged(
        alsa_device, mosquitto, subscribe, agents, agent_bundle, normal_clip, fault_clip):
    audio = np.concatenate([back_and_forth(normal_clip, ONSET), back_and_forth(fault_clip, FAULT_SECONDS),
                            back_and_forth(normal_clip, 35.0)])
    device = alsa_device(speed=SPEED)
    device.play(audio)
    subscriber = subscribe(["humwatch/pump1/#", "homeassistant/#"])
    agent = agents(device.env, agent_bundle.path, mosquitto, evidence={"publish_audio": True}).start()
    # one machine anomaly, then the silence after the audio is a sensor fault: both keep evidence
    evidence_of = lambda msgs, kind: [m.json() for m in msgs if m.topic == "humwatch/pump1/evidence"  # noqa: E731
                                      and m.json()["id"] in {a.json()["id"] for a in msgs if a.topic.endswith("/alarm")
                                                             and a.json()["kind"] == kind}]
    subscriber.wait_for(lambda msgs: evidence_of(msgs, "anomaly") and evidence_of(msgs, "sensor_fault"), timeout=180)
    alarms = [m.json() for m in subscriber.on("humwatch/pump1/alarm")]
    raised = [a for a in alarms if a["kind"] == "anomaly" and a["event"] == "raised"]
    assert len(raised) == 1, [(a["kind"], a["event"]) for a in alarms]
    alarm = raised[0]
    assert alarm["evidence"] == {"id": alarm["id"], "seconds": 40.0, "files": [AUDIO, PICTURE], "sha256": None}
    sent = evidence_of(subscriber.messages, "anomaly")[0]

    # the folder holds the sound the device played, around the fault's onset, bit for bit
    store = EvidenceStore(agent.directory / "state")
    kept = store.get(alarm["id"])
    wav = kept.audio.read_bytes()
    riff, _, wave, _, _, pcm, channels, rate, _, _, bits, data, size = struct.unpack("<4sI4s4sIHHIIHH4sI",
                                                                                    wav[:WAV_HEADER_BYTES])
    assert (riff, wave, pcm, channels, rate, bits, data) == (b"RIFF", b"WAVE", 1, 1, RATE, 16, b"data")
    assert size == len(wav) - WAV_HEADER_BYTES
    samples = np.frombuffer(wav[WAV_HEADER_BYTES:], "<i2")
    assert len(samples) == 40 * RATE
    [offset] = where_in(as_played(audio), samples)
    fault = (int(ONSET * RATE), int((ONSET + FAULT_SECONDS) * RATE))
    assert offset < fault[0] and min(offset + len(samples), fault[1]) - fault[0] >= 5 * RATE
    assert sent["sha256"] == kept.summary["sha256"] and sent["seconds"] == 40.0
    width, height, pixels = decode_png(kept.picture.read_bytes())
    assert (width, height) == (PICTURE_WIDTH, PICTURE_HEIGHT)
    reference_panel = pixels[BOTTOM_PANEL_Y: BOTTOM_PANEL_Y + 128, 10:500].reshape(-1, 3)
    assert len(np.unique(reference_panel, axis=0)) > 20  # the bundle's normal reference, not the empty panel
    sensor = [a for a in alarms if a["kind"] == "sensor_fault" and a["event"] == "raised"][0]
    assert store.get(sensor["id"]) is not None and sensor["evidence"]["id"] == sensor["id"]

    # the last alarm's picture stays on the broker for a dashboard that connects later
    late = Subscriber(mosquitto, ["humwatch/pump1/evidence/image"])
    try:
        [image] = late.wait_on("humwatch/pump1/evidence/image")
    finally:
        late.close()
    assert image.retain and image.payload == store.get(sensor["id"]).picture.read_bytes()
    sounds = subscriber.wait_on("humwatch/pump1/evidence/audio", 2)  # publish_audio: the WAVs too, in order
    assert [m.payload for m in sounds] == [wav, store.get(sensor["id"]).audio.read_bytes()]

    # Home Assistant: the picture, the button and the drift diagnostics, each with the agent's availability
    discovery = {m.topic: m.json() for m in subscriber.messages if m.topic.startswith("homeassistant/")}
    image_entity = discovery["homeassistant/image/humwatch_pump1/evidence/config"]
    assert image_entity["image_topic"] == "humwatch/pump1/evidence/image"
    assert image_entity["content_type"] == "image/png"
    button = discovery["homeassistant/button/humwatch_pump1/last_alarm_normal/config"]
    assert button["command_topic"] == "humwatch/pump1/command"
    assert json.loads(button["payload_press"])["alarm_id"] == "last"
    drift = discovery["homeassistant/binary_sensor/humwatch_pump1/recalibration_suggested/config"]
    assert drift["entity_category"] == "diagnostic"
    median = discovery["homeassistant/sensor/humwatch_pump1/daily_median_score/config"]
    for entity in (image_entity, button, drift, median):
        assert entity["availability_topic"] == "humwatch/pump1/status"
    states = [m.json() for m in subscriber.on("humwatch/pump1/state")]
    assert all(s["recalibration_suggested"] is False for s in states)
    scores = [m.json() for m in subscriber.on("humwatch/pump1/score")]
    assert scores[-1]["drift"]["windows"] > 0 and scores[-1]["drift"]["unit"] == "held-out SD"

    # verdicts on the command topic: bad payloads change nothing and are logged; the good one is stored
    bad = [b"{oops", json.dumps({"command": "feedback", "alarm_id": alarm["id"], "verdict": "normal",
                                  "note": "x" * 2000}).encode(),
           json.dumps({"command": "feedback", "alarm_id": uuid.uuid4().hex, "verdict": "normal"}).encode(),
           json.dumps({"command": "feedback", "alarm_id": f"../{alarm['id']}", "verdict": "normal"}).encode()]
    good = json.dumps({"command": "feedback", "alarm_id": alarm["id"], "verdict": "fault", "note": "slider"})
    publish(mosquitto, "humwatch/pump1/command", [*bad, good.encode()])
    agent.wait_log(rf"verdict fault for alarm {alarm['id']} stored", timeout=30)  # the commands arrive in order
    assert agent.terminate() == 0
    rejected = [line for line in agent.log().splitlines() if "command rejected, nothing changed" in line]
    assert len(rejected) == 4, rejected
    for reason, line in zip(["not UTF-8 JSON", "over the 1024-byte limit", "holds no evidence under that id",
                             "is not 32 lower-case hex digits"], rejected):
        assert reason in line, (reason, line)
    assert store.get(alarm["id"]).verdict["verdict"] == "fault" and store.get(sensor["id"]).verdict is None
    assert sorted(p.name for p in (agent.directory / "state" / "evidence").iterdir()) == sorted(
        [alarm["id"], sensor["id"]])

    # on the board: list, show and export
    listing = run_cli("evidence", "list", "--state-dir", str(agent.directory / "state"))
    assert alarm["id"] in listing.stdout and "verdict fault" in listing.stdout
    exported = run_cli("evidence", "export", alarm["id"], str(agent.directory / "out"), "--config",
                       str(agent.config))
    assert exported.returncode == 0
    assert (agent.directory / "out" / alarm["id"] / AUDIO).read_bytes() == wav


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "humwatch", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MB tmpfs: room for the outbox, not for 40 s of audio (a real ENOSPC). Mounting needs root."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.fail(f"this test mounts a 1 MB tmpfs and needs root: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_skips_the_evidence_with_one_line_and_the_alarm_is_delivered(
        alsa_device, mosquitto, subscribe, agents, agent_bundle, normal_clip, fault_clip, full_disk):
    device = alsa_device(speed=SPEED)
    device.play(np.concatenate([back_and_forth(normal_clip, ONSET), back_and_forth(fault_clip, FAULT_SECONDS),
                                back_and_forth(normal_clip, 60.0)]))
    subscriber = subscribe(["humwatch/pump1/alarm"])
    agent = agents(device.env, agent_bundle.path, mosquitto, state={"dir": str(full_disk / "state")}).start()
    skipped = agent.wait_log(r"evidence for alarm ([0-9a-f]{32}) skipped: cannot write in \S+ \(No space left on "
                             r"device\); the alarm itself is unaffected", timeout=180)
    alarm_id = skipped.group(1)
    [delivered] = subscriber.wait_for(lambda msgs: any(m.json()["id"] == alarm_id for m in msgs), timeout=30)
    assert agent.terminate() == 0
    assert delivered.json()["kind"] == "anomaly" and delivered.json()["event"] == "raised"
    assert agent.log().count(f"evidence for alarm {alarm_id} skipped") == 1, agent.log()
    assert sorted(p.name for p in (full_disk / "state" / "evidence").iterdir()) == []


def test_a_normal_verdict_teaches_the_bundle_and_a_real_fault_stays_above(
        tmp_path, squeezenet_int8, dcase, normal_paths, fault_clip):
    """A new normal sound (the slider with a steady hum nearby) alarms; the operator marks it normal; after
    `calibrate --add-evidence` it scores below the threshold, while the slider's real anomaly stays above."""
    from humwatch.agent.model.pipeline import Pipeline
    from humwatch.agent.service.score import score_file
    from humwatch.calibration.calibrate import calibrate
    from humwatch.calibration.collect import wav_blocks

    link = tmp_path / "bundle"
    calibrate(wav_blocks([dcase / "train"]), squeezenet_int8, link, machine="pump1", report=False)  # window-knn
    t = np.arange(40 * RATE) / RATE
    hum = (0.05 * np.sin(2 * np.pi * 1234.0 * t)).astype(np.float32)
    state = tmp_path / "state"
    store = EvidenceStore(state, 10**9, writer=True)
    clips = []
    for path in normal_paths[:3]:  # three alarms the operator calls normal
        samples = to_pcm16(back_and_forth(read_wav(path), 40.0) + hum)
        alarm_id = uuid.uuid4().hex
        store.write(alarm_id, {AUDIO: wav_bytes(samples)}, {"seconds": 40.0})
        clips.append(alarm_id)
    anomaly = tmp_path / "anomaly.wav"
    anomaly.write_bytes(wav_bytes(to_pcm16(fault_clip)))

    before = Pipeline(Bundle.load(link))
    first = store.get(clips[0]).audio
    alarmed = score_file(before, first)
    assert alarmed["verdict"] == "anomaly" and alarmed["max_window_score"] > alarmed["threshold"]  # it does alarm
    for alarm_id in clips:
        assert run_cli("feedback", alarm_id, "normal", "--state-dir", str(state)).returncode == 0
    fault_id = uuid.uuid4().hex  # a clip marked fault is never learned
    store.write(fault_id, {AUDIO: anomaly.read_bytes()}, {"seconds": 10.0})
    assert run_cli("feedback", fault_id, "fault", "--note", "real", "--state-dir", str(state)).returncode == 0

    extended = subprocess.run([sys.executable, "-m", "humwatch", "calibrate", "--add-evidence", str(state), "--out",
                               str(link)], capture_output=True, text=True, cwd=REPO,
                              timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert extended.returncode == 0, extended.stderr
    after = Pipeline(Bundle.load(link))
    assert after.bundle.id != before.bundle.id
    added = after.bundle.manifest["calibration"]["sources"] - before.bundle.manifest["calibration"]["sources"]
    assert added == len(clips)  # the three clips marked normal, not the one marked fault
    assert after.bundle.spec.threshold_high != before.bundle.spec.threshold_high  # recomputed with the new windows
    learned, fault = score_file(after, first), score_file(after, anomaly)
    assert learned["verdict"] == "normal" and learned["max_window_score"] < learned["threshold"]
    assert fault["verdict"] == "anomaly" and fault["max_window_score"] > fault["threshold"]
    report = run_cli("evaluate", "--evidence", str(state), "--bundle", str(link))
    assert report.returncode == 0 and "marked normal: 3 of 3" in report.stdout and "marked fault: 1 of 1" in \
        report.stdout, report.stdout
