"""Evidence on the board: the pre-roll ring, the picture's PNG, the store's atomic folders and disk budget, the
verdicts from the command topic, and what a SIGKILL in the middle of a write leaves."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time
import uuid
import zlib

import numpy as np
import pytest

from humwatch.agent.service.evidence import AUDIO, PICTURE, SUMMARY, VERDICT, EvidenceStore, labelled_audio
from humwatch.agent.service.feedback import COMMAND_MAX_BYTES, CommandHandler
from humwatch.agent.service.recorder import EvidenceRecorder, PreRoll
from humwatch.agent.signal.picture import PICTURE_HEIGHT, PICTURE_WIDTH, evidence_picture
from humwatch.agent.signal.png import encode_png
from humwatch.agent.signal.wav import WAV_HEADER_BYTES
from humwatch.agent.transport.messages import AlarmEvidence, AlarmMessage
from tests.plugins.messages import an_alarm

REPO = pathlib.Path(__file__).resolve().parents[2]


def decode_png(data: bytes) -> tuple[int, int, np.ndarray]:
    """Width, height and RGB pixels of an 8-bit RGB PNG with filter 0 rows, read with zlib alone (not our reader)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position: position + 8])
        body = data[position + 8: position + 8 + length]
        assert struct.unpack(">I", data[position + 8 + length: position + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    width, height, depth, colour = header[:4]
    assert (depth, colour) == (8, 2)
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 3 * width)
    assert not rows[:, 0].any()
    return width, height, rows[:, 1:].reshape(height, width, 3)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    """int16 noise and the float samples the capture makes of it (x / 32768)."""
    pcm = np.random.default_rng(seed).integers(-4000, 4000, int(seconds * 16000)).astype(np.int16)
    return pcm, pcm.astype(np.float32) / 32768


def test_png_holds_exactly_the_pixels_drawn():
    image = np.random.default_rng(1).integers(0, 256, (7, 11, 3)).astype(np.uint8)
    width, height, pixels = decode_png(encode_png(image))
    assert (width, height) == (11, 7) and np.array_equal(pixels, image)
    with pytest.raises(ValueError, match="uint8 image"):
        encode_png(image.astype(np.float32))


def test_picture_has_its_documented_size_with_or_without_a_reference():
    _, samples = noise(12.0)
    with_reference = evidence_picture(samples, 8.0, "PUMP1", ["WINDOW SCORE 5"], np.full((64, 312), -50.0), ["REF"])
    alone = evidence_picture(samples, 8.0, "PUMP1", ["WINDOW SCORE 5"], None, [])
    assert with_reference.shape == alone.shape == (PICTURE_HEIGHT, PICTURE_WIDTH, 3)
    assert not np.array_equal(with_reference, alone)


def test_the_pictures_spectrogram_in_blocks_is_the_front_ends_spectrogram():
    from humwatch.agent.signal.mel import mel_db
    from humwatch.agent.signal.picture import mel_db_in_blocks

    _, samples = noise(12.3)
    # float32 FFTs round a little differently with the batch size: equal to far below what a picture can show
    np.testing.assert_allclose(mel_db_in_blocks(samples), mel_db(samples), rtol=0, atol=1e-4)


def test_pre_roll_keeps_the_last_samples_bit_for_bit_in_any_chunking():
    pcm, samples = noise(5.0)
    ring = PreRoll(2.0)
    for start in range(0, len(samples), 777):
        ring.push(samples[start: start + 777])
    assert ring.total == len(pcm) and ring.nbytes == 2 * 32000
    assert np.array_equal(ring.take(ring.total - 32000, ring.total), pcm[-32000:])
    assert np.array_equal(ring.take(0, ring.oldest + 10), pcm[-32000: -31990])  # older than the ring: from the oldest


def alarm(alarm_id: str) -> AlarmMessage:
    return an_alarm("pump1", id=alarm_id, window_score=5.2, threshold=3.1, detector_scores={"cnn-gmm80": 5.2},
                    time="2026-12-05T10:00:00.000Z", reason="window score above the threshold for 3 decisions in a row")


def test_recorder_keeps_the_pre_and_after_roll_of_an_alarm(tmp_path):
    pcm, samples = noise(50.0)
    store = EvidenceStore(tmp_path, 50_000_000, writer=True)
    published = []
    recorder = EvidenceRecorder(store, 30.0, 10.0, lambda *args: published.append(args))
    alarm_id, raised_at = uuid.uuid4().hex, 35 * 16000
    for start in range(0, len(samples), 1000):
        recorder.push(samples[start: start + 1000], time.monotonic())
        if start + 1000 == raised_at:
            planned = recorder.alarm_raised(alarm(alarm_id), time.monotonic(), None)
    recorder.close()
    assert planned == AlarmEvidence(id=alarm_id, seconds=40.0, files=(AUDIO, PICTURE), sha256=None)
    evidence = store.get(alarm_id)
    kept = np.frombuffer(evidence.audio.read_bytes()[WAV_HEADER_BYTES:], "<i2")
    assert np.array_equal(kept, pcm[raised_at - 30 * 16000: raised_at + 10 * 16000])
    assert evidence.summary["decision_second"] == 30.0 and evidence.summary["alarm"]["id"] == alarm_id
    width, height, _ = decode_png(evidence.picture.read_bytes())
    assert (width, height) == (PICTURE_WIDTH, PICTURE_HEIGHT)
    [(sent, picture, audio)] = published
    assert sent.sha256 is not None and sent.sha256[AUDIO] == evidence.summary["sha256"][AUDIO]
    assert picture == evidence.picture.read_bytes()
    assert audio == evidence.audio.read_bytes()


def test_disk_budget_holds_after_50_alarms_and_the_oldest_go_first(tmp_path):
    size = 200_000
    store = EvidenceStore(tmp_path, max_bytes=5 * (size + 5000), writer=True)
    ids = []
    for i in range(50):
        ids.append(uuid.uuid4().hex)
        store.write(ids[-1], {AUDIO: os.urandom(size)}, {"seconds": 1.0})
        assert store.used_bytes() <= store.max_bytes
    assert [e.id for e in store.all()] == ids[-5:]


def test_evidence_larger_than_the_budget_is_refused_and_removes_nothing(tmp_path):
    from humwatch.agent.service.evidence import EvidenceTooLarge

    store = EvidenceStore(tmp_path, max_bytes=100_000, writer=True)
    kept = uuid.uuid4().hex
    store.write(kept, {AUDIO: b"x" * 1000}, {"seconds": 1.0})
    with pytest.raises(EvidenceTooLarge):
        store.write(uuid.uuid4().hex, {AUDIO: b"x" * 200_000}, {"seconds": 1.0})
    assert [e.id for e in store.all()] == [kept]


WRITER = """
import os, sys, uuid
from humwatch.agent.service.evidence import EvidenceStore
store = EvidenceStore(sys.argv[1], 10**9, writer=True)
while True:
    alarm_id = uuid.uuid4().hex
    store.write(alarm_id, {"audio.wav": os.urandom(3_000_000), "picture.png": os.urandom(50_000)}, {"seconds": 1})
    print(alarm_id, flush=True)
"""


def test_sigkill_during_evidence_writes_leaves_only_whole_folders(tmp_path):
    # A process that does nothing but write evidence is killed after its third: wherever the kill lands, every
    # folder under an alarm id is whole, and opening the store again removes what the killed write left.
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    written = [process.stdout.readline().strip() for _ in range(3)]
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    root = tmp_path / "evidence"
    for folder in (p for p in root.iterdir() if not p.name.startswith(".")):
        summary = json.loads((folder / SUMMARY).read_text())
        for name, digest in summary["sha256"].items():
            assert (folder / name).stat().st_size in (3_000_000, 50_000)
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert set(written) <= {p.name for p in root.iterdir()}
    EvidenceStore(tmp_path, 10**9, writer=True)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


@pytest.fixture
def held(tmp_path) -> tuple[EvidenceStore, str]:
    store = EvidenceStore(tmp_path, 10_000_000, writer=True)
    alarm_id = uuid.uuid4().hex
    summary = {"seconds": 1.0, "alarm": json.loads(alarm(alarm_id).to_json())}
    store.write(alarm_id, {AUDIO: b"RIFF", PICTURE: b"png"}, summary)
    return store, alarm_id


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", "not UTF-8 JSON"),
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"[1, 2]", "not a JSON object"),
    (json.dumps({"command": "feedback", "alarm_id": "0" * 32, "verdict": "normal"}).encode(), "holds no evidence"),
    (json.dumps({"command": "feedback", "alarm_id": "../../etc/passwd", "verdict": "normal"}).encode(),
     "is not 32 lower-case hex digits"),
    (json.dumps({"command": "feedback", "alarm_id": "/var/lib/humwatch", "verdict": "normal"}).encode(),
     "is not 32 lower-case hex digits"),
    (json.dumps({"command": "reboot"}).encode(), "is not 'feedback'"),
    (json.dumps({"command": "feedback", "alarm_id": "last", "verdict": "maybe"}).encode(), "verdict 'maybe'"),
    (json.dumps({"command": "feedback", "alarm_id": "last", "verdict": "normal", "path": "/x"}).encode(),
     "unknown keys ['path']"),
    (json.dumps({"command": "feedback", "alarm_id": "last", "verdict": "normal",
                 "note": "x" * COMMAND_MAX_BYTES}).encode(), "over the 1024-byte limit"),
])
def test_bad_commands_change_nothing_and_each_is_logged_once(held, caplog, payload, reason):
    store, alarm_id = held
    before = sorted(p.name for p in store.root.rglob("*"))
    with caplog.at_level(logging.WARNING):
        CommandHandler(store)(payload)
    assert [r.getMessage() for r in caplog.records if reason in r.getMessage()] and len(caplog.records) == 1
    assert sorted(p.name for p in store.root.rglob("*")) == before and store.get(alarm_id).verdict is None


def test_a_good_command_stores_the_verdict_beside_the_evidence(held):
    store, alarm_id = held
    CommandHandler(store)(json.dumps({"command": "feedback", "alarm_id": alarm_id, "verdict": "fault",
                                      "note": "bearing"}).encode())
    assert json.loads((store.root / alarm_id / VERDICT).read_text())["verdict"] == "fault"
    assert labelled_audio(store.root.parent, "normal") == []  # a fault is never calibration audio
    CommandHandler(store)(json.dumps({"command": "feedback", "alarm_id": "last", "verdict": "normal"}).encode())
    assert store.get(alarm_id).verdict["verdict"] == "normal" and store.get(alarm_id).verdict["source"] == "mqtt"
    assert labelled_audio(store.root.parent, "normal") == [store.root / alarm_id / AUDIO]


def test_evidence_and_drift_settings_are_checked_like_every_section(tmp_path):
    from humwatch.agent.config import parse_config
    from humwatch.agent.errors import ConfigError

    base = {"machine": {"name": "pump1"}, "model": {"bundle": "bundle"}}
    config = parse_config({**base, "evidence": {"max_mb": 50, "publish_audio": True}, "drift": {"days": 5}}, tmp_path)
    assert config.evidence.max_bytes == 50_000_000 and config.evidence.publish_audio and config.drift.days == 5
    assert parse_config(base, tmp_path).evidence.enabled  # on by default
    with pytest.raises(ConfigError) as error:
        parse_config({**base, "evidence": {"max_mb": 0, "pre_seconds": 500, "enable": False},
                      "drift": {"median_shift": "1"}}, tmp_path)
    lines = str(error.value).splitlines()
    assert any(line.startswith("evidence.max_mb: must be greater than 0") for line in lines)
    assert any(line.startswith("evidence.pre_seconds: must be between 0 and 120") for line in lines)
    assert any(line.startswith("evidence.enable: unknown key") for line in lines)
    assert any(line.startswith("drift.median_shift: must be a number") for line in lines)
