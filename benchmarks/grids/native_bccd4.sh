#!/usr/bin/env bash
# Issue 22 on BCCD/4 (BCCD shrunk 4x on disk, 160x120: most boxes small), 3 seeds: full-image
# training at 160 px (rectangular, and square), 30 epochs, against sliced training at 2x the
# native resolution (160 px windows of the 320x240 image, 90 epochs): 20% or 50% of the
# samples shown whole, or half the windows placed around a box; and the control for the 2x,
# full-image training on the whole image enlarged to 320 px for 30 epochs: as many pixels per
# run as the sliced runs (30 x 320x240 = 90 x 160x160).
source "$(dirname "$0")/common.sh"
python -c 'import sys; sys.path.insert(0, "benchmarks"); from pathlib import Path
from small_objects import bccd_dir, downscale_voc; downscale_voc(bccd_dir(), Path("runs/small/bccd4-data"), 4)'
S="det.slice_size=160,det.slice_scale=2,train.epochs=90"
run_grid runs/native-bccd4 docs/results/native-bccd4 \
  --task detect --recipe detect-bccd --data voc:runs/small/bccd4-data \
  --tricks "square=data.rect=false" \
  --also "sliced2x=${S//,/,sliced2x=},sliced2x_whole50=${S//,/,sliced2x_whole50=},sliced2x_whole50=det.slice_full_prob=0.5,sliced2x_obj50=${S//,/,sliced2x_obj50=},sliced2x_obj50=det.slice_object_prob=0.5,full2x=data.image_size=320" \
  --metric map --seeds 3 --launcher local --shards 2 \
  --set data.image_size=160 --set train.epochs=30 --set train.eval_every=10
