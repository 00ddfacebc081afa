"""Small data and models for the training tests: seconds, not minutes, on two CPU cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_SPEC = {"name": "tiny_test", "width": 0.25, "depth": 0.3, "resolution": 32}
# Quick settings for every test run; a test adds what it exercises.
QUICK = {"batch_size": 16, "epochs": 2, "num_workers": 0, "log_every": 0, "warmup_epochs": 0.0, "val_split": 0.25}


def write_spec(folder: Path) -> Path:
    path = folder / "tiny.json"
    path.write_text(json.dumps(TINY_SPEC))
    return path


def make_image_folder(root: Path, classes=("red", "green", "blue"), train: int = 16, val: int = 4,
                      size: int = 24, seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png: noisy images whose dominant colour is the class."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for split, count in (("train", train), ("val", val)):
        for ci, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = torch.rand(size, size, 3, generator=g) * 120
                img[..., ci % 3] += 135
                Image.fromarray(img.to(torch.uint8).numpy()).save(d / f"{i:03d}.png")
    return root


def rubik_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m rubik.cli ARGS` in a fresh process (two threads, like the tests)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "rubik.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def sets(values: dict) -> list[str]:
    """--set KEY=VALUE arguments for a dict of options."""
    out = []
    for k, v in values.items():
        out += ["--set", f"{k}={json.dumps(v)}"]
    return out
