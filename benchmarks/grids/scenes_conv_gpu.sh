#!/usr/bin/env bash
# Issue 23's at-convergence grid on Fashion scenes (scenes_conv.sh's: 500 training scenes, 40
# epochs, step decay, each trick alone, the stack, the bag chosen on validation, 3 seeds), every
# run, baselines included, on one GPU in fp32 with local shards sharing it. For a lent GPU
# machine whose Python has the package's dependencies:
#   PYTHONPATH=src FREEBIES_DATA=DIR benchmarks/grids/scenes_conv_gpu.sh PACK_DIR SECONDS
# DIR holds fashion-mnist/ (the scenes are made from it on first use); the grid trains for at
# most SECONDS (rerun to resume it) and its files, checkpoints left out, are packed into
# PACK_DIR/grid.tgz every 30 seconds and at the end, for `benchmarks/grid_copy.py`.
set -uo pipefail
cd "$(dirname "$0")/../.."
pack_dir=$1 seconds=$2 grid=runs/ablate-det-scenes-conv-gpu
python3 -c "from freebies.data.scenes import ensure_scenes; print('scenes:', ensure_scenes())"
pack() {
  tar czf "$pack_dir/grid.tgz.part" --exclude='*.pt' "$grid" 2>/dev/null
  mv "$pack_dir/grid.tgz.part" "$pack_dir/grid.tgz"
}
mkdir -p "$grid"
(while sleep 30; do pack; done) &
packer=$!
source benchmarks/grids/scenes_conv_args.sh
timeout "$seconds" python3 -m freebies ablate --out "$grid" "${SCENES_CONV_GRID[@]}" \
  --launcher local --shards "${SHARDS:-9}" --set train.device=cuda --set train.precision=fp32 \
  "${@:3}"
status=$?
kill "$packer"
pack
exit $status
