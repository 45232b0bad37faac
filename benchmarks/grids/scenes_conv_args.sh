# Sourced by scenes_conv.sh (CPU) and scenes_conv_gpu.sh (one GPU): issue 23's at-convergence
# grid on Fashion scenes, the same `freebies ablate` arguments on both.
SCENES_CONV_GRID=(
  --task detect --recipe detect
  --tricks det_mixup,det_label_smoothing,det_expand,det_crop,det_color_jitter,cosine,det_random_shapes
  --mode stack --bag --seeds 3
  --set data.limit_train=500 --set train.epochs=40 --set train.eval_every=5 --set sched.decay=step
)
