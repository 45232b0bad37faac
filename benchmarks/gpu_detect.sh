#!/usr/bin/env bash
# The `detect` recipe on a lent GPU: 500 training scenes for EPOCHS epochs in fp32, then in
# bf16 autocast, one process alone; then PARALLEL fp32 processes at once, the aggregate img/s
# that local shards of a grid share. Each run's summary.json is one line of OUT_DIR/gpu_detect.jsonl.
#   PYTHONPATH=src FREEBIES_DATA=DIR benchmarks/gpu_detect.sh OUT_DIR [EPOCHS] [PARALLEL]
# DIR holds fashion-mnist/ (the scenes are made from it on first use).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=$1 epochs=${2:-3} parallel=${3:-4} runs=runs/gpu-detect
python3 -c "from freebies.data.scenes import ensure_scenes; print('scenes:', ensure_scenes())"
train() {  # NAME PRECISION
  python3 -m freebies detect train --recipe detect --out "$runs/$1" --epochs "$epochs" \
    --set data.limit_train=500 --set train.eval_every="$epochs" --set train.device=cuda \
    --set train.precision="$2" >"$out/$1.log" 2>&1 &&
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['run']=sys.argv[2]; \
print(json.dumps(d))" "$runs/$1/summary.json" "$1" >>"$out/gpu_detect.jsonl"
}
train fp32 fp32
train bf16 bf16
for i in $(seq "$parallel"); do train "parallel$i-of-$parallel" fp32 & done
wait
