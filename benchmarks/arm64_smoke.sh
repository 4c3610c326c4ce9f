#!/usr/bin/env bash
# The board install on Raspberry Pi OS 64-bit, emulated: a Debian 12 arm64 root (debootstrap + qemu-user-static),
# the package installed as docs/install.md says (`pip install '.[audio,calibrate]'`), then `humwatch score`,
# `calibrate` and `run` (WAV replay, a real mosquitto on 127.0.0.1), with the scores compared against this x86
# machine's. Not part of CI: the first run takes about half an hour (debootstrap, pip, the emulated CPU).
#   benchmarks/arm64_smoke.sh            build or reuse the root at $HUMWATCH_ARM64_ROOT (/var/tmp/humwatch-arm64/root)
#   benchmarks/arm64_smoke.sh run        only some of the stages score, calibrate, run (default: all three)
#   benchmarks/arm64_smoke.sh test       scripts/test --fast in the root (installs every extra: TensorFlow, torch)
# Needs root (debootstrap, chroot, mounts), a converted int8 model in ~/.local/share/humwatch/models (scripts/setup)
# and the x86 .venv. Under emulation the root sees a real Cortex-A72's /proc/cpuinfo (bound over the host's, which
# qemu-user would otherwise show) and QEMU_CPU=cortex-a72, the board's CPU: with qemu's default CPU model, which
# offers SME, issue 19 saw LiteRT compute garbage features (not reproduced with Debian 12's qemu 7.2).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
root=${HUMWATCH_ARM64_ROOT:-/var/tmp/humwatch-arm64/root}
cpu=${QEMU_CPU:-cortex-a72}
model=${HUMWATCH_MODEL:-$HOME/.local/share/humwatch/models/squeezenet1_1-int8.tflite}
audio=${HUMWATCH_SMOKE_AUDIO:-$repo/../shared/audio/dcase2020-id00}
preset=${HUMWATCH_SMOKE_PRESET:-window-knn}  # what calibrate chooses by default; `paper` for the paper's pipeline
x86=$repo/.venv/bin/humwatch
say() { echo "arm64_smoke: $*"; }
stages=" ${*:-score calibrate run} "
wants() { [[ $stages == *" $1 "* ]]; }

[ "$(id -u)" -eq 0 ] || { say "run as root (debootstrap, chroot and bind mounts need it)"; exit 2; }
[ -f "$model" ] || { say "no converted model at $model: run scripts/setup first"; exit 2; }
[ -x "$x86" ] || { say "no x86 environment at $x86: run scripts/setup first"; exit 2; }

# --- the emulator ---
need=()
for package in debootstrap qemu-user-static binfmt-support mosquitto; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || need+=("$package")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 2>/dev/null || true
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || { say "binfmt for aarch64 is not enabled"; exit 2; }

# --- the arm64 root: Raspberry Pi OS 64-bit is Debian 12 arm64 with Python 3.11 ---
if [ ! -x "$root/usr/bin/python3" ]; then
  say "building a Debian 12 arm64 root at $root (debootstrap, several minutes)"
  mkdir -p "$(dirname "$root")"
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-dev,python3-pip,portaudio19-dev,build-essential,ca-certificates,procps \
    bookworm "$root" http://deb.debian.org/debian >"$(dirname "$root")/debootstrap.log"
else
  say "reusing the arm64 root at $root"
fi

mounts=()
cleanup() {
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" 2>/dev/null || umount -l "${mounts[$i]}"; done
  [ -n "${broker_pid:-}" ] && kill "$broker_pid" 2>/dev/null || true
  [ -n "${sub_pid:-}" ] && kill "$sub_pid" 2>/dev/null || true
  [ -n "${work:-}" ] && rm -rf "$work"
}
trap cleanup EXIT
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
mount --bind /dev "$root/dev"; mounts+=("$root/dev")
mkdir -p "$root/dev/shm" && mount -t tmpfs tmpfs "$root/dev/shm"; mounts+=("$root/dev/shm")
cp /etc/resolv.conf "$root/etc/resolv.conf"
# A Raspberry Pi 4's four Cortex-A72 cores, as its kernel reports them.
cpuinfo=$root/opt/cortex-a72.cpuinfo
: >"$cpuinfo"
for core in 0 1 2 3; do
  printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$core" >>"$cpuinfo"
done
printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n' >>"$cpuinfo"
mount --bind "$cpuinfo" "$root/proc/cpuinfo"; mounts+=("$root/proc/cpuinfo")

# The host's certificate bundle, for a network that reaches PyPI through a TLS-inspecting proxy.
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$root/etc/ssl/certs/host-ca-bundle.crt"
arm() {  # a command in the arm64 root, with a clean environment (the host's pip settings point at host paths)
  env -i PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 QEMU_CPU="$cpu" \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt "$(command -v chroot)" "$root" "$@"
}
say "arm64 root: $(arm uname -m), $(arm python3 --version), CPU model $cpu ($(arm grep -m1 'CPU part' /proc/cpuinfo))"

# --- the board install, as docs/install.md says ---
rm -rf "$root/opt/humwatch"; mkdir -p "$root/opt/humwatch"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$root/opt/humwatch"
[ -x "$root/opt/venv/bin/python" ] || arm python3 -m venv /opt/venv
say "pip install '.[audio,calibrate]' in the arm64 root"
started=$SECONDS
arm sh -c "cd /opt/humwatch && pip install -q '.[audio,calibrate]'"
say "installed in $((SECONDS - started)) s: $(arm pip list 2>/dev/null | grep -iE '^(ai-edge-litert|numpy|scipy|scikit-learn|pyaudio) ' | tr -s ' ' | paste -sd, -)"

# --- the same model and sound on both sides ---
work=$(mktemp -d)
# The model at the same absolute path in the root: the x86 bundle names it there.
mkdir -p "$root$(dirname "$model")" "$root/opt/smoke"
cp "$model" "$model".* "$root$(dirname "$model")/"
model_in_root=$model
rm -rf "$root/opt/smoke"/*; mkdir -p "$root/opt/smoke/calibrate" "$root/opt/smoke/score"
clips=("$audio"/train/*.wav)  # an array, not `ls | head`: pipefail would trip on head's early close
cp "${clips[@]:0:40}" "$root/opt/smoke/calibrate/"
cp "${clips[@]: -4}" "$audio"/test/*.wav "$root/opt/smoke/score/"
cp -r "$root/opt/smoke" "$work/smoke"

say "x86: calibrate (--preset $preset) and score"
"$x86" calibrate "$work/smoke/calibrate" --model "$model" --machine smoke --preset "$preset" --out "$work/bundle" \
  >"$work/x86-calibrate.log" 2>&1
# score exits 1 when a file is judged anomalous (the test clip is): the JSON lines are what is compared.
"$x86" score --bundle "$work/bundle" --json "$work"/smoke/score/*.wav >"$work/x86-scores.jsonl" 2>/dev/null || true
cp -rL "$work/bundle" "$root/opt/smoke/x86-bundle"

say "arm64: known answers (the model's reference images through this runtime)"
known='from humwatch.agent.model.extractor import Extractor as E; import sys; d = E(sys.argv[1]).known_answer_difference; print("none stored" if d is None else f"{d:.2e} of scale")'
say "known answers, CPU $cpu: $(arm python -c "$known" "$model_in_root" 2>&1 | tail -1)"
say "known answers, qemu's default CPU (max, with SME): $(env QEMU_CPU=max "$(command -v chroot)" "$root" \
  /opt/venv/bin/python -c "$known" "$model_in_root" 2>&1 | tail -1 | cut -c1-300)"

if wants score; then
say "arm64: score with the x86 bundle"
started=$SECONDS
arm sh -c 'humwatch score --bundle /opt/smoke/x86-bundle --json /opt/smoke/score/*.wav' \
  >"$work/arm-scores.jsonl" 2>"$work/arm-score.log" || true
[ -s "$work/arm-scores.jsonl" ] || { say "FAILED: arm64 score: $(tail -1 "$work/arm-score.log")"; exit 1; }
scored=("$work"/smoke/score/*.wav)
say "arm64: scored ${#scored[@]} files in $((SECONDS - started)) s"
"$repo/.venv/bin/python" - "$work/x86-scores.jsonl" "$work/arm-scores.jsonl" <<'EOF'
import json, sys
import numpy as np
x86, arm = ([json.loads(line) for line in open(p)] for p in sys.argv[1:3])
worst = 0.0
for a, b in zip(x86, arm):
    sa, sb = np.array(a["window_scores"]), np.array(b["window_scores"])
    worst = max(worst, float(np.max(np.abs(sa - sb))))
    print(f"  {a['file'].rsplit('/', 1)[-1]}: x86 max {sa.max():.4f}, arm64 max {sb.max():.4f}, "
          f"{a.get('verdict', '')} / {b.get('verdict', '')}")
print(f"arm64_smoke: score: {len(x86)} files, largest window-score difference x86 vs arm64: {worst:.2e}")
EOF

fi

if wants calibrate; then
say "arm64: calibrate (--preset $preset) on the same 40 clips"
started=$SECONDS
arm humwatch calibrate /opt/smoke/calibrate --model "$model" --machine smoke --preset "$preset" --out /opt/smoke/arm-bundle \
  >"$work/arm-calibrate.log" 2>&1 || { tail -5 "$work/arm-calibrate.log"; exit 1; }
say "arm64: calibrated in $((SECONDS - started)) s"
"$repo/.venv/bin/python" - "$work/bundle/bundle.json" "$root/opt/smoke/arm-bundle/bundle.json" <<'EOF'
import json, sys
x86, arm = (json.load(open(p)) for p in sys.argv[1:3])
def find(d, key):
    if isinstance(d, dict):
        for k, v in d.items():
            if k == key:
                return v
            found = find(v, key)
            if found is not None:
                return found
    return None
for key in ("high", "heldout_score_median", "heldout_score_max"):
    print(f"arm64_smoke: calibrate: {key}: x86 {find(x86, key)}, arm64 {find(arm, key)}")
EOF

fi

if wants test; then
say "arm64: scripts/test --fast (the unit layer) in a copy of the checkout, ../shared bound read-only beside it"
rm -rf "$root/opt/checkout"; mkdir -p "$root/opt/checkout/humwatch" "$root/opt/checkout/shared"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$root/opt/checkout/humwatch"
mount --bind -o ro "$repo/../shared" "$root/opt/checkout/shared"; mounts+=("$root/opt/checkout/shared")
started=$SECONDS
status=0
arm sh -c "cd /opt/checkout/humwatch && scripts/test --fast -q -rfEs -p no:cacheprovider" >"$work/arm-test.log" 2>&1 \
  || status=$?
say "arm64: scripts/test --fast exited $status after $((SECONDS - started)) s: $(grep -E '(passed|failed|error)' \
  "$work/arm-test.log" | tail -1)"
grep -E '^(SKIPPED|FAILED|ERROR)' "$work/arm-test.log" | cut -c1-200 | sed 's/^/  /' || true
fi

wants run || { say "done"; exit 0; }
say "arm64: run (WAV replay) against mosquitto on 127.0.0.1"
port=$("$repo/.venv/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
broker_pid=$!
# One minute of normal sound replayed at its real pace: six windows, scored once the agent is connected (a fast
# replay of one clip can end before the emulated agent has reached the broker).
"$repo/.venv/bin/python" - "$root/opt/smoke/replay.wav" "${clips[@]:40:6}" <<'EOF'
import sys, wave
with wave.open(sys.argv[1], "wb") as out:
    for i, path in enumerate(sys.argv[2:]):
        with wave.open(path) as clip:
            if i == 0:
                out.setparams(clip.getparams())
            out.writeframes(clip.readframes(clip.getnframes()))
EOF
replay=/opt/smoke/replay.wav
cat >"$root/opt/smoke/smoke.toml" <<EOF
[machine]
name = "smoke"
[model]
bundle = "/opt/smoke/x86-bundle"
[audio]
source = "file"
file = "$replay"
realtime = true
[alarm]
score_interval = 1.0
[mqtt]
host = "127.0.0.1"
port = $port
[state]
dir = "/opt/smoke/state"
EOF
# The subscriber: paho from the x86 environment (mosquitto-clients need not be installed).
"$repo/.venv/bin/python" - "$port" >"$work/messages.txt" 2>"$work/subscriber.log" <<'EOF' &
import sys
import paho.mqtt.client as mqtt
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
client.on_connect = lambda c, userdata, flags, reason, properties: c.subscribe("humwatch/smoke/#")
client.on_message = lambda c, userdata, m: print(m.topic, m.payload.decode(errors="replace"), flush=True)
client.connect("127.0.0.1", int(sys.argv[1]))
client.loop_forever()
EOF
sub_pid=$!
arm timeout 600 humwatch run --config /opt/smoke/smoke.toml >"$work/arm-run.log" 2>&1 &
run_pid=$!
for _ in $(seq 900); do  # the agent stops by itself at the end of the replay
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 1
done
kill -TERM "$run_pid" 2>/dev/null || true; wait "$run_pid" 2>/dev/null || true
sleep 1
kill "$sub_pid" 2>/dev/null || true
say "run: agent log: $(grep -m3 -E 'INFO|ERROR' "$work/arm-run.log" | cut -c1-160 | paste -sd'|' -)"
"$x86" score --bundle "$work/bundle" --json "$root$replay" >"$work/x86-replay.json" 2>/dev/null || true
"$repo/.venv/bin/python" - "$work/messages.txt" "$work/x86-replay.json" <<'EOF'
import json, sys
published = [json.loads(line.split(" ", 1)[1]) for line in open(sys.argv[1]) if line.startswith("humwatch/smoke/score ")]
x86 = json.loads(open(sys.argv[2]).read() or "{}")
by_time = dict(zip(x86.get("window_end_times", []), x86.get("window_scores", [])))
pairs = [(m["window_score"], by_time[round(m["audio_time"], 3)]) for m in published
         if round(m["audio_time"], 3) in by_time]
print(f"arm64_smoke: run: {len(published)} score messages from the arm64 agent; {len(pairs)} matched to x86 "
      f"`score` windows of the same replay" + (f", largest difference {max(abs(a - b) for a, b in pairs):.2e}, "
      f"arm64 {', '.join(f'{a:.3f}' for a, _ in pairs[:4])} vs x86 {', '.join(f'{b:.3f}' for _, b in pairs[:4])}"
      if pairs else ""))
sys.exit(0 if published else 1)
EOF
say "done"
