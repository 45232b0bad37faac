#!/usr/bin/env bash
# Every grid and benchmark behind issues 22 and 23, in order, each resuming where it stopped:
#   nohup benchmarks/grids/all.sh > runs/all.log 2>&1 &
# About 20 hours of a 2-core CPU. Results land in docs/results as they finish.
source "$(dirname "$0")/common.sh"
G=benchmarks/grids
infer() {  # GRID NAME: tiles and pyramid on each trained run, chosen on val (skip when done)
  [ -f "docs/results/native_inference_$2.json" ] ||
    python benchmarks/native_inference.py "$1" --out "docs/results/native_inference_$2.json"
}
$G/native_bccd4.sh && infer runs/native-bccd4 bccd4
$G/native_scenes.sh && infer runs/native-scenes scenes
$G/native_aerial_key.sh && infer runs/native-aerial-key aerial
python benchmarks/detect_tuning.py --recipe detect-bccd --runs runs/tune \
  --variant 640-e24=data.image_size:640,train.epochs:24 --seeds 2
$G/scenes_conv.sh
$G/bccd_e40.sh
