"""The seed notes' training tricks, each a pure function on batched tensors.

Importable on their own for use in any training loop: nothing here imports the CLI or the
recipe config. Bad arguments raise `ValueError` or `TypeError` naming the function and its
argument (see `checks.py`); recipe validation and the CLI turn them into one-line messages
that name the recipe key.
"""

from freebies.tricks.autoaugment import autoaugment, make_policy
from freebies.tricks.distill import kd_loss
from freebies.tricks.ema import ema_model
from freebies.tricks.erasing import cutout, random_erasing
from freebies.tricks.mixing import cutmix, mixup, pick_mixer, ricap
from freebies.tricks.photometric import color_jitter, pca_basis, pca_lighting, random_rotate
from freebies.tricks.targets import one_hot, smooth_targets

__all__ = [
    "autoaugment",
    "color_jitter",
    "cutmix",
    "cutout",
    "ema_model",
    "kd_loss",
    "make_policy",
    "mixup",
    "one_hot",
    "pca_basis",
    "pca_lighting",
    "pick_mixer",
    "random_erasing",
    "random_rotate",
    "ricap",
    "smooth_targets",
]
