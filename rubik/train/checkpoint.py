"""Checkpoints that survive a kill or a full disk at any moment.

A checkpoint is a folder RUN_DIR/checkpoints/step-NNNNNNNN holding `model.safetensors`,
`ema.safetensors` (when EMA is on) and `state.pt` (optimiser, scheduler, RNG, position, metrics:
tensors and plain Python values only, so it loads with weights_only=True). It is written as a
hidden temporary folder, every file fsync'ed, then renamed into place: a folder with the final
name is always complete. Only the newest `keep_last` are kept, and only after a new one is whole.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..files import disk_error, fsync_dir, fsync_file

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.pt"
PREFIX = "step-"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors wants contiguous, unshared tensors: channels_last weights are copied to the default layout."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def save_checkpoint(run_dir: Path, step: int, weights: dict[str, dict[str, torch.Tensor]], state: dict[str, Any],
                    keep_last: int = 2) -> Path:
    """Write checkpoint `step` (weights: file stem -> state_dict) and prune all but the newest `keep_last`."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".{final.name}.tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for stem, tensors in weights.items():
            save_tensors(tmp / f"{stem}.safetensors", tensors)
        torch.save(state, tmp / STATE_FILE)
        for f in tmp.iterdir():
            fsync_file(f)
        fsync_dir(tmp)
        if final.exists():  # the same step written again after a resume: swap, never leave neither
            old = folder / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(e, final) from None
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(weights by file stem, state) of one checkpoint folder; only tensors and plain values are unpickled."""
    from safetensors.torch import load_file

    weights = {p.stem: load_file(str(p)) for p in sorted(Path(path).glob("*.safetensors"))}
    state = torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)
    return weights, state


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None:
    """The newest checkpoint that loads; a damaged one (say, a disk error) falls back to the one before."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            weights, state = load_checkpoint(path)
        except Exception:  # noqa: BLE001 - any unreadable checkpoint is skipped for an older one
            continue
        return path, weights, state
    return None
