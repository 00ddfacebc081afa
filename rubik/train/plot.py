"""Pictures of a run: training curves from metrics.csv, and confusion matrices."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import RubikError


def pyplot():
    """matplotlib's pyplot on the Agg backend: rubik draws to files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path, dpi: int = 110) -> Path:
    """Write `fig` to `out` (making its folder) and free it; returns `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Loss, top-1 (raw and EMA weights) and learning rate per epoch, as one PNG."""
    from ..run import RUN_METRICS_FILE, RunDir

    if not (run_dir / RUN_METRICS_FILE).is_file():
        raise RubikError(f"{run_dir} has no {RUN_METRICS_FILE}: pass a run directory that trained at least one epoch")
    rows = RunDir(run_dir).metrics()
    if not rows:
        raise RubikError(f"{run_dir / RUN_METRICS_FILE} has no rows yet: wait for the first epoch to finish")

    def col(name: str) -> list[float]:
        return [r.get(name, float("nan")) for r in rows]

    epochs = col("epoch")
    fig, (a, b, c) = pyplot().subplots(1, 3, figsize=(13, 3.8))
    a.plot(epochs, col("train_loss"), label="train")
    a.plot(epochs, col("val_loss"), label="val")
    a.plot(epochs, col("ema_val_loss"), label="val (EMA)")
    a.set_title("loss")
    b.plot(epochs, col("train_top1"), label="train")
    b.plot(epochs, col("val_top1"), label="val")
    b.plot(epochs, col("ema_val_top1"), label="val (EMA)")
    b.plot(epochs, col("val_top5"), ":", label="val top-5")
    b.set_title("top-1 accuracy (%)")
    c.plot(epochs, col("lr"))
    c.set_title("learning rate (end of epoch)")
    for ax in (a, b, c):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    a.legend()
    b.legend()
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    return save_figure(fig, out or run_dir / "curves.png")


def plot_confusion(confusion: torch.Tensor, classes: list[str], out: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (true class down, predicted across)."""
    n = len(classes)
    norm = confusion.double() / confusion.sum(1, keepdim=True).clamp_min(1)
    size = min(20, 3 + 0.35 * n)
    fig, ax = pyplot().subplots(figsize=(size, size))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if confusion[i, j]:
                        ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, out)
