"""Training throughput on CIFAR-10 JPEGs: rubik's engine against timm's own training pieces.

Both sides train TinyNet-E (rubik's `tinynet_e` and timm's `tinynet_e`) at the same resolution and
batch size, with AdamW (weight decay off biases and norms), cosine schedule, an EMA updated every
step, label smoothing, RandomResizedCrop + horizontal flip, the same number of DataLoader workers,
and channels_last. rubik runs its real `Trainer.train_epoch` (data loader, per-sample seeded
augmentation, NaN check, EMA via AveragedModel) twice: `rubik` on the file path (JPEG decoding in
worker processes, as timm) and `rubik-mem` on the in-memory path (`--data-path memory`: decoded once
into a uint8 cache, crops and flips on whole batches in the training process, no workers); timm runs
the loop of its train.py with `timm.data.create_loader`, `timm.optim.create_optimizer_v2` and
`timm.utils.ModelEmaV3`. A fourth side, `compute`, runs rubik's same training step on one batch held
in memory, fed again and again: no decoding, no augmentation, no loading. No data path can be faster,
so its ratio to timm is the most any data path can gain on the machine that runs it.

Rounds alternate between the sides so that load from other processes hits them alike; the
table gives the median images/s of each side and its ratio to timm. Run from the repository root:

    .venv/bin/python benchmarks/train_cifar10_vs_timm.py            # CPU, about 5-10 minutes
    .venv/bin/python benchmarks/train_cifar10_vs_timm.py --device cuda --amp   # GPU, bf16

The data is ../shared/datasets/cifar10-jpg.tar.gz, extracted to /tmp/cifar10 on first use.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import tarfile
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"


def cifar10(root: Path) -> Path:
    if not (root / "train").is_dir():
        if not ARCHIVE.is_file():
            raise SystemExit(f"CIFAR-10 not found: extract {ARCHIVE.name} so that {root}/train exists")
        print(f"extracting {ARCHIVE} to {root.parent} ...", flush=True)
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(root.parent, filter="data")
    return root


class RubikSide:
    def __init__(self, a: argparse.Namespace, data: Path, data_path: str = "files"):
        from rubik.tasks import make_task
        from rubik.train import build_config
        from rubik.train.trainer import Trainer

        config = build_config(cli_values={
            "model": "tinynet_e", "data": str(data), "resolution": a.resolution, "batch_size": a.batch_size,
            "optimizer": "adamw", "lr": a.lr, "lr_base_batch": a.batch_size, "weight_decay": 0.05,
            "warmup_epochs": 0.0, "epochs": 100, "ema_decay": 0.998, "label_smoothing": 0.1, "drop_rate": 0.2,
            "drop_connect_rate": 0.1, "crop_scale": [0.35, 1.0], "hflip": 0.5, "color_jitter": 0.0,
            "interpolation": "bicubic", "num_workers": a.workers, "steps_per_epoch": a.steps,
            "channels_last": True, "amp": "bf16" if a.amp else "off", "device": a.device, "log_every": 0,
            "data_path": data_path})
        self.trainer = Trainer(config, Path(tempfile.mkdtemp(prefix="rubik-bench-")), make_task(config),
                               progress=False)

    def round(self, steps: int) -> float:
        t = self.trainer
        t.c.steps_per_epoch = steps
        t.steps_per_epoch = t.batches_per_epoch = steps
        result = t.train_epoch()
        t.epoch += 1
        t.batch_in_epoch = 0
        return result["images_per_s"]


class ComputeSide(RubikSide):
    """rubik's same training step fed one batch over and over: no data cost at all, the ceiling of any data path."""

    def __init__(self, a: argparse.Namespace, data: Path):
        super().__init__(a, data, "memory")
        images, targets, _ = next(iter(self.trainer.train_loader))
        self.batch = (images, targets, [])

    def round(self, steps: int) -> float:
        self.trainer.train_loader = itertools.repeat(self.batch, steps)
        return super().round(steps)


class TimmSide:
    def __init__(self, a: argparse.Namespace, data: Path):
        import timm
        from timm.data import ImageDataset, create_loader
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2
        from timm.utils import ModelEmaV3

        self.device = torch.device(a.device if a.device != "auto" else "cpu")
        torch.manual_seed(0)
        self.model = timm.create_model("tinynet_e", num_classes=10, drop_rate=0.2, drop_path_rate=0.1)
        self.model.to(self.device, memory_format=torch.channels_last)
        dataset = ImageDataset(str(data / "train"))
        cfg = self.model.pretrained_cfg
        self.loader = create_loader(dataset, input_size=(3, a.resolution, a.resolution), batch_size=a.batch_size,
                                    is_training=True, use_prefetcher=False, scale=(0.35, 1.0), hflip=0.5,
                                    color_jitter=0.0, interpolation="bicubic", mean=cfg["mean"], std=cfg["std"],
                                    num_workers=a.workers, persistent_workers=a.workers > 0,
                                    pin_memory=self.device.type == "cuda")
        self.optimizer = create_optimizer_v2(self.model, "adamw", lr=a.lr, weight_decay=0.05)
        self.scheduler, _ = create_scheduler_v2(self.optimizer, "cosine", num_epochs=100, warmup_epochs=0,
                                                step_on_epochs=False, updates_per_epoch=len(self.loader))
        self.ema = ModelEmaV3(self.model, decay=0.998, use_warmup=True)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if a.amp else nullcontext
        self.updates = 0

    def round(self, steps: int) -> float:
        self.model.train()
        start, seen = time.perf_counter(), 0
        for i, (x, y) in enumerate(self.loader):  # as timm's train.py train_one_epoch does, minus logging
            if i >= steps:
                break
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(self.device, non_blocking=True)
            with self.autocast():
                loss = self.loss_fn(self.model(x), y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.ema.update(self.model, step=self.updates)
            self.updates += 1
            self.scheduler.step_update(num_updates=self.updates)
            loss.item()  # train.py reads the loss for its meters
            seen += x.shape[0]
        return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/tmp/cifar10", type=Path)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per side, after one warm-up round each")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--only", nargs="+", choices=["rubik", "rubik-mem", "timm", "compute"], help="run only these sides")
    a = p.parse_args()
    data = cifar10(a.data)
    sides = {"rubik": RubikSide(a, data), "rubik-mem": RubikSide(a, data, "memory"), "timm": TimmSide(a, data),
             "compute": ComputeSide(a, data)}
    if a.only:
        sides = {k: v for k, v in sides.items() if k in a.only}
    for name, side in sides.items():
        print(f"warm-up {name}: {side.round(max(5, a.steps // 3)):.0f} img/s", flush=True)
    results: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(a.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))  # alternate who goes first
        for name in order:
            results[name].append(sides[name].round(a.steps))
        print(f"round {r + 1}: " + "  ".join(f"{n} {results[n][-1]:.0f}" for n in sides) + " img/s", flush=True)

    med = {n: statistics.median(v) for n, v in results.items()}
    cpu = platform.processor() or platform.machine()
    print()
    print(f"# TinyNet-E on CIFAR-10 JPEGs, {a.resolution}px, batch {a.batch_size}, {a.workers} workers, "
          f"{a.rounds} x {a.steps} steps per side, device {a.device}{' bf16' if a.amp else ''}, channels_last")
    print(f"# machine: {os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'side':<10} {'median img/s':>13} {'min':>7} {'max':>7}" + ("  vs timm" if "timm" in med else ""))
    for n, v in results.items():
        ratio = f"  {med[n] / med['timm']:.3f}" if "timm" in med else ""
        print(f"{n:<10} {med[n]:>13.1f} {min(v):>7.1f} {max(v):>7.1f}{ratio}")


if __name__ == "__main__":
    main()
