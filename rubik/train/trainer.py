"""The training loop: one process, or one per device under torchrun.

A run directory holds everything a run makes:
    config.yaml        every hyper-parameter (the recipe resolved, overrides applied)
    model.json         the task's record: spec, class count, class names, the task (what eval and deploy read)
    best.safetensors   the best weights so far, raw or EMA, by the task's primary metric (best.json says which)
    metrics.csv        one row per epoch; tb/ the same for TensorBoard; train.log plain lines
    checkpoints/       the last `keep_last` checkpoints (see checkpoint.py)

What is trained (model, data, loss, metrics) is a `Task` (task.py); the trainer never asks which one.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RubikError
from ..files import atomic_write, atomic_write_text
from ..run import CONFIG_FILE, RUN_METRICS_FILE, RUN_WEIGHTS_FILE, RunDir, migrate_best
from . import distributed
from .checkpoint import latest_checkpoint, save_checkpoint, save_tensors
from .data import worker_error
from .ema import ema_model
from .optim import build_optimizer, build_scheduler, effective_lr
from .recipes import TrainConfig
from .task import Result, Task

LOG_FILE = "train.log"
log = logging.getLogger("rubik.train")


class NonFiniteLossError(RubikError):
    """The loss became NaN or infinite; training stopped without saving the bad weights."""


def save_config(run_dir: Path, c: TrainConfig) -> None:
    import yaml

    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(c.to_dict(), sort_keys=False))


def read_config(run_dir: Path) -> TrainConfig:
    from .recipes import apply, load_yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RubikError(f"nothing to resume in {run_dir}: it has no {CONFIG_FILE}; start a new run with `rubik train`")
    return apply(TrainConfig(), load_yaml(path), str(path))


def _device(c: TrainConfig, d: distributed.Dist) -> torch.device:
    if c.device == "auto":
        return torch.device(f"cuda:{d.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(c.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RubikError("device cuda was asked for but no GPU is visible; use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{d.local_rank}")
    return dev


class Trainer:
    """Trains `task` with config `c` into `run_dir` (or continues it: `resume`)."""

    def __init__(self, c: TrainConfig, run_dir: str | Path, task: Task, resume: bool = False,
                 progress: bool | None = None):
        self.c, self.run_dir, self.task = c, Path(run_dir), task
        device_kind = "cuda" if (c.device == "auto" and torch.cuda.is_available()) or c.device.startswith("cuda") \
            else "cpu"
        self.d = distributed.init(device_kind)
        self.device = _device(c, self.d)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.d.main
        self.amp_dtype = torch.bfloat16 if (c.amp == "bf16" or (c.amp == "auto" and self.device.type == "cuda")) \
            else None
        if c.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if self.d.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                save_config(self.run_dir, c)
        self._setup_logging()
        torch.manual_seed(c.seed)  # the same initial weights on every process
        task.setup(self)  # sets spec, data, num_classes and net (initial weights loaded)
        self.net.to(self.device, memory_format=torch.channels_last if c.channels_last else torch.preserve_format)
        if c.sync_bn and self.d.enabled:
            if self.device.type == "cuda":
                self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            else:
                log.info("sync_bn needs GPUs (torch's SyncBatchNorm is CUDA-only): BatchNorm stays per process")
        task.prepare(self, resume)
        self.ema = ema_model(self.net, c.ema_decay, c.ema_warmup) if c.ema_decay > 0 else None
        self.model: nn.Module = self.net
        if self.d.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        if c.compile:
            self.model = torch.compile(self.model)
        torch.manual_seed(c.seed * 7919 + self.d.rank + 1)  # dropout and drop-path differ across processes

        self._build_loaders()
        self.lr = effective_lr(c, self.d.world_size)
        self.optimizer = build_optimizer(self.net, c, self.lr)
        self.scheduler = build_scheduler(self.optimizer, c, self.lr, self.steps_per_epoch)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best: dict[str, Any] = {"metric": task.metric_keys[0], "value": -1.0}
        self.frozen: set[str] = set()
        self.history: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        # Train-loss sums (loss x n, correct, n) and seconds of the epoch in progress: a checkpoint taken
        # mid-epoch carries them, so the epoch's row after a resume covers the whole epoch.
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.epoch_time = 0.0
        if resume:
            self._resume()
        if self.d.main:
            RunDir(self.run_dir).write_record(task.run_record())

    # ---- setup -------------------------------------------------------------------------------

    def _setup_logging(self) -> None:
        log.setLevel(logging.INFO)
        log.propagate = False
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
        if not self.d.main:
            return
        fh = logging.FileHandler(self.run_dir / LOG_FILE)
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(fh)
        sh = logging.StreamHandler(sys.stdout)
        sh.setFormatter(logging.Formatter("%(message)s"))
        sh.addFilter(lambda r: not getattr(r, "file_only", False))
        log.addHandler(sh)

    def _build_loaders(self) -> None:
        c, d = self.c, self.d
        loaders = self.task.loaders(self)
        self.train_sampler, self.train_loader, self.val_loader = loaders.train_sampler, loaders.train, loaders.val
        self.data_path, self.data_path_why, self.workers = loaders.path, loaders.why, loaders.workers
        self.steps_per_epoch = self.train_sampler.per_rank // c.batch_size // c.accum_steps
        if self.steps_per_epoch < 1:
            raise RubikError(f"too few training images ({len(self.data.train)}) for a batch of {c.batch_size} x "
                             f"{c.accum_steps} accumulation x {d.world_size} processes; lower --batch-size")
        if c.steps_per_epoch:  # shorter epochs, e.g. to evaluate and checkpoint often on a large data set
            self.steps_per_epoch = min(self.steps_per_epoch, c.steps_per_epoch)
        self.batches_per_epoch = self.steps_per_epoch * c.accum_steps

    def _resume(self) -> None:
        found = latest_checkpoint(self.run_dir)
        if found is None:
            log.info(f"no complete checkpoint in {self.run_dir}: starting from the beginning")
            return
        path, weights, state = found
        self.net.load_state_dict(weights["model"])
        if self.ema is not None and "ema" in weights:
            self.ema.module.load_state_dict(weights["ema"])
            self.ema.n_averaged.fill_(state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("schedule") == self._schedule_signature():
            self.scheduler.load_state_dict(state["scheduler"])
        else:  # epochs or schedule changed on resume: the new schedule, at the step reached
            import warnings

            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] = self.lr
            self.scheduler = build_scheduler(self.optimizer, self.c, self.lr, self.steps_per_epoch)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
                for _ in range(state["step"]):
                    self.scheduler.step()
            log.info(f"the schedule changed since the checkpoint: learning rate now "
                     f"{self.optimizer.param_groups[0]['lr']:.3g}")
        rng = state["rng"]
        torch.set_rng_state(rng[self.d.rank] if self.d.rank < len(rng) else rng[0])
        if self.device.type == "cuda" and state.get("cuda_rng"):
            cuda_rng = state["cuda_rng"]
            torch.cuda.set_rng_state(cuda_rng[min(self.d.rank, len(cuda_rng) - 1)], self.device)
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.best = migrate_best(state["best"], self.task.metric_keys)
        self.history, self.skipped = state["history"], state["skipped"]
        # The saved sums are over all processes: rank 0 carries them, the others start from zero.
        self.sums = state["epoch_sums"].to(self.device) * (1 if self.d.main else 0)
        self.epoch_time = state["epoch_time"]
        log.info(f"resumed from {path} (epoch {self.epoch + 1}, step {self.step})")

    # ---- saving ------------------------------------------------------------------------------

    def _schedule_signature(self) -> list:
        c = self.c
        return [c.epochs, self.steps_per_epoch, c.scheduler, c.lr, c.warmup_epochs, c.warmup_lr, c.min_lr,
                c.decay_epochs, c.decay_rate, self.d.world_size, c.batch_size, c.accum_steps]

    def _save_checkpoint(self) -> None:
        sums = distributed.all_reduce_sum(self.sums.clone(), self.d)
        rng = distributed.gather_object(torch.get_rng_state(), self.d)
        cuda_rng = distributed.gather_object(torch.cuda.get_rng_state(self.device), self.d) \
            if self.device.type == "cuda" else []
        if not self.d.main:
            return
        weights = {"model": self.net.state_dict()}
        if self.ema is not None:
            weights["ema"] = self.ema.module.state_dict()
        state = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "schedule": self._schedule_signature(),
                 "rng": rng, "cuda_rng": cuda_rng,
                 "ema_updates": int(self.ema.n_averaged) if self.ema is not None else 0,
                 "best": self.best, "history": self.history, "skipped": self.skipped,
                 "epoch_sums": sums.cpu(), "epoch_time": self.epoch_time + time.perf_counter() - self.t_epoch}
        save_checkpoint(self.run_dir, self.step, weights, state, self.c.keep_last)

    def _write_metrics(self) -> None:
        if not self.history:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.history[0]))
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.run_dir / RUN_METRICS_FILE, buf.getvalue())

    def _update_best(self, raw: Result, ema: Result | None) -> None:
        key = self.task.metric_keys[0]
        which, result, module = "raw", raw, self.net
        if ema is not None and ema.metrics[key] >= raw.metrics[key]:
            which, result, module = "ema", ema, self.ema.module
        if result.metrics[key] <= self.best["value"]:
            return
        self.best = {"metric": key, "value": result.metrics[key], **result.metrics, "loss": result.loss,
                     "weights": which, "epoch": self.epoch + 1, "step": self.step}
        if self.d.main:
            atomic_write(self.run_dir / RUN_WEIGHTS_FILE, lambda p: save_tensors(p, module.state_dict()))
            RunDir(self.run_dir).write_best(self.best)

    # ---- the loop ----------------------------------------------------------------------------

    def _freeze(self) -> None:
        """The parameters the task keeps fixed this epoch (e.g. a classifier's body while its new head warms up)."""
        self.frozen = {name for name, _ in self.net.named_parameters() if self.task.frozen(name, self.epoch)}
        if not self.d.enabled:  # DDP needs every parameter to produce a gradient: there, drop them instead
            for name, p in self.net.named_parameters():
                p.requires_grad_(name not in self.frozen)

    def _check_finite(self, bad: torch.Tensor) -> None:
        bad = distributed.all_reduce_sum(bad.clone().float(), self.d)
        if bad.item() > 0:
            last = latest_checkpoint_name(self.run_dir)
            keep = f"the last good checkpoint is kept ({last})" if last else "no checkpoint had been written yet"
            raise NonFiniteLossError(
                f"loss became NaN or infinite at epoch {self.epoch + 1}, step {self.step}; training stopped and "
                f"{keep}. Lower the learning rate (--lr, now {self.c.lr}) or clip gradients (--set clip_grad=1.0), "
                f"then continue with `rubik train --resume {self.run_dir} --lr ...`")

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def train_epoch(self) -> dict[str, float]:
        c = self.c
        self.model.train()
        self._freeze()
        self.train_sampler.set_epoch(self.epoch, self.batch_in_epoch * c.batch_size)
        bad = torch.zeros((), dtype=torch.bool, device=self.device)  # a non-finite loss since the last check
        bar = None
        if self.progress:
            from ..progress import Progress  # a bar on a terminal, plain lines in a log

            bar = Progress(self.batches_per_epoch, f"epoch {self.epoch + 1}/{c.epochs}", initial=self.batch_in_epoch,
                           unit="batch")
        self.t_epoch = self.t_log = time.perf_counter()
        self.seen_since_log = 0
        batch_i = self.batch_in_epoch
        loss = torch.zeros((), device=self.device)
        for images, targets, skipped in self.train_loader:
            if batch_i >= self.batches_per_epoch:
                break
            if skipped:
                self._note_skipped(skipped)
            sync = (batch_i + 1) % c.accum_steps == 0
            if images.numel():
                loss = self._backward(images, targets, sync)
                bad |= ~torch.isfinite(loss)
            batch_i += 1
            if sync:
                self._step(batch_i, bad)
                self._report_step(bar, loss)
                if c.checkpoint_every and self.step % c.checkpoint_every == 0 and batch_i < self.batches_per_epoch:
                    self._check_finite(bad)
                    self._save_checkpoint()
        if bar is not None:
            bar.close()
        self._check_finite(bad)
        return self._train_metrics()

    def _backward(self, images: torch.Tensor, targets: Any, sync: bool) -> torch.Tensor:
        """Forward and backward one batch (gradients accumulate; DDP syncs them when `sync`); returns its loss."""
        c, d = self.c, self.d
        images = images.to(self.device, non_blocking=True)
        if c.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        no_sync = self.model.no_sync() if (d.enabled and not sync and hasattr(self.model, "no_sync")) \
            else nullcontext()
        with no_sync:
            with self._autocast():
                loss, n, correct = self.task.loss(self.model, images, targets)
            (loss / c.accum_steps).backward()
        loss = loss.detach().float()
        self.sums[0] += loss * n
        if correct is not None:
            self.sums[1] += correct
        self.sums[2] += n
        self.seen_since_log += n
        return loss

    def _step(self, batch_i: int, bad: torch.Tensor) -> None:
        """One optimiser step on the accumulated gradients, then the schedule and the EMA."""
        c = self.c
        if self.frozen and self.d.enabled:
            for name, p in self.net.named_parameters():
                if name in self.frozen:
                    p.grad = None
        if c.clip_grad > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), c.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        self.step += 1
        self.batch_in_epoch = batch_i
        check_every = 1 if self.device.type == "cpu" else 20  # a NaN check waits for the GPU: not every step there
        if self.step % check_every == 0:
            self._check_finite(bad)

    def _report_step(self, bar, loss: torch.Tensor) -> None:
        c = self.c
        if bar is not None:
            bar.update(c.accum_steps)
            if self.step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        if c.log_every and self.step % c.log_every == 0:
            now = time.perf_counter()
            log.info(f"epoch {self.epoch + 1} step {self.step} loss {loss.item():.4f} "
                     f"lr {self.optimizer.param_groups[0]['lr']:.3e} "
                     f"{self.seen_since_log * self.d.world_size / (now - self.t_log):.0f} img/s",
                     extra={"file_only": self.progress})
            self.seen_since_log, self.t_log = 0, now

    def _train_metrics(self) -> dict[str, float]:
        """The finished epoch's training loss (and top-1 where the task counts it) over all processes."""
        elapsed = self.epoch_time + time.perf_counter() - self.t_epoch
        sums = self.sums
        self.sums = torch.zeros_like(sums)
        self.epoch_time = 0.0
        distributed.all_reduce_sum(sums, self.d)
        n = max(1.0, float(sums[2]))
        top1 = {"train_top1": 100 * float(sums[1]) / n} if self.task.train_accuracy else {}
        return {"train_loss": float(sums[0]) / n, **top1,
                "images_per_s": float(sums[2]) / elapsed if elapsed > 0 else 0.0, "train_time_s": elapsed}

    def _note_skipped(self, paths: list[str]) -> None:
        new = [p for p in paths if p not in self.skipped]
        for p in new:
            log.info(f"skipped unreadable image {p}", extra={"file_only": self.progress})
        self.skipped += new

    def fit(self) -> dict[str, Any]:
        c = self.c
        if self.d.main:
            self._log_start()
        writer = None
        if self.d.main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step or None)
        try:
            while self.epoch < c.epochs:
                self._end_epoch(self.train_epoch(), writer)
                self.epoch += 1
                self.batch_in_epoch = 0
                self.t_epoch = time.perf_counter()
                if self.d.main:
                    self._write_metrics()
                self._save_checkpoint()
        finally:
            if writer is not None:
                writer.close()
        summary = {"run_dir": str(self.run_dir), "best": self.best, "epochs": c.epochs, "steps": self.step,
                   "skipped_images": len(self.skipped)}
        if self.d.main:
            log.info(f"best validation {self.task.metric_labels[0]} {self.best['value']:.2f}% "
                     f"({self.best['weights']} weights, epoch {self.best['epoch']}) saved as "
                     f"{self.run_dir / RUN_WEIGHTS_FILE}")
        distributed.barrier(self.d)
        return summary

    def _end_epoch(self, train: dict[str, float], writer) -> None:
        """Evaluate the raw and EMA weights, then record the epoch: metrics row, best weights, log, TensorBoard."""
        c = self.c
        kw = dict(channels_last=c.channels_last, amp_dtype=self.amp_dtype, dist_info=self.d)
        raw = self.task.evaluate(self.net, self.val_loader, self.device, **kw)
        ema = self.task.evaluate(self.ema.module, self.val_loader, self.device, **kw) if self.ema is not None else None

        def val(prefix: str, r: Result | None) -> dict[str, Any]:
            return {f"{prefix}_loss": round(r.loss, 6) if r else "",
                    **{f"{prefix}_{k}": round(r.metrics[k], 4) if r else "" for k in self.task.metric_keys}}

        row = {"epoch": self.epoch + 1, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
               **{k: round(v, 6) for k, v in train.items()}, **val("val", raw), **val("ema_val", ema),
               "skipped_images": len(self.skipped)}
        self.history.append(row)
        self._update_best(raw, ema)
        self._log_epoch(train, raw, ema)
        if writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and v != "":
                    writer.add_scalar(k.replace("ema_val_", "val_ema/").replace("val_", "val/")
                                      .replace("train_", "train/"), v, self.step)
            writer.flush()

    def _log_epoch(self, train: dict[str, float], raw: Result, ema: Result | None) -> None:
        keys, labels = self.task.metric_keys, self.task.metric_labels
        ema_txt = f" | ema {labels[0]} {ema.metrics[keys[0]]:.2f}%" if ema else ""
        train_txt = f"top-1 {train['train_top1']:.1f}% " if "train_top1" in train else ""
        # a detector's eval-mode forward gives boxes, not SSD's loss: no validation loss to print
        val_loss_txt = "" if math.isnan(raw.loss) else f"loss {raw.loss:.4f} "
        metrics_txt = " ".join(f"{label} {raw.metrics[k]:.2f}%" for k, label in zip(keys, labels, strict=True))
        log.info(f"epoch {self.epoch + 1}/{self.c.epochs} train loss {train['train_loss']:.4f} "
                 f"{train_txt}| val {val_loss_txt}{metrics_txt}{ema_txt} | {train['images_per_s']:.0f} img/s"
                 + (f" | {len(self.skipped)} unreadable images skipped" if self.skipped else ""))

    def _log_start(self) -> None:
        c = self.c
        params = sum(p.numel() for p in self.net.parameters())
        amp = "bf16" if self.amp_dtype else "off"
        log.info(f"model {self.spec.name} at {self.spec.resolution}px, {params / 1e6:.2f} M parameters, "
                 f"{self.num_classes} classes")
        log.info(f"data {self.data.description}")
        log.info(f"data path {self.data_path} ({self.data_path_why})")
        log.info(f"recipe {c.recipe}: {c.optimizer} lr {self.lr:.3g} (= {c.lr:g} per {c.lr_base_batch} images), "
                 f"{c.scheduler} schedule, {c.epochs} epochs x {self.steps_per_epoch} steps, batch {c.batch_size}"
                 f" x {c.accum_steps} x {self.d.world_size} process(es), EMA {c.ema_decay or 'off'}")
        log.info(f"device {self.device}, amp {amp}, channels_last {c.channels_last}, compile {c.compile}, "
                 f"{self.workers} loader workers; config in {self.run_dir / CONFIG_FILE}")


def latest_checkpoint_name(run_dir: Path) -> str | None:
    from .checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    return str(found[-1]) if found else None


def train(c: TrainConfig, run_dir: str | Path, task: Task, resume: bool = False,
          progress: bool | None = None) -> dict[str, Any]:
    """Train (or continue) a run of `task` (rubik.tasks.make_task(c) finds it); returns a summary with the
    best validation result."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    trainer = None
    try:
        trainer = Trainer(c, run_dir, task, resume=resume, progress=progress)
        return trainer.fit()
    except RubikError as e:
        raise worker_error(e) from None
    except Exception as e:
        if trainer is None or not distributed.peer_lost(e, trainer.d):
            raise
        last = latest_checkpoint_name(trainer.run_dir) or "none yet: it starts over"
        raise RubikError(f"another process of this {trainer.d.world_size}-process run stopped "
                         f"({str(e).strip().splitlines()[0][:200]}), so this one stopped too; rerun the same "
                         f"torchrun command on every node with `train --resume {trainer.run_dir}` to continue from "
                         f"the last checkpoint ({last})") from None
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
        if trainer is not None:
            distributed.shutdown(trainer.d)
