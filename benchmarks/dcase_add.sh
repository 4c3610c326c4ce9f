#!/usr/bin/env bash
# calibrate --add on a DCASE 2021-2025 section: calibrate on the source-domain training clips, score the test clips,
# add the target-domain training clips to the bundle, score again. Prints clip_metrics.py's figures for both.
#   benchmarks/dcase_add.sh [DCASE_TYPE_DIR] [WORK_DIR]   (default: ../shared/audio/dcase2023-toycar, a temp folder)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/audio/dcase2023-toycar}
work=${2:-$(mktemp -d)}
humwatch=.venv/bin/humwatch
python=.venv/bin/python
mkdir -p "$work/source" "$work/target"
ln -sf "$(realpath "$data")"/train/*_source_train_* "$work/source/"
ln -sf "$(realpath "$data")"/train/*_target_train_* "$work/target/"
$humwatch calibrate "$work/source" --out "$work/bundle" --machine dcase-add > "$work/calibrate.txt"
echo "== calibrated on $(ls "$work/source" | wc -l) source-domain training clips"
$humwatch score --json --bundle "$work/bundle" "$data"/test/*.wav > "$work/before.jsonl" || true
$python benchmarks/clip_metrics.py < "$work/before.jsonl"
$humwatch calibrate --add "$work/target" --out "$work/bundle" > "$work/add.txt"
echo "== after calibrate --add of $(ls "$work/target" | wc -l) target-domain training clips"
$humwatch score --json --bundle "$work/bundle" "$data"/test/*.wav > "$work/after.jsonl" || true
$python benchmarks/clip_metrics.py < "$work/after.jsonl"
