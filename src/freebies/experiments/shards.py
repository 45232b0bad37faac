"""One ablation grid, many processes: shards that claim runs in a shared grid folder.

`freebies ablate --shard I/N` trains the I-th of N round-robin slices of the grid's runs still
to do, then any run that no live process holds; every run keeps its own seed, so the results
do not depend on N or on which shard trained what. The grid folder may sit on
a shared file system (NFS, Lustre, ...) and be written by shards on many hosts at once:

- `locks/RUN/K` is claim number K of run RUN, created with O_CREAT | O_EXCL (only one
  process can create it) and holding the claimer's host, pid, process start time, shard and,
  once started, its trainer's pid. The newest claim (highest K) is the one that counts.
- A claim is alive when, on the claimer's own host, the shard or its trainer process still
  runs; from another host, when its file was touched in the last `STALE_S` seconds (a shard
  touches its claim every `HEARTBEAT_S` while the run trains). A run whose claim is dead is
  taken over by creating claim K + 1; the trainer's `--resume` continues it from last.pt.
- `results/RUN.json` is one run's results.jsonl row, written by the shard that ran it.
  `results.jsonl` is those files merged in the grid's order (`plan.json`), rebuilt under an
  flock(2) on `locks/merge.lock` after every run and by `freebies report`.
- `bag.json` is the `--bag` choice, made once, by the first shard to find every
  single-trick run finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freebies.data.io import write_text
from freebies.errors import UsageError
from freebies.report.table import Metric, write_report

HEARTBEAT_S = 60.0  # a shard touches its claim this often while its run trains
STALE_S = 600.0  # a claim from another host untouched this long is dead
POLL_S = 1.0  # how often a waiting shard looks again


def parse_shard(spec: str) -> tuple[int, int]:
    """`"2/3"` -> (2, 3): the second of three slices."""
    i, slash, n = spec.partition("/")
    if not (slash and i.strip().isdigit() and n.strip().isdigit()):
        raise UsageError(f"--shard {spec!r}: give I/N with whole numbers, e.g. --shard 1/4")
    first, count = int(i), int(n)
    if count < 1 or not 1 <= first <= count:
        raise UsageError(f"--shard {spec}: I must be between 1 and N (N >= 1)")
    return first, count


def take(items: list, shard: tuple[int, int]) -> list:
    """The shard's round-robin slice of `items` (every N-th, starting at the I-th)."""
    first, count = shard
    return items[first - 1 :: count]


def _host() -> str:
    return socket.gethostname()


def _started(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), telling a reused pid apart;
    None where /proc has none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def _runs(pid: int, started: int | None) -> bool:
    """Whether process `pid` (started at `started`, when known) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return started is None or _started(pid) in (started, None)


@dataclass
class Claim:
    """One claim file: who took the run, and whether they still hold it."""

    path: Path
    info: dict[str, Any]

    @property
    def number(self) -> int:
        return int(self.path.name)

    def alive(self) -> bool:
        """Alive per the module's rule: the claimer's processes on its host, else a fresh
        heartbeat. A file still being written (no content yet) counts as alive while fresh."""
        info = self.info
        if info.get("host") == _host():
            procs = [(info["pid"], info.get("pid_start"))]
            if info.get("trainer_pid"):
                procs.append((info["trainer_pid"], info.get("trainer_start")))
            return any(_runs(pid, start) for pid, start in procs)
        try:
            return time.time() - self.path.stat().st_mtime < STALE_S
        except FileNotFoundError:
            return False

    def heartbeat(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path)

    def set_trainer(self, pid: int) -> None:
        """Record the trainer's pid: a run whose shard died but whose trainer still saves its
        checkpoint is not taken over yet."""
        self.info |= {"trainer_pid": pid, "trainer_start": _started(pid)}
        write_text(self.path, json.dumps(self.info))

    def describe(self) -> str:
        i = self.info
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.get("start", 0)))
        state = "running" if self.alive() else "dead (next shard takes it over)"
        who = f"shard {i.get('shard')} on {i.get('host')} pid {i.get('pid')}"
        return f"claimed by {who} since {since}, {state}"


def latest(out: Path, run: str) -> Claim | None:
    """The newest claim on `run`, or None when nobody claimed it."""
    folder = out / "locks" / run
    numbers = [int(p.name) for p in folder.glob("*") if p.name.isdigit()] if folder.is_dir() else []
    if not numbers:
        return None
    path = folder / str(max(numbers))
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        info = {}
    return Claim(path, info)


def claim(out: Path, run: str, shard: tuple[int, int]) -> Claim | None:
    """Claim `run` for this process, or None when another live process holds it."""
    current = latest(out, run)
    if current is not None and current.alive():
        return None
    path = out / "locks" / run / str(current.number + 1 if current else 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None  # another shard took it a moment ago
    info = {
        "host": _host(),
        "pid": os.getpid(),
        "pid_start": _started(os.getpid()),
        "start": time.time(),
        "shard": f"{shard[0]}/{shard[1]}",
        "taken_over": current.info if current else None,
    }
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(info))
    return Claim(path, info)


@contextlib.contextmanager
def merging(out: Path) -> Iterator[None]:
    """Serialise the merge of results and the report between the processes of one grid.
    flock is released by the kernel when its holder dies; a file system without it (Lustre
    without -o flock) runs unserialised, and `freebies report` rebuilds the merge."""
    path = out / "locks" / "merge.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


class Ledger:
    """The grid's shared book: its runs in order (plan.json), each finished run's row
    (results/RUN.json), the merged results.jsonl and the bag's choice (bag.json)."""

    def __init__(self, out: Path, runs: list[str], bag: bool) -> None:
        self.out, self.runs, self.bag = out, runs, bag
        with merging(out):
            write_text(out / "plan.json", json.dumps({"runs": runs, "bag": bag}, indent=1))

    @classmethod
    def of(cls, out: Path) -> Ledger | None:
        """The ledger of a grid folder, or None for a folder from before shards."""
        path = out / "plan.json"
        if not path.is_file():
            return None
        book = cls.__new__(cls)
        plan = json.loads(path.read_text())
        book.out, book.runs, book.bag = out, plan["runs"], plan["bag"]
        return book

    def row(self, run: str) -> dict[str, Any] | None:
        """The run's results row, once some shard finished it."""
        path = self.out / "results" / f"{run}.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def record(self, run: str, row: dict[str, Any]) -> None:
        (self.out / "results").mkdir(parents=True, exist_ok=True)
        write_text(self.out / "results" / f"{run}.json", json.dumps(row) + "\n")

    def choice(self) -> dict[str, Any] | None:
        path = self.out / "bag.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def choose(self, variant: dict[str, Any]) -> None:
        write_text(self.out / "bag.json", json.dumps(variant, indent=1) + "\n")

    def expected(self) -> list[str]:
        """Every run of the grid: the plan, then the bag's runs once it is chosen."""
        choice = self.choice() or {}
        return self.runs + choice.get("runs", [])

    def merge(self) -> tuple[list[dict], list[str]]:
        """Write results.jsonl from the finished runs, in the grid's order; return its rows
        and the runs still missing (a bag not chosen yet is the name `bag`)."""
        rows, missing = [], []
        for run in self.expected():
            row = self.row(run)
            (missing if row is None else rows).append(row or run)
        if self.bag and self.choice() is None:
            missing.append("bag")
        write_text(self.out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        return rows, missing

    def where(self, run: str) -> str:
        """One line on a missing run: who claimed it last, and whether they still run."""
        if run == "bag":
            return "bag: not chosen yet; it waits for every single-trick run"
        last = latest(self.out, run)
        return f"{run}: {last.describe() if last else 'not claimed by any shard yet'}"


def shard_argv(parser: Any, args: Any, shard: str) -> list[str]:
    """The `freebies ablate` arguments of `args` (a parsed namespace of `parser`) for one
    shard: the launcher's own flags dropped, `--shard` added."""
    argv = ["ablate"]
    for action in parser._actions:
        dest, flags = action.dest, action.option_strings
        value = getattr(args, dest, None)
        if not flags or dest in LAUNCHER_DESTS or value is None or value == action.default:
            continue
        if action.nargs == 0:
            argv.append(flags[0])
        else:
            for item in value if isinstance(value, list) else [value]:
                argv += [flags[0], str(item)]
    return [*argv, "--shard", shard]


LAUNCHER_DESTS = {"help", "shard", "launcher", "shards", "sbatch", "submit", "ablate_parser"}


def shard_env(count: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one of `count` local shards: this machine's cores split between
    them (OMP_NUM_THREADS = cores // count, at least 1), so that the shards' trainers do not
    oversubscribe the CPU; a thread count the user set in the environment is kept."""
    env = dict(os.environ if environ is None else environ)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env.setdefault("OMP_NUM_THREADS", str(max(1, (cores or 1) // count)))
    return env


def run_local(argv_of: Any, count: int, out: Path) -> None:
    """Start `count` shard processes on this machine (the cores split between them, see
    `shard_env`), each logging to logs/shard-I-of-N.log, and wait for them all; a failed
    shard is one error line."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs, env = [], shard_env(count)
    for i in range(1, count + 1):
        log = logs / f"shard-{i}-of-{count}.log"
        with log.open("w") as fh:
            cmd = [sys.executable, "-m", "freebies", *argv_of(f"{i}/{count}")]
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
            procs.append((log, proc))
    failed = []
    for log, proc in procs:
        while proc.poll() is None:
            try:
                proc.wait()
            except KeyboardInterrupt:  # the shards got Ctrl-C too: let them checkpoint
                continue
        if proc.returncode == 130:
            raise KeyboardInterrupt
        if proc.returncode != 0:
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
            failed.append(f"{log.name}: {lines[-1] if lines else 'no output'}")
    if failed:
        raise UsageError(f"{len(failed)} shard(s) failed; " + "; ".join(failed))


def sbatch_script(argv_of: Any, count: int, out: Path, options: str, command: str) -> str:
    """A SLURM array job: task I runs shard I/N of the grid from this directory."""
    try:
        words = shlex.split(options)
    except ValueError as e:
        raise UsageError(f"--sbatch {options!r}: {e}") from None
    lines = []  # one #SBATCH line per option with its value, e.g. "--gres gpu:4"
    for word in words:
        if word.startswith("-") or not lines:
            lines.append([word])
        else:
            lines[-1].append(word)
    cmd = shlex.join([sys.executable, "-m", "freebies", *argv_of("@SHARD@")])
    return "\n".join(
        [
            "#!/bin/bash",
            "#SBATCH --job-name=freebies-ablate",
            f"#SBATCH --array=1-{count}",
            f"#SBATCH --output={out.resolve()}/logs/shard-%a-of-{count}.log",
            *(f"#SBATCH {shlex.join(line)}" for line in lines),
            f"# written by: {command}",
            "# task I runs shard I/N; a rerun task takes over its dead claims and resumes them",
            "set -euo pipefail",
            f"cd {shlex.quote(str(Path.cwd()))}",
            cmd.replace("@SHARD@", f'"$SLURM_ARRAY_TASK_ID/{count}"'),
            "",
        ]
    )


def submit(script: Path) -> str:
    """`sbatch SCRIPT`; its answer (the job id)."""
    done = subprocess.run(["sbatch", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise UsageError(f"sbatch {script} failed: {last[-1] if last else done.returncode}")
    return done.stdout.strip()


def need_sbatch(script: Path) -> None:
    if shutil.which("sbatch") is None:
        raise UsageError(
            f"--submit needs sbatch on PATH; run without --submit and submit {script} "
            "from a SLURM login node"
        )


def check_launch(
    shard: str | None, launcher: str | None, count: int | None, sbatch: str, submit: bool
) -> tuple[int, int]:
    """Refuse contradictory shard and launcher flags; the shard this process runs."""
    if shard and launcher:
        raise UsageError("--shard I/N runs one shard, --launcher starts them all; give one")
    if launcher and count is None:
        raise UsageError(f"--launcher {launcher} needs --shards N")
    if count is not None and not launcher:
        raise UsageError("--shards N needs --launcher local or slurm (one shard: --shard I/N)")
    if count is not None and count < 1:
        raise UsageError(f"--shards must be >= 1, got {count}")
    if (sbatch or submit) and launcher != "slurm":
        raise UsageError("--sbatch and --submit go with --launcher slurm")
    return parse_shard(shard) if shard else (1, 1)


def report(out: Path, metric: Metric | None = None) -> list[dict]:
    """Merge the shards' results and rebuild the report; refuse, naming each missing run and
    its last claim, while some run has not finished."""
    book = Ledger.of(out)
    if book is None:  # a grid folder from before shards: results.jsonl is all there is
        return write_report(out, metric)
    with merging(out):
        rows, missing = book.merge()
        if missing:
            lines = "\n".join(f"  {book.where(run)}" for run in missing)
            raise UsageError(
                f"{len(missing)} of {len(rows) + len(missing)} runs of {out} have not "
                f"finished; the report waits for every shard:\n{lines}"
            )
        return write_report(out, metric)
