#!/usr/bin/env bash
# Issue 22's headline comparison on ../shared/data/aerial-drone at 3 seeds: full-image training
# at 800 px (60 epochs) against the sliced training that validation chose on seed 0 (416 px
# windows at native resolution, half of them placed around a box, 180 epochs). Seed 0 of both is
# restored from the 5-variant grid (native_aerial.sh), whose other variants stay at one seed:
# each of its seeds costs about 2.5 hours of this 2-core machine, this grid's two more 1 hour.
# SHARDS=1 runs one shard (beside another job); a later run with 2 takes over its runs.
source "$(dirname "$0")/common.sh"
mkdir -p runs/native-aerial-key
[ -f docs/results/native-aerial-key/results.jsonl ] ||
  python benchmarks/grid_copy.py restore docs/results/native-aerial runs/native-aerial-key
[ ! -d runs/native-aerial-key/runs ] || find runs/native-aerial-key/runs -mindepth 1 \
  -maxdepth 1 -not -name 'baseline-*' -not -name 'sliced_obj50*' -exec rm -r {} +
run_grid runs/native-aerial-key docs/results/native-aerial-key \
  --task detect --recipe detect-bccd --data yolo:../shared/data/aerial-drone/data.yaml \
  --tricks "sliced_obj50=det.slice_size=416,sliced_obj50=det.slice_object_prob=0.5,sliced_obj50=train.epochs=180" \
  --metric map --seeds 3 --launcher local --shards "${SHARDS:-2}" \
  --set data.image_size=800 --set train.epochs=60 --set train.eval_every=20
