"""What keeping evidence costs the agent: the pre-roll ring's memory, its CPU per second of audio, and the CPU and
wall time to write one alarm's evidence (WAV + PNG + evidence.json, fsync'd) on the writer thread.

Usage: python benchmarks/bench_evidence.py [--alarms 10]
Measured on real sound: 40 s of the shared DCASE slider (normal clip forwards and backwards), the default
[evidence] settings (30 s before, 10 s after), the bundle-less picture and one with a normal reference.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time
import uuid

for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(name, "1")

import numpy as np  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from humwatch.agent.contract import SAMPLE_RATE  # noqa: E402
from humwatch.agent.model.reference import normal_reference, write_normal_reference  # noqa: E402
from humwatch.agent.service.capture import FRAMES_PER_BUFFER  # noqa: E402
from humwatch.agent.service.evidence import EvidenceStore  # noqa: E402
from humwatch.agent.service.recorder import EvidenceRecorder  # noqa: E402
from humwatch.agent.signal.audio import read_wav  # noqa: E402

DCASE = REPO.parent / "shared" / "audio" / "dcase2020-id00"


def rss_kb() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def back_and_forth(clip: np.ndarray, seconds: float) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    return np.tile(np.concatenate([clip, clip[::-1]]), -(-n // (2 * len(clip))))[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alarms", type=int, default=10, help="alarms whose evidence is written and timed")
    args = parser.parse_args()
    # The ring's memory first, in a process that has freed nothing yet (freed pages would be reused unseen).
    chunk = np.random.default_rng(0).uniform(-0.1, 0.1, FRAMES_PER_BUFFER).astype(np.float32)
    before = rss_kb()
    ring = EvidenceRecorder.ring_for(30.0, 10.0)
    start = time.thread_time()
    for _ in range(60 * SAMPLE_RATE // FRAMES_PER_BUFFER):  # 60 s of microphone-sized chunks
        ring.push(chunk)
    push_cpu = time.thread_time() - start
    after = rss_kb()
    print(f"pre-roll ring ([evidence] defaults): {ring.nbytes / 1e6:.2f} MB of int16 samples; the process RSS grew "
          f"{(after - before) / 1024:.2f} MB from creating it and filling it with 60 s of audio")
    print(f"  push: {push_cpu / 60 * 1e3:.3f} ms of CPU per second of audio "
          f"({push_cpu / (60 * SAMPLE_RATE // FRAMES_PER_BUFFER) * 1e6:.1f} us per 1024-sample chunk)")
    audio = back_and_forth(read_wav(DCASE / "train" / "normal_id_00_00000000.wav"), 60.0)
    with tempfile.TemporaryDirectory(prefix="bench-evidence-") as scratch:
        work = pathlib.Path(scratch)
        reference = normal_reference([read_wav(p) for p in sorted((DCASE / "train").glob("*.wav"))[:20]])
        write_normal_reference(work, reference)
        store = EvidenceStore(work / "state", 10**9, writer=True)
        recorder = EvidenceRecorder(store, 30.0, 10.0)
        for i in range(0, len(audio), FRAMES_PER_BUFFER):
            recorder.ring.push(audio[i: i + FRAMES_PER_BUFFER])
        recorder.close()
        pcm = recorder.ring.take(recorder.ring.total - 40 * SAMPLE_RATE, recorder.ring.total)
        event = {"kind": "anomaly", "event": "raised", "window_score": 5.1, "threshold": 3.2, "machine": "bench",
                 "detector_scores": {"cnn-gmm80": 5.1}, "time": "2026-12-05T00:00:00.000Z", "reason": "bench"}
        for label, bundle_dir in (("with the normal reference", work), ("without a reference", None)):
            writer = EvidenceRecorder(store, 30.0, 10.0)
            cpu, wall = [], []
            for _ in range(args.alarms):
                alarm_id = uuid.uuid4().hex
                writer.alarm_raised(alarm_id, event, time.monotonic(), bundle_dir)
                job = writer._pending.pop()  # written here on this thread, to time it alone
                job.start = job.decision - 30 * SAMPLE_RATE  # the slice below: 30 s before the decision, 10 s after
                t0, c0 = time.perf_counter(), time.thread_time()
                writer._write(job, pcm)
                cpu.append(time.thread_time() - c0)
                wall.append(time.perf_counter() - t0)
            writer.close()
            kept = store.get(alarm_id)
            print(f"one alarm's evidence {label} (40 s WAV {kept.audio.stat().st_size / 1e6:.2f} MB + PNG "
                  f"{kept.picture.stat().st_size / 1e3:.0f} kB), {args.alarms} alarms: CPU median "
                  f"{np.median(cpu) * 1e3:.0f} ms (min {min(cpu) * 1e3:.0f}, max {max(cpu) * 1e3:.0f}), wall median "
                  f"{np.median(wall) * 1e3:.0f} ms (fsync included)")


if __name__ == "__main__":
    main()
