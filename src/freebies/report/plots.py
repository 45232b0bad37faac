"""PNG plots of a run's curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def plot_curves(
    metrics: list[dict],
    path: Path,
    title: str = "",
    keys: tuple[str, ...] = ("test_acc", "val_acc"),
) -> None:
    """Loss, the task's metric `keys` (e.g. test_acc, val_acc) and LR against epoch, side by
    side, from metrics.jsonl rows."""
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.8))
    epochs = [r["epoch"] for r in metrics]

    def series(key: str) -> tuple[list, list]:
        rows = [r for r in metrics if key in r]
        return [r["epoch"] for r in rows], [r[key] for r in rows]

    # The train loss is on augmented, label-smoothed targets, so it sits above the test NLL.
    ax_loss.plot(epochs, [r["train_loss"] for r in metrics], "o-", label="train (as trained)")
    for key in dict.fromkeys(k for r in metrics for k in r if k.startswith("train_")):
        if key != "train_loss":  # the loss's parts (detection: focal, GIoU, centre-ness)
            ax_loss.plot(*series(key), ".--", label=key.removeprefix("train_"))
    for key, label in (("test_loss", "test"), ("val_loss", "val")):
        if any(key in r for r in metrics):
            ax_loss.plot(*series(key), "o-", label=label)
    nll = any("test_loss" in r for r in metrics)  # classification; detection sums its losses
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy" if nll else "loss")
    for key in keys:
        if any(key in r for r in metrics):
            xs, ys = series(key)
            ax_acc.plot(xs, ys, "o-", label="val" if key.startswith("val_") else "test")
            value = f"{ys[-1]:.2f}%" if key.endswith("_acc") else f"{ys[-1]:.3g}"
            ax_acc.annotate(value, (xs[-1], ys[-1]), textcoords="offset points", xytext=(-30, -14))
    acc = all(k.endswith("_acc") for k in keys)
    name = "top-1 accuracy" if acc else keys[0].removeprefix("test_")
    ax_acc.set(title=name, xlabel="epoch", ylabel="%")
    ax_lr.plot(epochs, [r["lr"] for r in metrics], "o-")
    ax_lr.set(title="learning rate (end of epoch)", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.legend()
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lr(lrs: list[float], steps_per_epoch: int, path: Path, title: str = "") -> None:
    """The LR at every iteration, against epochs."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([i / steps_per_epoch for i in range(len(lrs))], lrs)
    ax.set(title=title, xlabel="epoch", ylabel="learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
