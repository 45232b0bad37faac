#!/usr/bin/env bash
# Issue 23: does the stack of the three BCCD winners (colour jitter, expand, mixup; top3_val of
# the 20-epoch grid) pay at twice the budget? Baseline and top3_val, 40 epochs, 3 seeds.
source "$(dirname "$0")/common.sh"
run_grid runs/ablate-det-bccd-e40 docs/results/detection-ablation-bccd-e40 \
  --task detect --recipe detect-bccd \
  --tricks "top3_val=det.color_jitter=true,top3_val=det.expand=true,top3_val=det.mixup=1.5" \
  --seeds 3 --launcher local --shards 2 \
  --set train.epochs=40 --set train.eval_every=5 --set sched.decay=step
