"""`freebies ablate`: which trick helps on my data, by how much, at what cost.

`single` trains the baseline recipe, then the baseline plus each trick on its own; `cumulative`
stacks the tricks in the order given, like Bag of Tricks (He et al. 2019,
arXiv:1812.01187); `both` does both, `stack` each alone and all at once; `--also` variants run
alone and are never stacked or bagged. Every variant runs on the same seeds, seed by seed, so
Δ is paired per seed, on one summary.json key (`--metric`, default test_acc; its direction says
which way is better).

Each run is one process of the grid's trainer command (`--trainer`, default `freebies
train`; its exact command is recorded). The grid relies only on this run-folder contract:

- `TRAINER --recipe R --out DIR --set key=value ... --overwrite` starts a run in DIR; the
  grid always sets `train.seed`, and `distill.teacher` (a path to the teacher's last.pt) for
  a distillation variant. `TRAINER --resume DIR` continues the run in DIR.
- On SIGINT (Ctrl-C) it saves DIR/last.pt and exits 130; any other non-zero exit is a failed
  run, whose last output line is reported.
- It writes DIR/config.yaml (the resolved settings, one nested mapping), DIR/metrics.jsonl
  (one JSON row per epoch, with "epoch" and, for a curve, the metric's per-epoch column),
  DIR/summary.json (final numbers: the metric, its `val_` counterpart for `--bag`, and
  `train_s`, seconds of training, for the time column; a key it lacks is read from the last
  metrics.jsonl row) and DIR/last.pt.

docs/run-folder.md lists every file, summary key and unit that `freebies train` writes.
A run folder with summary.json is done and one with last.pt resumes, so a killed grid
finishes when started again. The variants of freebies' own trainers (`freebies train`,
`freebies detect train`) are checked against the recipe (`freebies.config`) before anything
runs. `--task detect` picks the detection trainer, the `detect` recipe and `--metric map`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from freebies import config
from freebies.catalog import TRICKS
from freebies.data.io import write_text
from freebies.errors import UsageError, nearest
from freebies.experiments import shards
from freebies.report.table import (
    BASELINE,
    DEFAULT_METRIC,
    Metric,
    loss_curve,
    per_epoch_key,
    summarize,
    write_report,
)

MODES = ("single", "cumulative", "both", "stack")
TEACHER = "@baseline"  # distillation without a teacher: the grid's own baseline teaches
DEFAULT_TRAINER = "freebies train"
DETECT_TRAINER = "freebies detect train"
# --task -> (default recipe, trainer, metric)
TASKS = {
    "classify": ("baseline", DEFAULT_TRAINER, "test_acc"),
    "detect": ("detect", DETECT_TRAINER, "map"),
}
# What grid.json files written before --metric and --trainer meant.
LEGACY = {"metric": "test_acc", "better": "higher", "trainer": DEFAULT_TRAINER, "also": []}


@dataclass
class Variant:
    name: str
    kind: str  # baseline | single | also | cumulative | bag
    tricks: list[str]
    overrides: dict[str, Any] = field(default_factory=dict)
    chosen_by: str | None = None


class GridInterrupted(KeyboardInterrupt):
    """The grid stopped on Ctrl-C / SIGTERM after its current run saved a checkpoint."""


def parse_tricks(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """`"label_smoothing,mixup=aug.mixup=0.4"` -> [(label, overrides)].

    A bare name takes its documented setting (`freebies tricks`); `name=key=value` items
    replace it (repeat the name for several keys). A name outside the catalog is a variant of
    the user's own and must come with settings (`batch256=train.batch_size=256`). Commas inside
    brackets belong to a list value (`det_random_shapes=det.random_shapes=[320,416]`).
    """
    known = {t.name: t for t in TRICKS}
    custom: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for item in (s.strip() for s in _items(spec)):
        if not item:
            continue
        name, _, setting = item.partition("=")
        if name not in known and not setting:
            raise UsageError(
                f"unknown trick {name!r}{nearest(name, list(known))}; `freebies tricks` lists them"
            )
        if name not in order:
            order.append(name)
        if setting:
            if "=" not in setting:
                raise UsageError(f"trick setting {item!r} must be name=key=value")
            custom.setdefault(name, {}).update(config.parse_set([setting]))
    if not order:
        raise UsageError("--tricks is empty; name at least one trick (`freebies tricks`)")
    if "distillation" in custom:  # e.g. distillation=distill.alpha=0.7: still needs a teacher
        custom["distillation"].setdefault("distill.teacher", TEACHER)
    out = []
    for name in order:
        if name in custom:
            label = f"{name}[{','.join(f'{k}={v}' for k, v in custom[name].items())}]"
            out.append((label, custom[name]))
        elif name == "distillation":
            out.append((name, {"distill.teacher": TEACHER}))
        else:
            out.append((name, dict(known[name].on)))
    return out


def _items(spec: str) -> list[str]:
    """`spec` split at the commas outside brackets and braces (a list value keeps its own)."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            items.append(spec[start:i])
            start = i + 1
    return [*items, spec[start:]]


def plan(
    tricks: list[tuple[str, dict]], mode: str, also: list[tuple[str, dict]] = ()
) -> list[Variant]:
    """The grid's variants: baseline, singles, then the cumulative stack (`stack`: only its
    last step, every trick at once). `also` variants run alone, never stacked or bagged."""
    variants = [Variant(BASELINE, "baseline", [])]
    if mode in ("single", "both", "stack"):
        variants += [Variant(label, "single", [label], ov) for label, ov in tricks]
    variants += [Variant(label, "also", [label], ov) for label, ov in also]
    if mode in ("cumulative", "both", "stack"):
        stacked: dict[str, Any] = {}
        for i, (_, ov) in enumerate(tricks):
            stacked = {**stacked, **ov}
            labels = [t for t, _ in tricks[: i + 1]]
            if mode != "stack" or i == len(tricks) - 1:
                variants.append(Variant("+".join(labels), "cumulative", labels, dict(stacked)))
    seen: set[str] = set()  # in `both`, the first stack step is the first single
    return [v for v in variants if not (v.name in seen or seen.add(v.name))]


def _slug(name: str) -> str:
    """A folder name for a variant; long names are cut and made unique by a short hash."""
    import hashlib

    slug = re.sub(r"[^A-Za-z0-9._+=-]+", "_", name)
    if len(slug) <= 100:
        return slug
    return f"{slug[:90]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _set_arg(key: str, value: Any) -> str:
    """`key=value` for `--set`, quoted where YAML would read the text back as something else
    (a string "on" or "1e-3" stays a string)."""
    plain = isinstance(value, str) and yaml.safe_load(value) == value
    return f"{key}={value if plain else json.dumps(value)}"


def trainer_words(trainer: str) -> list[str]:
    """The `--trainer` command line as words."""
    try:
        words = shlex.split(trainer)
    except ValueError as e:
        raise UsageError(f"--trainer {trainer!r}: {e}") from None
    if not words:
        raise UsageError("--trainer is empty; give a command, e.g. --trainer 'freebies train'")
    if words[0] != "freebies" and shutil.which(words[0]) is None:
        raise UsageError(f"--trainer {trainer!r}: {words[0]!r} is not a command found on PATH")
    return words


class Grid:
    """The runs of one ablation: their configs, commands, folders and results."""

    def __init__(
        self,
        recipe: str,
        seeds: list[int],
        out: Path,
        overrides: dict[str, Any],
        command: str,
        *,
        trainer: str = DEFAULT_TRAINER,
        metric: Metric = DEFAULT_METRIC,
    ) -> None:
        self.recipe, self.seeds, self.out = recipe, seeds, out
        self.overrides, self.command = overrides, command
        self.trainer, self.metric = trainer, metric
        self.words = trainer_words(trainer)
        self.classification = self.words == DEFAULT_TRAINER.split()
        # freebies' own trainers read the recipe through freebies.config: check it up front
        self.task = own_task(trainer)
        self.own = self.task is not None

    def executable(self) -> list[str]:
        """The trainer as a process to start: `freebies ...` runs in this interpreter."""
        if self.words[0] == "freebies":
            return [sys.executable, "-m", "freebies", *self.words[1:]]
        return self.words

    def folder(self, v: Variant, seed: int) -> Path:
        return self.out / "runs" / f"{_slug(v.name)}-s{seed}"

    def teacher(self, seed: int) -> Path:
        """The baseline of the grid's first seed (of its second, for the first seed's own
        student): a student never starts from its teacher's weights, and its teacher does not
        depend on how many seeds the grid has."""
        return self.folder(Variant(BASELINE, "baseline", []), self.teacher_seed(seed))

    def teacher_seed(self, seed: int) -> int:
        return self.seeds[0] if seed != self.seeds[0] else self.seeds[1]

    def run_overrides(self, v: Variant, seed: int) -> dict[str, Any]:
        ov = {**self.overrides, **v.overrides, "train.seed": seed}
        if ov.get("distill.teacher") == TEACHER:
            ov["distill.teacher"] = str(self.teacher(seed) / "last.pt")
        return ov

    def cfg(self, v: Variant, seed: int) -> config.Config:
        """The resolved config of a run (freebies' own trainers only)."""
        try:
            return config.load(self.recipe, self.run_overrides(v, seed), self.task)
        except UsageError as e:
            raise UsageError(f"variant {v.name!r}: {e}") from None

    def train_args(self, v: Variant, seed: int) -> list[str]:
        """The trainer's arguments that start this run (the contract's first form)."""
        sets = [
            a for k, val in self.run_overrides(v, seed).items() for a in ("--set", _set_arg(k, val))
        ]
        return ["--recipe", self.recipe, "--out", str(self.folder(v, seed)), *sets]

    def train_command(self, v: Variant, seed: int) -> list[str]:
        return [*self.words, *self.train_args(v, seed)]

    def settings(self, v: Variant, seed: int) -> dict[str, Any]:
        """A run's settings, flat: the resolved config for freebies' own trainers, else just
        the overrides the grid passes."""
        if self.own:
            return config.flatten(config.to_dict(self.cfg(v, seed)))
        return self.run_overrides(v, seed)

    def check(self, variants: list[Variant]) -> list[Variant]:
        """Validate every config before anything runs; drop a variant that trains exactly
        like an earlier one (e.g. a trick the recipe already has on)."""
        kept: dict[str, Variant] = {}
        for v in variants:
            flat = json.dumps(self.settings(v, self.seeds[0]), sort_keys=True)
            if flat in kept:
                print(f"freebies: note: {v.name} trains exactly like {kept[flat].name}; skipped")
                continue
            kept[flat] = v
            for seed in self.seeds:
                self.same_config(v, seed)
        return list(kept.values())

    def same_config(self, v: Variant, seed: int) -> None:
        """Refuse to resume a run folder that was trained with other settings."""
        saved = self.folder(v, seed) / "config.yaml"
        if not saved.is_file():
            return
        want = self.settings(v, seed)
        have = config.flatten(yaml.safe_load(saved.read_text()) or {})
        for key in want.keys() & have.keys() - {"train.device"}:  # keys added later: skipped
            a, b = want[key], have[key]
            if key == "distill.teacher" and a and b:
                a, b = Path(a).resolve(), Path(b).resolve()
            if a != b:
                raise UsageError(
                    f"{saved.parent} was trained with {key}={have[key]!r}, this grid asks "
                    f"{want[key]!r}; use another --out (or delete that run folder)"
                )

    def row(self, v: Variant, seed: int) -> dict[str, Any]:
        """The fields every results.jsonl row has: which variant and seed, and how it ran."""
        return {
            "variant": v.name,
            "kind": v.kind,
            "tricks": v.tricks,
            "overrides": v.overrides,
            "seed": seed,
            "command": shlex.join(self.train_command(v, seed)),
            "grid_command": self.command,
        }

    def result(self, v: Variant, seed: int) -> dict[str, Any]:
        """One results.jsonl row, read back from the finished run folder."""
        folder = self.folder(v, seed)
        summary = json.loads((folder / "summary.json").read_text())
        metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        row = {
            **self.row(v, seed),
            "run": str(folder),
            "config": yaml.safe_load((folder / "config.yaml").read_text()),
            **summary,
        }
        # A key the summary lacks is read from the last epoch's row: runs from before
        # summary.json had val_nll logged it only as metrics.jsonl's val_loss.
        for key in filter(None, (self.metric.key, self.metric.val_key)):
            column = per_epoch_key(key)
            if key not in row and metrics and column in metrics[-1]:
                row[key] = metrics[-1][column]
        column = self.metric.curve_key
        curve = [[m["epoch"], m[column]] for m in metrics if m.get(column) is not None]
        if curve:
            row["curve"] = curve
        row = loss_curve(row)
        if v.chosen_by:
            row["chosen_by"] = v.chosen_by
        teacher = ((row["config"] or {}).get("distill") or {}).get("teacher")
        if teacher:
            row["teacher"] = _teacher_info(Path(teacher), self)
        return row


def _teacher_info(path: Path, grid: Grid) -> dict[str, Any]:
    summary = path.parent / "summary.json"
    train_s = json.loads(summary.read_text()).get("train_s") if summary.is_file() else None
    own = path.parent.parent == grid.out / "runs"
    source = f"this grid's baseline run {path.parent.name}" if own else str(path)
    return {"source": source, "path": str(path), "train_s": train_s}


def _last_line(log: Path) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1].removeprefix("freebies: error: ") if lines else "no output"


def _epochs_done(folder: Path) -> int:
    path = folder / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _train(grid: Grid, v: Variant, seed: int, bar: tqdm, claim: shards.Claim) -> str | None:
    """Run (or resume) one training process under `claim`, keeping its heartbeat; returns an
    error line, or None on success."""
    folder = grid.folder(v, seed)
    if (folder / "summary.json").is_file():
        return None
    resume = (folder / "last.pt").is_file()
    args = ["--resume", str(folder)] if resume else [*grid.train_args(v, seed), "--overwrite"]
    log = grid.out / "logs" / f"{folder.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    bar.set_postfix_str(f"{v.name} seed {seed}")
    start = bar.n
    with log.open("a") as fh:
        try:
            proc = subprocess.Popen(
                [*grid.executable(), *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the grid, which forwards it exactly once
                preexec_fn=_die_with(os.getpid()),
            )
        except OSError as e:
            raise UsageError(f"--trainer {grid.trainer!r} cannot start: {e.strerror}") from None
        claim.set_trainer(proc.pid)
        beat = time.monotonic()
        try:
            while not _finished(proc):
                if time.monotonic() - beat > shards.HEARTBEAT_S:
                    claim.heartbeat()
                    beat = time.monotonic()
                if start + _epochs_done(folder) > bar.n:  # only redraw on progress
                    bar.update(start + _epochs_done(folder) - bar.n)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)  # the run checkpoints, then exits 130
            print("freebies: waiting for the current run to save a checkpoint", file=sys.stderr)
            while proc.poll() is None:
                try:
                    proc.wait()
                except KeyboardInterrupt:  # a second Ctrl-C must not orphan a half-saved run
                    continue
            raise GridInterrupted(str(grid.out)) from None
    if proc.returncode == 130:
        raise GridInterrupted(str(grid.out))
    return None if proc.returncode == 0 else f"{_last_line(log)} (log: {log})"


def _finished(proc: subprocess.Popen) -> bool:
    """Wait up to half a second for the run to end (a quick run is not held up)."""
    try:
        proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        return False
    return True


def _die_with(parent: int) -> Any:
    """A preexec_fn: if the grid is killed outright, its run still gets SIGINT and checkpoints
    (Linux PR_SET_PDEATHSIG). libc is looked up here, in the parent, because the forked child
    may only make plain calls."""
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: an orphaned run finishes on its own

    def arm() -> None:
        prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the grid died before the line above
            os.kill(os.getpid(), signal.SIGINT)

    return arm


def choose_bag(grid: Grid, rows: list[dict], tricks: list[tuple[str, dict]]) -> Variant | None:
    """Stack every trick whose single-trick Δ (paired mean) on the metric's validation
    counterpart is better than 0 in the metric's direction."""
    metric = grid.metric
    entries = {e["variant"]: e for e in summarize(rows, metric)}

    def helps(label: str) -> bool:
        delta = (entries.get(label, {}).get("val") or {}).get("delta")
        return bool(delta) and metric.improves(delta["mean"])

    chosen = [(label, ov) for label, ov in tricks if helps(label)]
    if not chosen:
        print(f"freebies: note: no trick improved {metric.val_key}; no bag to run")
        return None
    stacked: dict[str, Any] = {}
    for _, ov in chosen:
        stacked.update(ov)
    names = [label for label, _ in chosen]
    side = "below" if metric.lower_is_better else "above"
    why = (
        f"stacks every trick whose single-trick Δ {metric.val_key} (paired mean over seeds "
        f"{grid.seeds}) was {side} 0: {', '.join(names)}. Chosen on validation "
        f"({metric.val_key}, {metric.better} is better); its {metric.key} was read once, "
        "after the choice."
    )
    return Variant("bag", "bag", names, stacked, chosen_by=why)


def own_task(trainer: str) -> str | None:
    """The task of one of freebies' own trainers, or None for another command."""
    words = trainer_words(trainer)
    return next((t for t, (_, cmd, _) in TASKS.items() if words == cmd.split()), None)


def grid_seeds(recipe: str, overrides: dict[str, Any], trainer: str, count: int) -> list[int]:
    """`count` seeds from the run's own train.seed: the recipe's for freebies' own trainers,
    else `--set train.seed` (0 when unset), since another trainer's recipe is its own."""
    if own_task(trainer) is not None:
        first = config.load(recipe, overrides, own_task(trainer)).train.seed
    else:
        first = overrides.get("train.seed", 0)
        if not isinstance(first, int) or isinstance(first, bool):
            raise UsageError(f"train.seed must be an integer, got {first!r}")
    return list(range(first, first + count))


def prepare(
    recipe: str,
    tricks: list[tuple[str, dict]],
    seeds: list[int],
    mode: str,
    out: Path,
    overrides: dict[str, Any],
    *,
    bag: bool,
    command: str,
    trainer: str = DEFAULT_TRAINER,
    metric: Metric = DEFAULT_METRIC,
    also: list[tuple[str, dict]] = (),
) -> tuple[Grid, list[Variant]]:
    """Check the grid before anything runs and record it in out/grid.json; its variants."""
    grid = Grid(recipe, seeds, out, overrides, command, trainer=trainer, metric=metric)
    _check_grid(grid, [*tricks, *also], mode, bag)
    variants = grid.check(plan(tricks, mode, also))
    record = {
        "recipe": recipe,
        "overrides": overrides,
        "seeds": seeds,
        "tricks": [list(t) for t in tricks],
        "mode": mode,
        "also": [list(t) for t in also],
        "bag": bag,
        "trainer": trainer,
        "metric": metric.key,
        "better": metric.better,
    }
    out.mkdir(parents=True, exist_ok=True)
    with shards.merging(out):  # shards starting together write grid.json once
        _same_grid(out, record)
    return grid, variants


def launch(
    kind: str,
    count: int,
    grid: Grid,
    argv_of: Callable[[str], list[str]],
    *,
    sbatch: str = "",
    submit: bool = False,
) -> str:
    """`--launcher local`: run `count` shard processes here, wait, report. `--launcher slurm`:
    write (and with `submit`, submit) an array job of `count` shards. What was done, in a line."""
    if kind == "local":
        try:
            shards.run_local(argv_of, count, grid.out)
        except KeyboardInterrupt:
            raise GridInterrupted(str(grid.out)) from None
        entries = shards.report(grid.out)
        done = f"{len(entries)} variants x {len(grid.seeds)} seeds"
        return f"{count} shards: {done}; wrote {grid.out / 'report.md'}"
    script = grid.out / "slurm" / "ablate.sbatch"
    if submit:
        shards.need_sbatch(script)
    text = shards.sbatch_script(argv_of, count, grid.out, sbatch, grid.command)
    for folder in (script.parent, grid.out / "logs"):  # SLURM opens --output, never mkdirs
        folder.mkdir(parents=True, exist_ok=True)
    write_text(script, text)
    if submit:
        return f"wrote {script}; {shards.submit(script)}"
    return f"wrote {script}; submit it with: sbatch {script}"


def run_grid(
    tricks: list[tuple[str, dict]],
    grid: Grid,
    variants: list[Variant],
    *,
    bag: bool,
    shard: tuple[int, int] = (1, 1),
) -> tuple[list[dict], list[str]]:
    """Run this shard's (variant, seed) runs not yet finished, then dead claims of other
    shards, then (with `bag`) the bag; keep results.jsonl and the report current. Returns
    the report's entries and the runs of the grid still missing."""
    # Seed by seed, so that a grid stopped half-way already pairs every variant on some seeds;
    # a distillation grid's teachers (baselines of other seeds) first.
    runs = [(v, seed) for seed in grid.seeds for v in variants]
    if any(v.overrides.get("distill.teacher") == TEACHER for v in variants):
        runs.sort(key=lambda r: r[0].kind != "baseline")
    book = shards.Ledger(grid.out, [grid.folder(v, s).name for v, s in runs], bag)
    # The default trainer's epochs are known now; another's are learnt from its first run.
    epochs = grid.cfg(variants[0], grid.seeds[0]).train.epochs if grid.own else None
    # This shard's slice of the runs still to do, so that a resumed or grown grid spreads
    # what is left over every shard; then any run no live process holds (another shard's
    # not yet started, or dead), so that no shard idles while runs wait.
    adopted = _adopt(grid, book, runs)
    todo = [r for r in runs if _todo(book, grid.folder(*r).name, retry=True)]
    mine = shards.take(todo, shard)
    worker = Worker(grid, book, shard, len(mine), epochs, variants)
    if adopted:
        worker.report()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for v, seed in mine:
            worker.train(v, seed, retry=True)
        for v, seed in runs:
            worker.train(v, seed)
        if bag:
            worker.wait(runs)
            chosen = worker.bag(tricks)
            for seed in grid.seeds if chosen else []:
                worker.train(chosen, seed)
    finally:
        signal.signal(signal.SIGTERM, previous)
        worker.bar.close()
    return worker.report()


def _todo(book: shards.Ledger, run: str, retry: bool) -> bool:
    """Whether `run` is to train: no row yet, or (with `retry`) a failed one."""
    row = book.row(run)
    return row is None or (retry and "error" in row)


def _adopt(grid: Grid, book: shards.Ledger, runs: list[tuple[Variant, int]]) -> int:
    """Record the row of each finished run folder that has none (put back from a saved copy,
    or linked from another grid), so that results.jsonl counts it from the start and not
    once every other run is done; returns how many."""
    adopted = 0
    with shards.merging(grid.out):
        for v, seed in runs:
            folder = grid.folder(v, seed)
            if book.row(folder.name) is None and (folder / "summary.json").is_file():
                _record(grid, book, v, seed, grid.result(v, seed))
                adopted += 1
    return adopted


def _record(grid: Grid, book: shards.Ledger, v: Variant, seed: int, row: dict) -> None:
    """Put a run's row in the book; a baseline's must hold the grid's metric."""
    if v.kind == "baseline":
        _check_metric(grid, row, book.bag)
    book.record(grid.folder(v, seed).name, row)


class Worker:
    """One process's share of a grid: trains the runs it claims, records their rows."""

    def __init__(
        self,
        grid: Grid,
        book: shards.Ledger,
        shard: tuple[int, int],
        runs: int,
        epochs: int | None,
        variants: list[Variant],
    ) -> None:
        self.grid, self.book, self.shard, self.epochs = grid, book, shard, epochs
        self.variants = variants
        self.runs, self.done = runs, 0  # runs this process accounts for on its bar
        label = "ablate" if shard == (1, 1) else f"shard {shard[0]}/{shard[1]}"
        self.bar = tqdm(total=None, unit="epoch", desc=label, dynamic_ncols=True)
        self._count(0)

    def _count(self, runs: int, extra: int = 0) -> None:
        """Move the bar by `runs` finished runs (`extra` of them beyond the slice)."""
        self.done, self.runs = self.done + runs, self.runs + extra
        if self.epochs:
            self.bar.total = self.runs * self.epochs
            self.bar.update(self.done * self.epochs - self.bar.n)

    def train(self, v: Variant, seed: int, *, retry: bool = False) -> bool:
        """Train (or resume) one run unless it is finished or another process holds it;
        whether it is finished now. `retry` (this shard's own slice) trains a failed run
        again."""
        run = self.grid.folder(v, seed).name
        trained = False
        if _todo(self.book, run, retry):
            claim = shards.claim(self.grid.out, run, self.shard)
            if claim is None:
                return False
            trained = _todo(self.book, run, retry)  # else finished between the look and the claim
            if trained:
                self._run(v, seed, claim)
        if retry or trained:
            self._count(1, extra=int(not retry))
        return True

    def _run(self, v: Variant, seed: int, claim: shards.Claim) -> None:
        """Train one claimed run and record its row (an error row for a failed trick)."""
        grid = self.grid
        if v.overrides.get("distill.teacher") == TEACHER:  # the student needs its teacher
            self.wait([(Variant(BASELINE, "baseline", []), grid.teacher_seed(seed))])
        error = _train(grid, v, seed, self.bar, claim)
        if error and v.kind == "baseline":
            raise UsageError(f"the baseline run (seed {seed}) failed: {error}")
        row = grid.result(v, seed) if error is None else grid.row(v, seed) | {"error": error}
        _record(grid, self.book, v, seed, row)
        if self.epochs is None:
            self.epochs = _epochs_done(grid.folder(v, seed)) or None
        # results.jsonl after every run; the report (plots: ~1 s) once a variant or a seed is
        # complete
        done = self.book.row
        self.report(
            all(done(grid.folder(v, s).name) for s in grid.seeds)
            or all(done(grid.folder(u, seed).name) for u in self.variants)
        )

    def wait(self, runs: list[tuple[Variant, int]]) -> None:
        """Until every run in `runs` is finished, training any that no live process holds."""
        pending = list(runs)
        while pending:
            pending = [(v, seed) for v, seed in pending if not self.train(v, seed)]
            if pending:
                time.sleep(shards.POLL_S)

    def bag(self, tricks: list[tuple[str, dict]]) -> Variant | None:
        """The bag, chosen once for the whole grid by the first shard to get here."""
        with shards.merging(self.grid.out):
            choice = self.book.choice()
            if choice is None:
                rows, _ = self.book.merge()
                chosen = choose_bag(self.grid, rows, tricks)
                seeds = self.grid.seeds if chosen else []
                names = [self.grid.folder(chosen, s).name for s in seeds]
                choice = {"runs": names, "variant": asdict(chosen) if chosen else None}
                self.book.choose(choice)
        if choice["variant"] is None:
            return None
        chosen = Variant(**choice["variant"])
        for seed in self.grid.seeds:
            self.grid.same_config(chosen, seed)
        return chosen

    def report(self, plots: bool = True) -> tuple[list[dict], list[str]]:
        """Merge the finished runs into results.jsonl and (with `plots`, once a baseline has
        finished) rebuild the report; the entries and the runs still missing."""
        with shards.merging(self.grid.out):
            rows, missing = self.book.merge()
            if not plots or not any(r["variant"] == BASELINE and "error" not in r for r in rows):
                return [], missing
            return write_report(self.grid.out), missing


def _check_grid(grid: Grid, tricks: list[tuple[str, dict]], mode: str, bag: bool) -> None:
    """Refuse, before anything runs, a grid that cannot give what it asks for."""
    if bag and mode == "cumulative":
        raise UsageError("--bag chooses among single-trick runs; use --mode single, both or stack")
    if bag and grid.metric.val_key is None:
        raise UsageError(
            f"--bag chooses on the validation counterpart of --metric; {grid.metric.key} is "
            "already a validation key, give its test_ key"
        )
    baseline = Variant(BASELINE, "baseline", [])
    if bag and grid.classification and grid.cfg(baseline, grid.seeds[0]).data.val_split <= 0:
        raise UsageError(
            f"--bag chooses tricks on validation ({grid.metric.val_key}); add --set "
            "data.val_split=0.1"
        )
    if len(grid.seeds) < 2 and any(ov.get("distill.teacher") == TEACHER for _, ov in tricks):
        raise UsageError(
            "distillation without distill.teacher is taught by this grid's baseline of another "
            "seed; use --seeds 2 or more, or give distillation=distill.teacher=CKPT"
        )


def _check_metric(grid: Grid, row: dict[str, Any], bag: bool) -> None:
    """A baseline run has the metric (and, for --bag, its validation key) as a number."""
    path = Path(row["run"]) / "summary.json"
    numbers = {k: v for k, v in row.items() if k != "seed"}  # the pairing, not a result
    grid.metric.check(numbers, path, "--metric")
    if bag:
        Metric(str(grid.metric.val_key)).check(numbers, path, "--bag chooses on")


def _bag_chosen(out: Path) -> bool:
    path = out / "results.jsonl"
    return path.is_file() and any(
        json.loads(line).get("kind") == "bag" for line in path.read_text().splitlines() if line
    )


def _same_grid(out: Path, grid: dict[str, Any]) -> None:
    """Record what this grid is in out/grid.json; refuse another grid in the same folder.

    The metric only decides the report (and the bag), so it may change until a bag has been
    chosen on it; grid.json then records the new one. `also` variants may be appended to a
    grid (they are never stacked or bagged, so the runs done stay valid); the others stay.
    Tricks are compared by name: a catalog setting changed since (e.g. written relative to the
    image size) is checked run by run on the resolved config (`Grid.same_config`).
    """
    path = out / "grid.json"
    if path.is_file():
        saved = {**LEGACY, **json.loads(path.read_text())}
        fixed = [k for k in grid if k not in ("metric", "better") or _bag_chosen(out)]
        new = json.loads(json.dumps(grid))
        grown = new["also"][: len(saved["also"])] == saved["also"]

        def same(k: str) -> bool:
            if k == "tricks":
                return [t[0] for t in saved[k]] == [t[0] for t in new[k]]
            return saved.get(k) == new[k] or (k == "also" and grown)

        diff = next((k for k in fixed if not same(k)), None)
        if diff is not None:
            raise UsageError(
                f"{out} holds another grid (its {diff} was {saved.get(diff)!r}); use another "
                "--out, or rerun that grid's own command to finish it"
            )
        if all(saved.get(k) == new[k] for k in ("metric", "better", "also")):
            return
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(grid, indent=2) + "\n")
