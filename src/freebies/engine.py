"""The run engine every task shares: run folder, checkpoint, resume, Ctrl-C / SIGTERM, progress
bar, metrics.jsonl, summary.json and curves.png.

A task (classification in `freebies.classify`, detection in `freebies.detect`) builds a `Task`:
its network with what trains it (`build.make_training`), its batches, one step that returns the
loss, and one evaluation. `run` does the rest, the same way for every task, in plain code (no
events, no hidden callbacks): backward, optimizer, schedule, lookahead and EMA (`update`), the
loop, checkpoints and the summary.
docs/run-folder.md writes the contract down (files, summary keys, checkpoint schema).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from freebies import checkpoint, config
from freebies.build import Training
from freebies.checkpoint import Checkpoint
from freebies.config import Config
from freebies.data.io import write_text
from freebies.distributed import (
    Dist,
    all_sum,
    any_rank,
    broadcast_buffers,
    from_rank0,
    setup,
    teardown,
)
from freebies.errors import UsageError, warn
from freebies.report.logs import log_scalars, require_tensorboard, tensorboard_writer, write_csv
from freebies.report.plots import plot_curves
from freebies.report.table import Metric
from freebies.runtime import choose_precision, git_commit, machine, peak_mem_mb

SYNC_EVERY = 20  # steps between host syncs (progress bar, NaN check, Ctrl-C under DDP)


@dataclass
class Task:
    """What a task hands the engine; `build(cfg, dist, recorded_precision) -> Task` makes one
    per run (see `decide_precision`)."""

    name: str  # "classify", "detect": recorded in the checkpoint
    training: Training  # network, optimizer, schedule, lookahead, generator, EMA
    steps_per_epoch: int
    batch_size: int  # global images per step
    batches: Callable[[int, int], Iterable[Any]]  # (epoch, first step) -> this rank's batches
    # (batch, epoch, step) -> the loss to minimise, and its logged parts (named in `parts`)
    step: Callable[[Any, int, int], tuple[torch.Tensor, list[torch.Tensor]]]
    evaluate: Callable[[bool], dict[str, Any]]  # (final epoch?) -> the metrics row's columns
    summary: Callable[[dict[str, Any]], dict[str, Any]]  # last metrics row -> headline keys
    infer_macs: Callable[[], int]  # per image, of the model as deployed
    data: dict[str, Any]  # the checkpoint's "data": fingerprint, classes, the task's own keys
    precision: tuple[str, str]  # what it trains in and why, from `decide_precision`
    shown: tuple[str, ...] = ("test_acc", "val_acc")  # printed each epoch and plotted
    select: str = "val_acc"  # early stopping and best.pt watch it (or train.best_metric)
    parts: tuple[str, ...] = ()  # the loss's parts, logged per epoch as train_<part>
    # (metrics rows so far) -> a warning to print once, when the run has stopped learning
    check: Callable[[list[dict[str, Any]]], str | None] | None = None


@dataclass
class State:
    """Where the run stands; saved in every checkpoint, so a resumed run continues it."""

    epoch: int = 0
    step: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, float] = field(default_factory=lambda: dict(_EMPTY))
    times: dict[str, float] = field(default_factory=lambda: {"train_s": 0.0, "wall_s": 0.0})


_EMPTY = {"loss_sum": 0.0, "steps": 0, "train_s": 0.0}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM was honoured: a checkpoint of the run in `out` was saved first."""

    def __init__(self, out: Path, task: str = "classify") -> None:
        super().__init__(str(out))
        self.out, self.task = out, task

    @property
    def resume_command(self) -> str:
        return f"{config.COMMANDS[self.task]} --resume {self.out}"


class StopFlag:
    """Ctrl-C and SIGTERM set a flag; the loop checks it between steps, never mid-update.
    A second signal of the same kind acts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.set = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, _: Any) -> None:
        self.set = True
        signal.signal(signum, self._previous[signum])

    def __exit__(self, *_: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to touch an existing run folder unless asked to resume or overwrite it."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    if resume:
        if not (out / "last.pt").is_file():
            raise UsageError(f"--resume {out}: no run there (no last.pt); check the path")
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(
            f"run folder {out} already exists; pass --resume {out} to continue it, "
            "--overwrite to replace it, or choose another --out"
        )


def resumed_config(
    out: Path, recipe: str | None, overrides: dict[str, Any], task: str = "classify"
) -> Config:
    """The config of the `task` run in `out`; refuses a recipe or a key that differs from it
    (the device may change: the run continues where it is resumed)."""
    check_out_dir(out, resume=True, overwrite=False)
    saved = checkpoint.load(out / "last.pt", task)
    if recipe is not None and recipe != saved.recipe:
        raise UsageError(
            f"--resume {out}: that run used recipe {saved.recipe!r}, not {recipe!r}; drop "
            "--recipe or start a new run"
        )
    cfg = config.from_dict(saved.config, task)
    have = config.flatten(config.to_dict(cfg))
    asked = config.apply(config.from_dict(saved.config, task), overrides)
    asked = config.flatten(config.to_dict(config.validate(asked)))
    for key, value in asked.items():
        if value != have[key] and key != "train.device":
            raise UsageError(
                f"--resume {out}: that run has {key}={have[key]!r}, not {value!r}; "
                "drop the flag to continue it, or start a new run with --out"
            )
    cfg.train.device = asked["train.device"]
    return cfg


def check_resume(ckpt: Checkpoint, task: Task, d: Dist, out: Path) -> None:
    """Refuse to continue a run that cannot continue exactly, naming what differs."""
    if ckpt.data.get("fingerprint") != task.data.get("fingerprint"):
        raise UsageError(
            f"--resume {out}: the data differ from the data this run was trained "
            "on; point --data at the same files or start a new run"
        )
    missing = [k for k in ("optimizer", "scheduler", "rng") if getattr(ckpt, k) is None]
    if missing:
        raise UsageError(
            f"--resume {out}: the checkpoint lacks {', '.join(missing)} state, "
            "so the run cannot continue exactly; start a new run"
        )
    if task.training.ema is not None and ckpt.ema is None:
        raise UsageError(
            f"--resume {out}: ema.decay is on but the checkpoint holds no "
            "EMA weights; resume without EMA or start a new run"
        )
    if len(ckpt.rng["aug"]) != d.world:
        raise UsageError(
            f"--resume {out}: the run used {len(ckpt.rng['aug'])} "
            f"processes; resume it with the same number, not {d.world}"
        )
    if ckpt.device_type != d.device.type:
        raise UsageError(
            f"--resume {out}: the run trained on {ckpt.device_type}; resume it there "
            f"(--device {ckpt.device_type}), its RNG state cannot move to {d.device.type}"
        )


def restore(ckpt: Checkpoint, task: Task, d: Dist) -> State:
    """Load weights, optimizer, schedule, EMA and this rank's RNG streams from `ckpt`."""
    t = task.training
    t.net.load_state_dict(ckpt.model)
    if t.ema is not None:
        t.ema.load_state_dict(ckpt.ema)
    t.opt.load_state_dict(ckpt.optimizer)
    t.sched.load_state_dict(ckpt.scheduler)
    t.gen.set_state(ckpt.rng["aug"][d.rank])
    torch.set_rng_state(ckpt.rng["torch"])
    return State(ckpt.epoch, ckpt.step, ckpt.metrics, ckpt.partial, ckpt.times)


def decide_precision(
    cfg: Config,
    d: Dist,
    recorded: list[str] | None,
    probe: Callable[[], float] | None = None,
    key: str = "",
) -> tuple[str, str]:
    """What the run trains in and why. A resumed `auto` run keeps the choice its checkpoint
    recorded; otherwise rank 0 decides (`runtime.choose_precision`, which may time `probe`,
    the bf16 speed-up of the task's own step, cached under `key`) and every rank follows."""
    if recorded is not None and cfg.train.precision == "auto":
        return recorded[0], recorded[1]
    choice = choose_precision(cfg.train.precision, d.device, probe, key) if d.main else None
    return from_rank0(choice)


def train(
    task: str,
    build: Callable[..., Task],
    default_recipe: str,
    recipe: str | None,
    overrides: dict[str, Any],
    out: Path | None,
    *,
    resume: Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> tuple[dict[str, Any], Path]:
    """A task's train entry point (each task binds its name, `build` and default recipe):
    continue the run in folder `resume` (its own recipe and settings; `overrides` may only
    repeat them), or start `recipe` (default `default_recipe`) with `overrides` in `out`
    (default runs/RECIPE-MODEL-seedN). Returns the summary and the run folder."""
    if resume is not None:
        if out is not None and out.resolve() != resume.resolve():
            raise UsageError("--resume continues the run in its own folder; drop --out")
        cfg = resumed_config(resume, recipe, overrides, task)
        return run(cfg, resume, build, resume=True, progress=progress), resume
    recipe = recipe or default_recipe
    cfg = config.load(recipe, overrides, task)
    for note in config.advice(cfg):
        warn(note)
    name = Path(recipe).stem
    out = out or Path("runs") / f"{name}-{cfg.model.name}-seed{cfg.train.seed}"
    return run(cfg, out, build, recipe=name, overwrite=overwrite, progress=progress), out


def run(
    cfg: Config,
    out: Path,
    build: Callable[[Config, Dist], Task],
    *,
    recipe: str = "custom",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Build the task, train it into run folder `out` (resuming it if asked) and return the
    summary, also written to out/summary.json."""
    t_start = time.perf_counter()
    out = Path(out)
    check_out_dir(out, resume=resume, overwrite=overwrite)
    d = setup(cfg.train.device)
    threads = torch.get_num_threads()
    try:
        if cfg.train.sync_bn and d.device.type != "cuda":
            raise UsageError(
                "train.sync_bn needs CUDA (nn.SyncBatchNorm refuses CPU tensors); "
                "turn it off for CPU runs"
            )
        if cfg.train.batch_size % d.world:
            raise UsageError(
                f"train.batch_size={cfg.train.batch_size} must divide evenly over "
                f"{d.world} processes"
            )
        if cfg.train.tensorboard:
            require_tensorboard()  # every rank refuses, before anything is written
        if cfg.train.threads > 0 and d.device.type == "cpu":
            torch.set_num_threads(cfg.train.threads)
        if d.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(d.device)
        ckpt = checkpoint.load(out / "last.pt") if resume else None
        task = build(cfg, d, ckpt.precision if ckpt is not None else None)
        if d.main:
            print(f"freebies: precision {task.precision[0]} ({task.precision[1]})", flush=True)
        state = State()
        if ckpt is not None:
            check_resume(ckpt, task, d, out)
            state, recipe = restore(ckpt, task, d), ckpt.recipe
        if d.main:
            if overwrite and out.exists() and not resume:
                shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(config.to_dict(cfg), sort_keys=False)
            write_text(out / "config.yaml", text)
        if d.world > 1:
            dist.barrier()
        run_ = _Run(cfg, out, task, d, recipe, state, t_start - state.times["wall_s"], progress)
        return run_.fit()
    finally:
        torch.set_num_threads(threads)  # a Python caller keeps its own thread count
        teardown()


class _Run:
    """One run in progress: the loop over epochs and steps, checkpoints and the summary."""

    def __init__(
        self,
        cfg: Config,
        out: Path,
        task: Task,
        d: Dist,
        recipe: str,
        state: State,
        t0: float,
        progress: bool | None,
    ) -> None:
        self.cfg, self.out, self.task, self.d, self.recipe = cfg, out, task, d, recipe
        self.state, self.t0 = state, t0  # t0: wall clock continues across resumes
        self.show = (sys.stdout.isatty() if progress is None else progress) and d.main
        on = cfg.train.tensorboard and d.main
        self.tb = tensorboard_writer(out / "tensorboard") if on else None

    def fit(self) -> dict[str, Any]:
        task, st, epochs = self.task, self.state, self.cfg.train.epochs
        bar = tqdm(
            total=epochs * task.steps_per_epoch,
            initial=st.epoch * task.steps_per_epoch + st.step,
            disable=not self.show,
            unit="step",
            dynamic_ncols=True,
        )
        stop_reason = self.early_stop_reason()
        with StopFlag() as stop:
            for epoch in range(st.epoch, epochs if not stop_reason else st.epoch):
                task.training.net.train()
                first = st.step if epoch == st.epoch else 0
                if first == 0:
                    st.partial = dict(_EMPTY)
                self.train_epoch(epoch, first, stop, bar)
                last = epoch + 1 == epochs
                self.end_epoch(epoch, last, bar)
                stop_reason = self.early_stop_reason()
                if stop_reason:
                    break
                if any_rank(stop.set, self.d.device) and not last:
                    raise Interrupted(self.out, self.task.name)
        bar.close()
        return self.finish(stop_reason)

    def train_epoch(self, epoch: int, first: int, stop: StopFlag, bar: tqdm) -> None:
        """The steps of one epoch from step `first`; on Ctrl-C, checkpoint and stop."""
        task, steps = self.task, self.task.steps_per_epoch
        # per step: the loss, then its parts (global means once summed over ranks)
        logs = torch.zeros(steps, 1 + len(task.parts), dtype=torch.float64, device=self.d.device)
        t_seg, step = time.perf_counter(), first
        for step, batch in enumerate(task.batches(epoch, first), start=first):
            loss, parts = task.step(batch, epoch, step)
            update(loss, task.training)
            logs[step, 0] = loss.detach()
            if parts:
                logs[step, 1:] = torch.stack(parts)
            done = step + 1
            if done % SYNC_EVERY == 0 or done == steps:
                lo = max(first, (done - 1) // SYNC_EVERY * SYNC_EVERY)
                window = self.check_finite(logs, lo, done, epoch)
                bar.set_postfix(
                    epoch=epoch + 1,
                    loss=f"{window[:, 0].mean().item():.3f}",
                    lr=f"{task.training.sched.get_last_lr()[0]:.3g}",
                    img_s=f"{(done - first) * task.batch_size / (time.perf_counter() - t_seg):.0f}",
                    refresh=False,
                )
            bar.update(1)
            # Under DDP every rank checks at the same steps, so they stop together.
            check = self.d.world == 1 or done % SYNC_EVERY == 0
            if check and done < steps and any_rank(stop.set, self.d.device):
                self.add(self.check_finite(logs, first, done, epoch), t_seg)
                self.save(epoch, done)
                raise Interrupted(self.out, self.task.name)
        self.add(self.check_finite(logs, first, step + 1, epoch), t_seg)

    def end_epoch(self, epoch: int, last: bool, bar: tqdm) -> None:
        """Evaluate when due, append the metrics row, checkpoint, write metrics.jsonl."""
        task, st, cfg, t = self.task, self.state, self.cfg, self.task.training
        st.times["train_s"] += st.partial["train_s"]
        steps = max(st.partial["steps"], 1)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": t.sched.get_last_lr()[0],
            "train_loss": st.partial["loss_sum"] / steps,
            **{
                f"train_{name}": total / steps
                for name, total in zip(task.parts, st.partial.get("part_sums", []), strict=False)
            },
            "img_per_s": task.steps_per_epoch * task.batch_size / max(st.partial["train_s"], 1e-9),
        }
        broadcast_buffers(t.net, t.ema)
        if last or (epoch + 1) % cfg.train.eval_every == 0:
            row.update(task.evaluate(last))
        row["wall_s"] = time.perf_counter() - self.t0
        st.metrics.append(row)
        st.partial = dict(_EMPTY)
        self.save(epoch + 1, 0)
        self.keep_best(row)
        if self.d.main:
            text = "".join(json.dumps(r) + "\n" for r in st.metrics)
            write_text(self.out / "metrics.jsonl", text)
            write_csv(self.out / "results.csv", st.metrics)
            if self.tb is not None:
                log_scalars(self.tb, row)
            line = epoch_line(row, cfg.train.epochs, task.shown)
            bar.write(line) if self.show else print(line, flush=True)
            if task.check and (message := task.check(st.metrics)):
                warn(f"{self.out}: {message}")

    def add(self, window: torch.Tensor, t_seg: float) -> None:
        """Fold a span of per-step (global mean) losses, their parts and its seconds into the
        epoch's."""
        p = self.state.partial
        p["loss_sum"] += float(window[:, 0].sum())
        sums = window[:, 1:].sum(0).tolist()
        p["part_sums"] = [
            a + b for a, b in zip(p.get("part_sums", [0.0] * len(sums)), sums, strict=True)
        ]
        p["steps"] += len(window)
        p["train_s"] += time.perf_counter() - t_seg

    def check_finite(self, logs: torch.Tensor, lo: int, hi: int, epoch: int) -> torch.Tensor:
        """The global mean logs (loss, parts) of steps [lo, hi); stop naming the step if a loss
        is NaN/inf."""
        window = all_sum(logs[lo:hi].clone()) / self.d.world
        bad = (~torch.isfinite(window[:, 0])).nonzero()
        if len(bad):
            i, steps = lo + int(bad[0]) + 1, self.task.steps_per_epoch
            raise UsageError(
                f"loss became {window[bad[0], 0].item()} at step {epoch * steps + i} "
                f"(epoch {epoch + 1}, batch {i}); stopped, the last good checkpoint is kept in "
                f"{self.out / 'last.pt'}; lower optim.lr or check the data"
            )
        return window

    @property
    def select(self) -> str:
        """The validation metric that early stopping and best.pt watch."""
        return self.cfg.train.best_metric or self.task.select

    def early_stop_reason(self) -> str | None:
        return early_stop_reason(
            self.state.metrics, self.cfg.train.early_stop_patience, self.select
        )

    def keep_best(self, row: dict[str, Any]) -> None:
        """Copy last.pt (just saved) to best.pt when `row` is the best on the selected
        validation metric so far (rank 0)."""
        val = [k for k in row if k.startswith("val_")]
        if self.d.main and val and self.select not in row:
            warn(f"no {self.select} to choose best.pt on; the validation keys are {', '.join(val)}")
        if self.d.main and row.get(self.select) is not None:
            if best_row(self.state.metrics, self.select) is row:
                tmp = self.out / "best.pt.tmp"
                shutil.copyfile(self.out / "last.pt", tmp)
                os.replace(tmp, self.out / "best.pt")

    def save(self, epoch: int, step: int) -> None:
        """Checkpoint the run as out/last.pt (every rank's RNG stream; rank 0 writes)."""
        task, st, d, t = self.task, self.state, self.d, self.task.training
        aug_states = gather_states(t.gen, d)
        if not d.main:
            return
        ckpt = Checkpoint(
            model=t.net.state_dict(),
            config=config.to_dict(self.cfg),
            data=task.data,
            recipe=self.recipe,
            task=task.name,
            optimizer=t.opt.state_dict(),
            scheduler=t.sched.state_dict(),
            ema=t.ema.state_dict() if t.ema is not None else None,
            rng={"aug": aug_states, "torch": torch.get_rng_state()},
            device_type=d.device.type,
            precision=list(task.precision),
            epoch=epoch,
            step=step,
            metrics=st.metrics,
            partial=st.partial,
            times={"train_s": st.times["train_s"], "wall_s": time.perf_counter() - self.t0},
        )
        checkpoint.save(ckpt, self.out / "last.pt")

    def finish(self, stop_reason: str | None) -> dict[str, Any]:
        """summary.json and curves.png from the last metrics row."""
        task, st, d, cfg = self.task, self.state, self.d, self.cfg
        final = st.metrics[-1]
        images = final["epoch"] * task.steps_per_epoch * task.batch_size
        dev = d.device
        summary = {
            **task.summary(final),
            "epochs": cfg.train.epochs,
            "epochs_run": final["epoch"],
            **({"stop_reason": stop_reason} if stop_reason else {}),
            **best_keys(st.metrics, self.select),
            "wall_s": time.perf_counter() - self.t0,
            "train_s": st.times["train_s"],
            "train_img_per_s": images / max(st.times["train_s"], 1e-9),
            "params": sum(p.numel() for p in task.training.net.parameters()),
            "infer_macs": task.infer_macs(),
            "peak_mem_mb": peak_mem_mb(dev),
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "machine": machine(),
            "world_size": d.world,
            "torch": torch.__version__,
            "seed": cfg.train.seed,
            "precision": task.precision[0],
            "precision_reason": task.precision[1],
            "recipe": self.recipe,
            "git_commit": git_commit(),
        }
        if d.main:
            text = json.dumps(summary, indent=2) + "\n"
            write_text(self.out / "summary.json", text)
            title = f"{self.recipe}: {cfg.model.name}"
            plot_curves(st.metrics, self.out / "curves.png", title=title, keys=task.shown)
        return summary


def best_row(metrics: list[dict], key: str) -> dict | None:
    """The first metrics row with the best `key` (higher is better; lower for losses, NLL and
    ECE, as `report.table.Metric` guesses), or None before `key` was ever evaluated."""
    rows = [r for r in metrics if r.get(key) is not None]
    if not rows:
        return None
    sign = -1 if Metric.parse(key).lower_is_better else 1
    return max(rows, key=lambda r: sign * r[key])  # max keeps the first of equal rows


def early_stop_reason(metrics: list[dict], patience: int, key: str = "val_acc") -> str | None:
    """Why to stop early, or None: `key` (a validation metric) has not improved for
    `patience` evaluations. Never looks at the test set."""
    best = best_row(metrics, key)
    if patience <= 0 or best is None:
        return None
    since = [r for r in metrics if r.get(key) is not None and r["epoch"] > best["epoch"]]
    if len(since) < patience:
        return None
    return (
        f"early stop: {key} has not improved for {patience} evaluations "
        f"(best {_fmt(key, best[key])} at epoch {best['epoch']})"
    )


def update(loss: torch.Tensor, t: Training) -> None:
    """After every task's step: backward, optimizer step, LR schedule step, lookahead
    (`build.make_lookahead`, given the step number), EMA update (of the weights just written)."""
    t.opt.zero_grad(set_to_none=True)
    loss.backward()
    t.opt.step()
    t.sched.step()
    if t.lookahead is not None:
        t.lookahead(t.opt, t.sched.last_epoch)  # LambdaLR counts the steps taken, resumes too
    if t.ema is not None:
        t.ema.update_parameters(t.net)


def check_early_stop(patience: int, has_val: bool) -> None:
    """Early stopping watches a validation set; refuse it when there is none."""
    if patience and not has_val:
        raise UsageError(
            "train.early_stop_patience needs a validation split (e.g. data.val_split=0.1); "
            "early stopping never looks at the test set"
        )


def gather_states(gen: torch.Generator, d: Dist) -> list[torch.Tensor]:
    """Every rank's augmentation RNG state, so each resumes its own stream."""
    state = gen.get_state()
    if d.world == 1:
        return [state]
    states: list[Any] = [None] * d.world
    dist.all_gather_object(states, state)
    return states


def best_keys(metrics: list[dict], key: str) -> dict[str, Any]:
    """summary.json's best.pt keys: the metric it was chosen on, its value and epoch."""
    best = best_row(metrics, key)
    return {
        "best_metric": key,
        "best_value": best and best[key],
        "best_epoch": best and best["epoch"],
    }


def _fmt(key: str, value: float | None) -> str:
    """Accuracy and COCO AP are percentages; everything else a plain number; None is n/a
    (COCO AP of a split without boxes)."""
    if value is None:
        return "n/a"
    percent = key.endswith("_acc") or key.removeprefix("val_").startswith("map")
    return f"{value:.2f}%" if percent else f"{value:.4g}"


def epoch_line(row: dict[str, Any], epochs: int, shown: tuple[str, ...]) -> str:
    """The line printed after each epoch."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}"]
    parts += [f"{key} {_fmt(key, row[key])}" for key in shown if key in row]
    parts += [f"lr {row['lr']:.4g}", f"{row['img_per_s']:.0f} img/s", f"{row['wall_s']:.0f}s"]
    return "  ".join(parts)
