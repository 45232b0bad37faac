"""Every trick's record (`freebies.tricks.record.Trick`), each defined beside its function,
collected in one table: `freebies tricks`, the recipe validation, `freebies ablate`'s trick
names and the table in docs/tricks.md come from here.

Two run-level switches have no library function of their own (the engine acts on them), so
their records live here: early stopping and synchronised BatchNorm.
"""

from __future__ import annotations

from typing import Any

from freebies.detection.mixup import DET_MIXUP
from freebies.detection.model import DET_LABEL_SMOOTHING
from freebies.detection.slicing import DET_SLICE
from freebies.detection.transforms import DET_CROP, DET_EXPAND, DET_HFLIP, DET_RANDOM_SHAPES
from freebies.evaluate import TTA
from freebies.models.acnet import ACNET
from freebies.models.options import DROPOUT, XAVIER_INIT, ZERO_INIT_RESIDUAL
from freebies.optim.lookahead import LOOKAHEAD
from freebies.optim.muon import MUON
from freebies.optim.optimizers import (
    ADABOUND,
    BIAS_LR,
    LINEAR_SCALING,
    NESTEROV,
    NO_BN_DECAY,
    WEIGHT_DECAY,
)
from freebies.optim.schedules import COSINE, WARMUP
from freebies.tricks.autoaugment import AUTOAUGMENT
from freebies.tricks.distill import DISTILLATION
from freebies.tricks.ema import EMA
from freebies.tricks.erasing import CUTOUT, RANDOM_ERASING
from freebies.tricks.geometric import ALTERNATING_FLIP, CROP_FLIP, VFLIP
from freebies.tricks.mixing import CUTMIX, MIXUP, RICAP
from freebies.tricks.photometric import COLOR_JITTER, DET_COLOR_JITTER, PCA_LIGHTING, ROTATE
from freebies.tricks.record import Key, Trick
from freebies.tricks.targets import LABEL_SMOOTHING

EARLY_STOPPING = Trick(
    "early_stopping",
    ("classify", "detect"),
    (
        Key("train.early_stop_patience", int, "[0, inf)", note="evaluations; 0 = off"),
        Key("data.val_split", float),
    ),
    {"train.early_stop_patience": 5},
    card="stop when the validation metric has not improved for N evaluations; needs "
    "data.val_split (freebies.engine.early_stop_reason)",
)
SYNC_BN = Trick(
    "sync_bn",
    ("classify", "detect"),
    (Key("train.sync_bn", bool),),
    {"train.sync_bn": True},
    "Zhang et al. 2019 (detection bag of freebies)",
    "https://arxiv.org/abs/1902.04103",
    "BatchNorm statistics over the global batch under torchrun (CUDA only; "
    "freebies.build.make_training)",
)

TRICKS: tuple[Trick, ...] = (
    WARMUP,
    COSINE,
    LINEAR_SCALING,
    LABEL_SMOOTHING,
    MIXUP,
    CUTMIX,
    RICAP,
    CUTOUT,
    RANDOM_ERASING,
    AUTOAUGMENT,
    DISTILLATION,
    ADABOUND,
    MUON,
    LOOKAHEAD,
    EMA,
    NO_BN_DECAY,
    CROP_FLIP,
    ALTERNATING_FLIP,
    BIAS_LR,
    TTA,
    VFLIP,
    ROTATE,
    COLOR_JITTER,
    PCA_LIGHTING,
    XAVIER_INIT,
    ZERO_INIT_RESIDUAL,
    DROPOUT,
    NESTEROV,
    WEIGHT_DECAY,
    EARLY_STOPPING,
    ACNET,
    DET_MIXUP,
    DET_LABEL_SMOOTHING,
    DET_HFLIP,
    DET_EXPAND,
    DET_CROP,
    DET_COLOR_JITTER,
    DET_RANDOM_SHAPES,
    DET_SLICE,
    SYNC_BN,
)


def for_task(task: str) -> tuple[Trick, ...]:
    """The tricks `task` ("classify" or "detect") trains with."""
    return tuple(t for t in TRICKS if task in t.tasks)


def rules(task: str, settings: dict) -> list[tuple[bool, str]]:
    """Every rule of `task`'s tricks on a resolved recipe (flat keys), each key and each
    cross-key check once (several tricks may share them)."""
    seen_keys: set[str] = set()
    seen_checks: set[int] = set()
    out = []
    for t in for_task(task):
        for k in t.keys:
            if k.name not in seen_keys:
                seen_keys.add(k.name)
                out.append(k.rule(settings[k.name]))
        if t.check is not None and id(t.check) not in seen_checks:
            seen_checks.add(id(t.check))
            out += t.check(settings)
    return out


def built(task: str, settings: dict, fields: dict[str, str] | None = None) -> dict[str, Any]:
    """The callables a step of `task` calls, each built by its trick's record from the resolved
    recipe `settings` (flat keys); only the tricks that are on, keyed by `fields[trick name]`
    (a step's field names; default: the trick names)."""
    names = fields or {t.name: t.name for t in TRICKS}
    made = {
        names[t.name]: t.build(settings)
        for t in for_task(task)
        if t.build is not None and t.name in names
    }
    return {field: f for field, f in made.items() if f is not None}


def markdown_table() -> str:
    """The table in docs/tricks.md: every trick, its tasks, keys with ranges, its setting;
    then each measured trick's advice (when it helps)."""
    rows = ["| trick | tasks | keys (range) | switch it on | paper |", "|---|---|---|---|---|"]
    for t in TRICKS:
        keys = ", ".join(
            f"`{k.name}`"
            + (f" {k.range}" if k.range else "")
            + (f" {'/'.join(k.choices)}" if k.choices else "")
            for k in t.keys
        )
        on = " ".join(f"`{k}={v}`" for k, v in t.on.items()) or "see keys"
        paper = f"[{t.paper}]({t.link})" if t.link else t.paper
        rows.append(f"| {t.name} | {', '.join(t.tasks)} | {keys} | {on} | {paper} |")
    advised = [f"- **{t.name}**: {t.advice}" for t in TRICKS if t.advice]
    if advised:
        rows += ["", "When to expect a trick to help, from what was measured:", "", *advised]
    return "\n".join(rows) + "\n"
