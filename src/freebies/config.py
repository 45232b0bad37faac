"""A recipe is one nested dataclass; its defaults are the plain baseline.

YAML recipes override the defaults and ``--set a.b=value`` overrides both. An unknown key is an
error that names the nearest valid key; a value of the wrong type is an error that names the
expected type. The resolved recipe is saved in every run folder as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from freebies import catalog
from freebies.errors import UsageError, nearest, warn


@dataclass
class DataCfg:
    spec: str = "fashion-mnist"  # see `freebies train --help` for the forms
    image_size: int | None = None  # folder images: resized square; detection: letterbox side
    val_split: float = 0.0  # fraction of train held out for validation (choosing, never test)
    split_seed: int = 0  # the validation split is fixed across training seeds
    limit_train: int | None = None  # keep only the first N training images (smoke runs)
    limit_test: int | None = None
    workers: int = 4  # DataLoader worker processes when streaming


@dataclass
class ClassifyDataCfg(DataCfg):
    stream: bool = False  # folder: only; decode files in DataLoader workers instead of memory


@dataclass
class DetectDataCfg(DataCfg):
    spec: str = "scenes"  # see `freebies detect train --help` for the forms
    test_split: float = 0.2  # a flat YOLO folder: seeded share held out for test
    rect: bool = True  # keep aspect ratios: batch shapes padded to 32, not to a square
    stream: bool | None = None  # read images from disk per batch; null: when over memory_mb
    memory_mb: int = 4096  # the in-memory images' budget (MiB) when stream is null


@dataclass
class AugCfg:
    crop_padding: int = 4  # random crop after zero-padding by this many pixels; 0 = off
    hflip: bool = True  # random horizontal flip
    flip_mode: str = "random"  # random | alternate: each image flips every other epoch
    vflip: bool = False  # random vertical flip
    rotate: float = 0.0  # random rotation in [-deg, deg]; 0 = off
    color_jitter: float = 0.0  # brightness / contrast / saturation factors in [1 - s, 1 + s]
    pca_lighting: float = 0.0  # AlexNet PCA lighting, alpha std (0.1 in the paper); 0 = off
    autoaugment: str = "none"  # none | cifar10 | imagenet | svhn | randaugment | trivialaugment
    cutout: int = 0  # Cutout square side in pixels; 0 = off
    cutout_holes: int = 1
    random_erasing: float = 0.0  # Random Erasing probability per image; 0 = off
    erasing_scale: tuple[float, float] = (0.02, 0.4)  # erased share of the image area
    erasing_ratio: tuple[float, float] = (0.3, 3.3)  # height / width of the rectangle
    erasing_value: str = "random"  # random | mean | zero
    mixup: float = 0.0  # alpha of Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0  # alpha of Beta(alpha, alpha); 0 = off
    ricap: float = 0.0  # beta of Beta(beta, beta); 0 = off
    mix_prob: float = 1.0  # probability that a batch is mixed
    mix_off_epochs: int = 0  # no mixing in the last N epochs (as in GluonCV)
    mix_mode: str = "switch"  # switch (random pick) | alternate (in turn), when several are on
    switch_prob: list[float] = field(default_factory=list)  # weights of the mixers that are on


@dataclass
class ModelCfg:
    name: str = "resnet20"


@dataclass
class ClassifyModelCfg(ModelCfg):
    norm: str = "bn"  # bn | gn (GroupNorm: statistics independent of the batch split)
    init: str = "kaiming"  # kaiming | xavier
    zero_init_residual: bool = False  # each residual block starts as the identity
    dropout: float = 0.0  # dropout before the classifier
    acnet: bool = False  # square convs -> ACNet blocks for training; `freebies fuse` folds them
    acnet_side_gamma: float = 1.0  # initial BN weight of the 1xk and kx1 branches only
    acnet_square_gamma: float = 1.0  # initial BN weight of the kxk branch (authors: all three 1/3)


@dataclass
class DetectModelCfg(ModelCfg):
    name: str = "fcos_mobilenet_v3_small"
    backbone_weights: str | None = None  # a local state dict for the backbone


@dataclass
class DetCfg:
    fpn_width: int = 64  # FPN channels, strides 8 to 128 (detection)
    head_convs: int = 4  # conv layers in each FCOS head branch
    score_thresh: float = 0.05  # detections kept above this score (COCO evaluates at ~0.05)
    detections: int = 100  # detections per image at most (COCO's maximum)
    # The bag of freebies for detection (Zhang et al. 2019), each off by default.
    mixup: float = 0.0  # visually coherent mixup: lambda ~ Beta(a, a), 1.5 in the paper; 0 = off
    mixup_off_epochs: int | None = None  # no mixup in the last N epochs; null: a tenth
    label_smoothing: float = 0.0  # epsilon for the classification head's foreground targets
    hflip: bool = False  # random horizontal flip, boxes flipped with the image
    expand: bool = False  # SSD zoom out onto a mean-filled canvas
    expand_ratio: float = 4.0  # the largest zoom-out ratio (SSD: 4)
    crop: bool = False  # SSD random IoU-constrained crop
    crop_min_scale: float = 0.3  # the smallest crop side, as a fraction of the image's (SSD: 0.3)
    color_jitter: bool = False  # per-image brightness, contrast and saturation
    jitter_strength: float = 0.5  # factors in [1 - s, 1 + s] (SSD's contrast range: 0.5)
    random_shapes: list[int] | None = None  # training sizes, multiples of 32; null = off
    # Or as [lo, hi] factors of data.image_size: every multiple of 32 between; load resolves it.
    random_shapes_scale: tuple[float, float] | None = None
    random_shapes_every: int = 10  # draw a new size every k iterations (GluonCV: 10)
    # Sliced training (SAHI): random windows at native resolution; evaluation tiles at that scale.
    slice_size: int | None = None  # window side in px, a multiple of 32; null = off
    slice_scale: float = 1.0  # the images' resolution as a factor of their own (1 = native)
    slice_min_visible: float = 0.5  # a cut box stays when this share of its area is inside
    slice_full_prob: float = 0.2  # the share of samples that show the whole image, shrunk
    slice_object_prob: float = 0.0  # the share of windows placed around a random box; 0 = uniform


@dataclass
class OptimCfg:
    name: str = "sgd"  # sgd | adamw | adabound | amsbound | muon (conv filters; SGD for the rest)
    lr: float = 0.1  # base LR at `lr_base_batch` images per step
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    no_bn_decay: bool = False  # exempt norm weights and all biases from weight decay
    bias_lr_scale: float = 1.0  # LR multiplier for norm weights and biases (airbench uses 64)
    lr_scaling: str = "none"  # none | linear: lr = lr * global_batch / lr_base_batch (Goyal 2017)
    lr_base_batch: int = 256
    betas: tuple[float, float] = (0.9, 0.999)  # adamw, adabound
    final_lr: float = 0.1  # adabound: the SGD LR the bounds converge to
    gamma: float = 1e-3  # adabound: convergence speed of the bounds
    muon_lr: float = 0.24  # muon: LR of the conv filters (the rest use `lr`)
    muon_momentum: float = 0.6  # muon: Nesterov momentum of the conv filters
    muon_normalize: bool = True  # muon: hold each filter bank at norm sqrt(out) (airbench)
    lookahead_every: int = 0  # pull weights to a slow copy every N steps (airbench); 0 = off
    lookahead_decay: float = 0.95  # per step; the pull is decay^N * (t / T)^3


@dataclass
class SchedCfg:
    decay: str = "step"  # step | cosine | linear | none, over the post-warmup iterations
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of the run
    gamma: float = 0.1  # step decay factor at each milestone
    min_lr: float = 0.0  # floor of cosine / linear decay (absolute LR)
    warmup_epochs: float = 0.0
    warmup: str = "linear"  # linear (Goyal 2017, gradual) | constant (He 2016)
    warmup_lr: float = 0.0  # LR at the start of linear warmup, or throughout constant warmup


@dataclass
class LossCfg:
    label_smoothing: float = 0.0  # eps: q = (1 - eps) * onehot + eps / K (Szegedy 2016)


@dataclass
class DistillCfg:
    teacher: str | None = None  # a freebies checkpoint (last.pt or a fused deploy .pt)
    alpha: float = 0.5  # weight of the soft term: (1 - a) CE + a T^2 KL
    temperature: float = 4.0


@dataclass
class EmaCfg:
    decay: float = 0.0  # weight EMA per step, e.g. 0.999; 0 = off; evaluation uses the EMA
    warmup: bool = False  # decay min(decay, (1 + n) / (10 + n)) at the n-th update


@dataclass
class TrainCfg:
    epochs: int = 30
    batch_size: int = 128  # global batch, split across ranks under torchrun
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (runtime.choose_precision) | fp32 | bf16 (autocast) | fp64
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # nn.SyncBatchNorm across ranks (CUDA only)
    eval_every: int = 1  # evaluate every N epochs; the last epoch is always evaluated
    eval_batch_size: int = 256
    threads: int = 0  # torch.set_num_threads on CPU; 0 = leave torch's default
    early_stop_patience: int = 0  # stop after N evaluations without a validation gain; 0 = off
    best_metric: str | None = None  # best.pt is chosen on it; null = val_acc / val_map
    tensorboard: bool = False  # also log each epoch's row to out/tensorboard (extra: tensorboard)


@dataclass
class ClassifyTrainCfg(TrainCfg):
    tta: bool = False  # final evaluation averages the image and its horizontal flip
    tta_shift: int = 0  # with tta: also the views shifted by (+s, +s) and (-s, -s) pixels


@dataclass
class Config:
    """The core every task shares: what the engine and the optimizer set-up read."""

    task: ClassVar[str] = ""
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    sched: SchedCfg = field(default_factory=SchedCfg)
    ema: EmaCfg = field(default_factory=EmaCfg)
    train: TrainCfg = field(default_factory=TrainCfg)


@dataclass
class ClassifyConfig(Config):
    """A classification recipe (`freebies train`): the core, the batch tricks, the loss."""

    task: ClassVar[str] = "classify"
    data: ClassifyDataCfg = field(default_factory=ClassifyDataCfg)
    model: ClassifyModelCfg = field(default_factory=ClassifyModelCfg)
    train: ClassifyTrainCfg = field(default_factory=ClassifyTrainCfg)
    aug: AugCfg = field(default_factory=AugCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)


@dataclass
class DetectConfig(Config):
    """A detection recipe (`freebies detect train`): the core and the detector's section."""

    task: ClassVar[str] = "detect"
    data: DetectDataCfg = field(default_factory=DetectDataCfg)
    model: DetectModelCfg = field(default_factory=DetectModelCfg)
    det: DetCfg = field(default_factory=DetCfg)


CONFIGS: dict[str, type[Config]] = {"classify": ClassifyConfig, "detect": DetectConfig}


RECIPE_DIRS = (
    Path(__file__).parent / "recipes",  # installed wheel
    Path(__file__).resolve().parents[2] / "recipes",  # source checkout / editable install
)


def recipe_names() -> list[str]:
    return sorted({p.stem for d in RECIPE_DIRS if d.is_dir() for p in d.glob("*.yaml")})


def find_recipe(name: str) -> Path:
    """A recipe by name (`recipes/NAME.yaml`) or by path to a YAML file."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"recipe file {name} does not exist")
        return path
    for d in RECIPE_DIRS:
        if (d / f"{name}.yaml").is_file():
            return d / f"{name}.yaml"
    names = recipe_names()
    raise UsageError(
        f"unknown recipe {name!r}{nearest(name, names)}; choose one of {', '.join(names)} "
        "or pass a path to a .yaml file"
    )


def to_dict(cfg: Config) -> dict:
    """The config as plain YAML-safe types (tuples become lists), its task first."""
    return {"task": cfg.task, **yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(cfg))))}


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """`value` converted to type `tp`, or a UsageError naming the key and the expected type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item,) = set(typing.get_args(tp)) - {Ellipsis}
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{key} must be a list of {item.__name__}, got {value!r}")
        if origin is tuple and len(value) != len(typing.get_args(tp)):
            raise UsageError(f"{key} must have {len(typing.get_args(tp))} items, got {value!r}")
        return origin(_check_type(key, v, item) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise UsageError(f"{key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _set(cfg: Any, key: str, value: Any) -> None:
    obj, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(obj)]
        if part not in names:
            prefix = ".".join(parts[:i])
            full = [f"{prefix}.{n}" if prefix else n for n in names]
            raise UsageError(f"unknown key {key!r}{nearest(key, _all_keys(cfg) + full)}")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise UsageError(f"{key} is a section; set one of its keys, e.g. {key}.{names[0]}")
            hints = typing.get_type_hints(type(obj))
            setattr(obj, part, _check_type(key, value, hints[part]))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise UsageError(f"{'.'.join(parts[: i + 1])} is a value, not a section")


def _all_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        name = prefix + f.name
        keys += _all_keys(v, name + ".") if dataclasses.is_dataclass(v) else [name]
    return keys


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Set dotted keys (`{"optim.lr": 0.2}`) or nested dicts on `cfg`, checking every key."""
    for key, value in flatten(overrides).items():
        if key == "task":  # a whole config.yaml: its task must be this config's
            if value != cfg.task:
                raise UsageError(f"task={value!r}: these settings are for {cfg.task}")
            continue
        _set(cfg, key, value)
    return cfg


def parse_set(items: list[str]) -> dict[str, Any]:
    """`["optim.lr=0.2", "aug.hflip=false"]` -> `{"optim.lr": 0.2, "aug.hflip": False}`."""
    out = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--set takes key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" near line {line + 1}" if line is not None else ""
        raise UsageError(f"{path} is not valid YAML{where}; fix the file") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of sections, not {type(data).__name__}")
    return data


CHOICES = {"train.device": ("auto", "cpu", "cuda"), "train.precision": ("auto", "fp32", "bf16")}
TASK_CHOICES = {
    "classify": {
        "model.norm": ("bn", "gn"),
        "train.precision": ("auto", "fp32", "bf16", "fp64"),  # fp64: an exactness check
    },
    "detect": {},
}


def validate(cfg: Config) -> Config:
    """Reject impossible values with a message that says what to change: the core's and the
    task's own rules here, each trick's in its record (`freebies.catalog`)."""
    flat = flatten(to_dict(cfg))
    for key, allowed in {**CHOICES, **TASK_CHOICES[cfg.task]}.items():
        if flat[key] not in allowed:
            hint = nearest(str(flat[key]), list(allowed))
            raise UsageError(f"{key}={flat[key]!r} is not one of {', '.join(allowed)}{hint}")
    task_rules = _classify_rules if isinstance(cfg, ClassifyConfig) else _detect_rules
    rules = _core_rules(cfg) + task_rules(cfg) + catalog.rules(cfg.task, flat)  # type: ignore[arg-type]
    for ok, message in rules:
        if not ok:
            raise UsageError(message)
    return cfg


def _core_rules(cfg: Config) -> list[tuple[bool, str]]:
    """(ok, message) for the shared keys that belong to no trick."""
    return [
        (cfg.train.epochs > 0, "train.epochs must be > 0"),
        (cfg.train.batch_size > 0, "train.batch_size must be > 0"),
        (cfg.train.eval_every > 0, "train.eval_every must be > 0"),
        (cfg.train.eval_batch_size > 0, "train.eval_batch_size must be > 0"),
        (
            all(v is None or v > 0 for v in (cfg.data.limit_train, cfg.data.limit_test)),
            "data.limit_train and data.limit_test must be > 0 (or null for all)",
        ),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (all(0 <= b < 1 for b in cfg.optim.betas), "optim.betas must each be in [0, 1)"),
        (0 <= cfg.data.val_split < 1, "data.val_split must be in [0, 1)"),
        (
            all(0 < m <= 1 for m in cfg.sched.milestones),
            "sched.milestones are fractions of the run, each in (0, 1], e.g. [0.5, 0.75]",
        ),
        (0 < cfg.sched.gamma <= 1, "sched.gamma must be in (0, 1]"),
        (
            cfg.train.best_metric is None or cfg.train.best_metric.startswith("val_"),
            f"train.best_metric={cfg.train.best_metric!r}: best.pt is chosen on a validation "
            "metric (val_...), never on the test set",
        ),
    ]


def _detect_rules(cfg: DetectConfig) -> list[tuple[bool, str]]:
    """(ok, message) for the detection keys that belong to no trick."""
    det = cfg.det
    return [
        (0 <= cfg.data.test_split < 1, "data.test_split must be in [0, 1)"),
        (det.fpn_width >= 2, "det.fpn_width must be >= 2 (channels)"),
        (det.detections > 0, "det.detections must be > 0"),
        (det.head_convs >= 0, "det.head_convs must be >= 0"),
        (0 <= det.score_thresh < 1, "det.score_thresh must be in [0, 1)"),
    ]


def _classify_rules(cfg: ClassifyConfig) -> list[tuple[bool, str]]:
    """(ok, message) for the classification keys that belong to no trick."""
    return [(cfg.data.workers >= 0, "data.workers must be >= 0")]


def advice(cfg: Config) -> list[str]:
    """One-line warnings about legal but suspicious combinations."""
    notes = []
    if cfg.optim.name not in ("sgd", "muon") and cfg.optim.lr >= 0.01:
        notes.append(
            f"optim.lr={cfg.optim.lr} looks like an SGD learning rate but optim.name="
            f"{cfg.optim.name}; adaptive optimizers usually want about 1e-3"
        )
    if isinstance(cfg, ClassifyConfig):
        if cfg.aug.flip_mode == "alternate" and not cfg.aug.hflip:
            notes.append("aug.flip_mode=alternate does nothing while aug.hflip is off")
        if cfg.distill.teacher is None and cfg.distill.alpha != DistillCfg.alpha:
            notes.append("distill.alpha is set but distill.teacher is not; distillation is off")
    return notes


def load(
    recipe: str = "default", overrides: dict[str, Any] | None = None, task: str | None = None
) -> Config:
    """Defaults <- recipe YAML <- overrides, validated, as the config of `task` (default: the
    recipe's own). A recipe of another task is refused, naming the command that trains it."""
    data = read_yaml(find_recipe(recipe))
    if "task" not in data and {"aug", "det"} <= data.keys():  # a format-1 run's config.yaml
        data = {"task": task or "classify", **migrate(data, task or "classify")}
    own = data.pop("task", "classify")
    task = task or own
    if own != task:
        raise UsageError(
            f"recipe {Path(recipe).stem} is a {own} recipe, not a {task} one; train it with "
            f"`{COMMANDS[own]}`, or choose a {task} recipe"
        )
    return validate(
        resolve_shapes(clamp_warmup(apply(apply(CONFIGS[task](), data), overrides or {})))
    )


def clamp_warmup(cfg: Config) -> Config:
    """A run no longer than its recipe's warmup (e.g. `--epochs 1` for a smoke run) warms up
    over its first half instead, with a one-line warning, rather than being refused."""
    warmup, epochs = cfg.sched.warmup_epochs, cfg.train.epochs
    if epochs > 0 and warmup >= epochs:
        cfg.sched.warmup_epochs = epochs / 2
        warn(
            f"sched.warmup_epochs={warmup:g} is not shorter than the run "
            f"(train.epochs={epochs}); warming up over {epochs / 2:g} epochs instead"
        )
    return cfg


def resolve_shapes(cfg: Config) -> Config:
    """`det.random_shapes_scale: [lo, hi]` as the sizes it stands for: every multiple of 32
    from lo to hi times data.image_size (at least the one nearest data.image_size), written to
    det.random_shapes, so that a run's config names the sizes it trained at."""
    det = getattr(cfg, "det", None)
    if det is None or det.random_shapes_scale is None:
        return cfg
    lo, hi = det.random_shapes_scale
    if det.random_shapes is not None or not 0 < lo <= hi:
        raise UsageError(
            f"det.random_shapes_scale={list(det.random_shapes_scale)} must be [lo, hi] with "
            "0 < lo <= hi, and det.random_shapes unset (both set the training sizes; use one)"
        )
    size = cfg.data.image_size or DETECT_IMAGE_SIZE
    first, last = max(1, math.ceil(lo * size / 32)), math.floor(hi * size / 32)
    det.random_shapes = [32 * k for k in range(first, last + 1)] or [32 * max(1, round(size / 32))]
    det.random_shapes_scale = None
    return cfg


def from_dict(d: dict, task: str = "classify") -> Config:
    """The config of a run folder or checkpoint; one written before configs were per task
    (format 1: no `task` key, every task's sections) is migrated first."""
    d = dict(d)
    fmt1 = "task" not in d
    task = d.pop("task", None) or task
    if task not in CONFIGS:
        raise UsageError(f"config task {task!r} is not one of {', '.join(CONFIGS)}")
    d = migrate(d, task) if fmt1 else d
    saved = flatten(d)
    added = {k: v for k, v in ADDED.get(task, {}).items() if k not in saved}
    return validate(apply(apply(CONFIGS[task](), d), added))


# Keys added since checkpoint format 2, with what a saved config that lacks them trained with.
ADDED = {"detect": {"data.rect": False}}


def migrate(d: dict, task: str) -> dict:
    """A format-1 config (one layout for both tasks) in `task`'s layout: the keys only the
    other task has are dropped. Format-1 runs refused those keys at anything but their
    defaults, so nothing a run trained with is lost."""
    own = set(flatten(to_dict(CONFIGS[task]())))
    others = {k for t, c in CONFIGS.items() if t != task for k in flatten(to_dict(c()))}
    return {k: v for k, v in flatten(d).items() if k in own or k not in others}


DETECT_IMAGE_SIZE = 416  # the letterbox size when a detection recipe sets no data.image_size
COMMANDS = {"classify": "freebies train", "detect": "freebies detect train"}  # train, resume
EVAL_COMMANDS = {"classify": "freebies eval", "detect": "freebies detect eval"}
