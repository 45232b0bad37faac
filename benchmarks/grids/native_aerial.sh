#!/usr/bin/env bash
# Issue 22 on ../shared/data/aerial-drone (YOLO, data.yaml split by sequence), 3 seeds:
# full-image training at 800 px (rectangular batches, and square), 60 epochs, against sliced
# training on 416 px windows at native resolution for 180 epochs, with 20% (the default) or
# 50% of the samples shown whole, or half the windows placed around a box.
source "$(dirname "$0")/common.sh"
run_grid runs/native-aerial docs/results/native-aerial \
  --task detect --recipe detect-bccd --data yolo:../shared/data/aerial-drone/data.yaml \
  --tricks "square=data.rect=false" \
  --also "sliced=det.slice_size=416,sliced=train.epochs=180,sliced_whole50=det.slice_size=416,sliced_whole50=det.slice_full_prob=0.5,sliced_whole50=train.epochs=180,sliced_obj50=det.slice_size=416,sliced_obj50=det.slice_object_prob=0.5,sliced_obj50=train.epochs=180" \
  --metric map --seeds 3 --launcher local --shards 2 \
  --set data.image_size=800 --set train.epochs=60 --set train.eval_every=20
