#!/usr/bin/env bash
# Issue 23: the detection bag of freebies at convergence on Fashion scenes (500 training
# scenes, 40 epochs, step decay so that cosine is a trick), each trick alone, all at once, and
# the bag chosen on validation, 3 seeds. The baselines are native_scenes.sh's, linked in.
# SHARDS=1 runs one shard (beside another job); a later run with 2 takes over its runs.
source "$(dirname "$0")/common.sh"
mkdir -p runs/ablate-det-scenes-conv/runs
for s in 0 1 2; do
  if [ -d runs/native-scenes/runs/baseline-s$s ] && [ ! -e runs/ablate-det-scenes-conv/runs/baseline-s$s ]; then
    ln -s ../../native-scenes/runs/baseline-s$s runs/ablate-det-scenes-conv/runs/baseline-s$s
  fi
done
source benchmarks/grids/scenes_conv_args.sh
run_grid runs/ablate-det-scenes-conv docs/results/detection-ablation-scenes-conv \
  "${SCENES_CONV_GRID[@]}" --launcher local --shards "${SHARDS:-2}"
