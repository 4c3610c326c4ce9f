"""What the agent costs and how fast it alarms: SqueezeNet 1.1 int8, one TFLite thread.

1. In process: the agent's `Pipeline` fed 1024-sample chunks (as the microphone delivers them) of normal sound;
   CPU time per second of audio (real-time factor) and the share of it spent outside the TFLite invoke.
2. `humwatch run` as a subprocess, listening in real time to an ALSA capture device (the test suite's `file`
   plugin device) and publishing to a local mosquitto: peak RSS, its CPU per second of audio, and the time from
   the fault's onset entering the device to the alarm arriving at an MQTT subscriber.

Usage: python benchmarks/bench_agent.py [--model PATH_TO_int8.tflite] [--bundle DIR | --preset NAME] [--seconds 120]
Without --bundle, one is calibrated first (scikit-learn) on the shared DCASE normal clips with --model and
`--preset` (default: calibrate's default; a log-Mel preset runs no TFLite at all, and the invoke figures are then
absent). A bundle calibrated on more sound has a larger bank for the window detectors: give --bundle to measure it.
Goals (issue 5): RTF <= 0.01, outside invoke <= 15 %, RSS <= 150 MB, alarm within one window (10 s) + 2 s.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(name, "1")  # single thread, as on the board's analysis loop

import numpy as np  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import humwatch.agent.model.pipeline as pipeline_module  # noqa: E402
from humwatch.agent.contract import SAMPLE_RATE  # noqa: E402
from humwatch.agent.model.bundle import Bundle  # noqa: E402
from humwatch.agent.model.pipeline import Pipeline  # noqa: E402
from humwatch.agent.paths import default_model  # noqa: E402
from humwatch.agent.service.capture import FRAMES_PER_BUFFER  # noqa: E402
from humwatch.agent.signal.audio import read_wav  # noqa: E402
from tests.plugins.broker import Mosquitto, Subscriber  # noqa: E402
from tests.plugins.sound import AlsaFileDevice  # noqa: E402

DCASE = REPO.parent / "shared" / "audio" / "dcase2020-id00"
FAULT_ONSET = 30.0
ALARM_GOAL = 10.0 + 2.0


def back_and_forth(clip: np.ndarray, seconds: float) -> np.ndarray:
    """Continuous sound from one clip (forwards, backwards, ...): no splice for the detector to flag."""
    n = int(seconds * SAMPLE_RATE)
    return np.tile(np.concatenate([clip, clip[::-1]]), -(-n // (2 * len(clip))))[:n]


def calibrated_bundle(model: pathlib.Path, preset: str | None, directory: pathlib.Path) -> pathlib.Path:
    from humwatch.calibration.calibrate import DEFAULT_PRESET, calibrate
    from humwatch.calibration.collect import wav_blocks

    link = directory / "bundle"
    calibrate(wav_blocks([DCASE / "train"]), model, link, preset=preset or DEFAULT_PRESET, machine="bench",
              report=False)
    return link


def timed(owner, name: str, spent: dict, key: str) -> None:
    """Replace owner.name by a wrapper that adds its CPU time to spent[key] (and counts calls)."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent[key] = spent.get(key, 0.0) + time.thread_time() - start
            spent[key + " calls"] = spent.get(key + " calls", 0) + 1

    object.__setattr__(owner, name, wrapper)  # also on a frozen dataclass (the timing model)


def stream(pipeline: Pipeline, audio: np.ndarray) -> tuple[float, int]:
    """Feed the audio in microphone-sized chunks; (CPU seconds of this thread, patches scored)."""
    start = time.thread_time()
    patches = 0
    for i in range(0, len(audio), FRAMES_PER_BUFFER):
        patches += len(pipeline.push(audio[i: i + FRAMES_PER_BUFFER]))
    return time.thread_time() - start, patches


def in_process(bundle: pathlib.Path, audio: np.ndarray) -> None:
    """Two passes over the same audio: the headline with only the invoke timed (a timer around every front-end
    and detector call costs about a microsecond each, which would count as overhead), then the breakdown."""
    seconds = len(audio) / SAMPLE_RATE
    spent: dict[str, float] = {}
    pipeline = Pipeline(Bundle.load(bundle), num_threads=1)
    extractor = pipeline.scorer.extractor
    if extractor is not None:
        timed(extractor.interpreter, "invoke", spent, "invoke")
    pipeline.push(audio[: SAMPLE_RATE * 12])  # warm up: first invokes, caches
    pipeline.reset()
    spent.clear()
    cpu, patches = stream(pipeline, audio)
    invoke = spent.get("invoke", 0.0)
    print(f"in process: {seconds:.0f} s of audio, {patches} patches, {spent.get('invoke calls', 0):.0f} invokes")
    print(f"  CPU {cpu:.3f} s -> real-time factor {cpu / seconds:.4f} (goal <= 0.01)")
    if extractor is None:
        print(f"  no CNN in this bundle: no TFLite invoke; {cpu / patches * 1e3:.3f} ms per patch")
    else:
        print(f"  TFLite invoke {invoke / patches * 1e3:.2f} ms per patch; outside invoke "
              f"{(cpu - invoke) / patches * 1e3:.3f} ms per patch = {(cpu - invoke) / cpu:.1%} of the CPU "
              "(goal <= 15%)")

    pipeline.reset()
    spent.clear()
    timed(pipeline.front_end, "push", spent, "front end")
    timed(pipeline_module, "modulation_spectrum", spent, "modulation spectrum")
    timed(pipeline_module, "tone_contrast", spent, "tone contrast")
    for detector in pipeline.scorer.detectors.values():
        if detector.window_level:  # features transformed per patch, the bank searched per window
            timed(detector, "transform", spent, f"detector {detector.path.stem} transform")
            timed(detector.scorer, "score", spent, f"detector {detector.path.stem} nearest window")
        else:
            timed(detector, "score", spent, f"detector {detector.path.stem}")
    if pipeline.timing is not None:
        timed(pipeline.timing_profiles, "push", spent, "timing profiles")
        timed(pipeline.timing, "score", spent, "timing reading")
    cpu, patches = stream(pipeline, audio)
    stages = {"front end (Mel + images)": spent["front end"],
              **{name: value for name, value in spent.items() if not name.endswith(" calls")
                 and name not in ("front end", "invoke")}}
    rest = cpu - spent.get("invoke", 0.0) - sum(stages.values())
    print("  breakdown (second pass, every stage timed), ms per patch: "
          + ", ".join(f"{name} {value / patches * 1e3:.3f}" for name, value in stages.items())
          + f", the rest (tensor copies, fusion, window mean, Python, timers) {rest / patches * 1e3:.3f}")


def proc_cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def live_agent(bundle: pathlib.Path, normal: np.ndarray, fault: np.ndarray, work: pathlib.Path) -> None:
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    device = AlsaFileDevice(work, speed=1.0)
    subscriber = Subscriber(broker, ["humwatch/bench/alarm"])
    config = work / "humwatch.toml"
    config.write_text(f'[machine]\nname = "bench"\n[model]\nbundle = "{bundle}"\n[audio]\ndevice = "{device.name}"\n'
                      f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n[state]\ndir = "{work / "state"}"\n')
    audio = np.concatenate([back_and_forth(normal, FAULT_ONSET), back_and_forth(fault, 15.0),
                            back_and_forth(normal, 5.0)])
    device.play(audio)
    log = open(work / "agent.log", "w")
    agent = subprocess.Popen([sys.executable, "-m", "humwatch", "run", "--config", str(config)], cwd=REPO,
                             env={**device.env, "PYTHONPATH": str(REPO)}, stdout=log, stderr=log)
    try:
        while device.written_at(int(10 * SAMPLE_RATE)) is None:  # startup and the first 10 s, drained
            time.sleep(0.1)
        cpu_start, wall_start = proc_cpu_seconds(agent.pid), time.monotonic()
        audio_end = wall_start + len(audio) / SAMPLE_RATE - 10 + 5  # the stream played out, and 5 s to decide
        while not subscriber.messages and time.monotonic() < audio_end:
            time.sleep(0.05)
        arrived = time.monotonic()
        cpu, wall = proc_cpu_seconds(agent.pid) - cpu_start, arrived - wall_start
        print(f"live agent (real time, ALSA device, mosquitto): peak RSS {peak_rss_mb(agent.pid):.1f} MB "
              "(goal <= 150 MB)")
        print(f"  agent CPU {cpu:.2f} s over {wall:.1f} s of live audio -> {cpu / wall:.4f} s per s of audio "
              "(whole process: capture, front end, TFLite, detector, MQTT)")
        if not subscriber.messages:
            print("  no alarm: this bundle does not alarm on the real anomalous clip")
            return
        event = subscriber.messages[0].json()
        onset = device.written_at(int(FAULT_ONSET * SAMPLE_RATE))
        if onset is None:
            print("  alarm before the fault's onset: this bundle finds the normal sound anomalous")
            return
        print(f"  fault onset -> alarm at the subscriber: {arrived - onset:.2f} s (goal <= {ALARM_GOAL:.0f} s); "
              f"decided at {event['audio_time'] - FAULT_ONSET:.2f} s of audio after onset, "
              f"window score {event['window_score']:.3g} > threshold {event['threshold']:.3g}")
        folder = work / "state" / "evidence" / event["id"]
        deadline = time.monotonic() + 40  # its 10 s after-roll, then the writer thread
        while not folder.is_dir() and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"  peak RSS once the alarm's evidence (WAV + PNG) was written: {peak_rss_mb(agent.pid):.1f} MB "
              f"({'written' if folder.is_dir() else 'NOT written within 40 s'}, [evidence] defaults)")
    finally:
        agent.terminate()
        agent.wait(30)
        log.close()
        subscriber.close()
        device.close()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=pathlib.Path, default=default_model("int8"))
    parser.add_argument("--bundle", type=pathlib.Path, help="a calibrated bundle (default: calibrate one)")
    parser.add_argument("--preset", default=None,
                        help="calibrate's preset for the bundle made without --bundle (default: calibrate's default)")
    parser.add_argument("--seconds", type=float, default=120.0, help="audio for the in-process measurement")
    args = parser.parse_args()
    normal = read_wav(DCASE / "train" / "normal_id_00_00000000.wav")
    fault = read_wav(DCASE / "test" / "anomaly_id_00_00000000.wav")
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as scratch:
        work = pathlib.Path(scratch)
        bundle = args.bundle or calibrated_bundle(args.model, args.preset, work)
        info = Bundle.load(bundle)
        source = (info.manifest.get('extractor') or {}).get('source', 'none')
        print(f"bundle {info.id}: {json.dumps(info.model_ids)}, extractor {source}, "
              f"threshold {info.spec.threshold_high:.3g}")
        in_process(bundle, back_and_forth(normal, args.seconds))
        live_agent(bundle, normal, fault, work)


if __name__ == "__main__":
    main()
