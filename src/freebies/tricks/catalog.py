"""Every trick in one table: its recipe keys, the setting that switches it on, the paper.

`freebies tricks` prints it; the "on" setting is what `freebies train --set` needs to try one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Trick:
    name: str
    keys: tuple[str, ...]  # recipe keys that control it
    on: dict = field(default_factory=dict)  # a documented setting that switches it on
    paper: str = ""
    link: str = ""
    what: str = ""


TRICKS = (
    Trick(
        "warmup",
        ("sched.warmup_epochs", "sched.warmup", "sched.warmup_lr"),
        {"sched.warmup_epochs": 1.0},
        "Goyal et al. 2017 (gradual); He et al. 2016 (constant)",
        "https://arxiv.org/abs/1706.02677",
        "start from a small LR and raise it per iteration (linear) or hold it (constant)",
    ),
    Trick(
        "cosine",
        ("sched.decay", "sched.min_lr"),
        {"sched.decay": "cosine"},
        "Loshchilov & Hutter 2017; He et al. 2019",
        "https://arxiv.org/abs/1608.03983",
        "LR follows 1/2 (1 + cos(pi t / T)) over the post-warmup iterations",
    ),
    Trick(
        "linear_scaling",
        ("optim.lr_scaling", "optim.lr_base_batch"),
        {"optim.lr_scaling": "linear"},
        "Goyal et al. 2017",
        "https://arxiv.org/abs/1706.02677",
        "LR = base LR x global batch / optim.lr_base_batch (256)",
    ),
    Trick(
        "label_smoothing",
        ("loss.label_smoothing",),
        {"loss.label_smoothing": 0.1},
        "Szegedy et al. 2016",
        "https://arxiv.org/abs/1512.00567",
        "targets (1 - eps) onehot + eps / K; applied once, after mixing",
    ),
    Trick(
        "mixup",
        ("aug.mixup", "aug.mix_prob", "aug.mix_off_epochs", "aug.mix_mode", "aug.switch_prob"),
        {"aug.mixup": 0.2},
        "Zhang et al. 2018",
        "https://arxiv.org/abs/1710.09412",
        "blend pairs of images and their targets with lambda ~ Beta(alpha, alpha)",
    ),
    Trick(
        "cutmix",
        ("aug.cutmix", "aug.mix_prob", "aug.mix_off_epochs", "aug.mix_mode", "aug.switch_prob"),
        {"aug.cutmix": 1.0},
        "Yun et al. 2019",
        "https://arxiv.org/abs/1905.04899",
        "paste a box from a partner image; targets weighted by the true pasted area",
    ),
    Trick(
        "ricap",
        ("aug.ricap", "aug.mix_prob", "aug.mix_off_epochs", "aug.mix_mode", "aug.switch_prob"),
        {"aug.ricap": 0.3},
        "Takahashi et al. 2018",
        "https://arxiv.org/abs/1811.09030",
        "patch crops of four images together; targets weighted by patch areas",
    ),
    Trick(
        "cutout",
        ("aug.cutout", "aug.cutout_holes"),
        {"aug.cutout": 8},
        "DeVries & Taylor 2017",
        "https://arxiv.org/abs/1708.04552",
        "zero a square (side in pixels) at a random centre, clipped at the borders",
    ),
    Trick(
        "random_erasing",
        ("aug.random_erasing", "aug.erasing_scale", "aug.erasing_ratio", "aug.erasing_value"),
        {"aug.random_erasing": 0.5},
        "Zhong et al. 2020",
        "https://arxiv.org/abs/1708.04896",
        "with probability p, fill a random rectangle (area and aspect ranges) with noise",
    ),
    Trick(
        "autoaugment",
        ("aug.autoaugment",),
        {"aug.autoaugment": "trivialaugment"},
        "Cubuk et al. 2019; Cubuk et al. 2020; Muller & Hutter 2021",
        "https://arxiv.org/abs/1805.09501",
        "torchvision's learned / random augmentation policies, per image",
    ),
    Trick(
        "distillation",
        ("distill.teacher", "distill.alpha", "distill.temperature"),
        {},
        "Hinton et al. 2015",
        "https://arxiv.org/abs/1503.02531",
        "(1 - a) CE + a T^2 KL(teacher^T || student^T); needs distill.teacher=CKPT",
    ),
    Trick(
        "adabound",
        ("optim.name", "optim.final_lr", "optim.gamma"),
        {"optim.name": "adabound", "optim.lr": 0.001},
        "Luo et al. 2019",
        "https://arxiv.org/abs/1902.09843",
        "Adam whose per-weight step is clipped to bounds that converge to SGD's LR",
    ),
    Trick(
        "ema",
        ("ema.decay", "ema.warmup"),
        {"ema.decay": 0.999, "ema.warmup": True},
        "Polyak & Juditsky 1992; warm-up as TensorFlow's ExponentialMovingAverage",
        "",
        "evaluate an exponential moving average of the weights (BN buffers included)",
    ),
    Trick(
        "no_bn_decay",
        ("optim.no_bn_decay",),
        {"optim.no_bn_decay": True},
        "He et al. 2019 (Bag of Tricks)",
        "https://arxiv.org/abs/1812.01187",
        "no weight decay on norm weights and biases",
    ),
    Trick(
        "crop_flip",
        ("aug.crop_padding", "aug.hflip"),
        {"aug.crop_padding": 4, "aug.hflip": True},
        "He et al. 2016 (CIFAR augmentation)",
        "https://arxiv.org/abs/1512.03385",
        "random crop after zero-padding, and horizontal mirroring (on in the baseline)",
    ),
    Trick(
        "alternating_flip",
        ("aug.flip_mode", "aug.hflip"),
        {"aug.flip_mode": "alternate"},
        "Jordan 2024 (airbench)",
        "https://arxiv.org/abs/2404.00498",
        "each image flips every other epoch, a random half in the first",
    ),
    Trick(
        "bias_lr",
        ("optim.bias_lr_scale",),
        {"optim.bias_lr_scale": 64.0},
        "Jordan 2024 (airbench)",
        "https://arxiv.org/abs/2404.00498",
        "norm weights and biases train at a multiple of the LR (decay per step unchanged)",
    ),
    Trick(
        "tta",
        ("train.tta", "train.tta_shift"),
        {"train.tta": True},
        "Krizhevsky et al. 2012; Jordan 2024 (shifted views)",
        "https://dl.acm.org/doi/10.1145/3065386",
        "average the prediction of the image and its mirror (x2 inference cost, not free)",
    ),
    Trick("vflip", ("aug.vflip",), {"aug.vflip": True}, "", "", "random vertical flip"),
    Trick(
        "rotate",
        ("aug.rotate",),
        {"aug.rotate": 10.0},
        "",
        "",
        "random rotation in [-deg, deg], each image its own angle",
    ),
    Trick(
        "color_jitter",
        ("aug.color_jitter",),
        {"aug.color_jitter": 0.2},
        "",
        "",
        "brightness, contrast and saturation factors in [1 - s, 1 + s] per image",
    ),
    Trick(
        "pca_lighting",
        ("aug.pca_lighting",),
        {"aug.pca_lighting": 0.1},
        "Krizhevsky et al. 2012 (AlexNet)",
        "https://dl.acm.org/doi/10.1145/3065386",
        "add the training set's RGB principal components with random weights per image",
    ),
    Trick(
        "xavier_init",
        ("model.init",),
        {"model.init": "xavier"},
        "Glorot & Bengio 2010",
        "https://proceedings.mlr.press/v9/glorot10a.html",
        "Xavier-uniform initialisation instead of Kaiming",
    ),
    Trick(
        "zero_init_residual",
        ("model.zero_init_residual",),
        {"model.zero_init_residual": True},
        "Goyal et al. 2017",
        "https://arxiv.org/abs/1706.02677",
        "zero the last BN of each residual branch: every block starts as the identity",
    ),
    Trick(
        "dropout",
        ("model.dropout",),
        {"model.dropout": 0.2},
        "Srivastava et al. 2014",
        "https://jmlr.org/papers/v15/srivastava14a.html",
        "dropout before the classifier",
    ),
    Trick(
        "nesterov",
        ("optim.nesterov", "optim.momentum"),
        {"optim.nesterov": True},
        "Sutskever et al. 2013",
        "https://proceedings.mlr.press/v28/sutskever13.html",
        "Nesterov momentum for SGD",
    ),
    Trick(
        "weight_decay",
        ("optim.weight_decay",),
        {"optim.weight_decay": 5e-4},
        "",
        "",
        "L2 regularisation through the optimizer (on in the baseline)",
    ),
    Trick(
        "early_stopping",
        ("train.early_stop_patience", "data.val_split"),
        {"train.early_stop_patience": 5},
        "",
        "",
        "stop when validation accuracy has not improved for N evaluations; needs data.val_split",
    ),
    Trick(
        "acnet",
        ("model.acnet", "model.acnet_side_gamma", "model.acnet_square_gamma"),
        {"model.acnet": True},
        "Ding et al. 2019",
        "https://arxiv.org/abs/1908.03930",
        "train k x k + 1 x k + k x 1 branches; `freebies fuse` folds them into one conv",
    ),
)
