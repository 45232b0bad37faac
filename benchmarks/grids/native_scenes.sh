#!/usr/bin/env bash
# Issue 22 on Fashion scenes, 3 seeds, at the at-convergence scenes budget of issue 23 (500
# training scenes, 40 epochs, step decay): full-image training at 256 px against sliced
# training at 2x (256 px windows of the 512 px scene), same epochs and steps.
source "$(dirname "$0")/common.sh"
run_grid runs/native-scenes docs/results/native-scenes \
  --task detect --recipe detect \
  --tricks "sliced2x=det.slice_size=256,sliced2x=det.slice_scale=2" \
  --metric map --seeds 3 --launcher local --shards 2 \
  --set data.limit_train=500 --set train.epochs=40 --set train.eval_every=5 --set sched.decay=step
