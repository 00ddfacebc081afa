"""A run killed with SIGKILL at any moment and resumed ends bitwise where an uninterrupted run ends."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import torch
from train_helpers import QUICK, ROOT, make_image_folder, rubik_cli, sets, write_spec

from rubik.train.checkpoint import list_checkpoints, load_checkpoint

# Three epochs of six steps, a checkpoint every two steps: kills land mid-epoch, at epoch ends and mid-save.
RUN = {**QUICK, "epochs": 3, "batch_size": 8, "checkpoint_every": 2, "keep_last": 2, "randaugment": True,
       "drop_connect_rate": 0.2}


def _train_args(spec, data, out) -> list[str]:
    return ["train", "--model", str(spec), "--data", str(data), "--out", str(out), "--deterministic",
            *sets({k: v for k, v in RUN.items()})]


def _final(run) -> dict[str, dict[str, torch.Tensor]]:
    weights, state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["epoch"] == RUN["epochs"]
    return weights


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    data = make_image_folder(tmp_path / "data")
    spec = write_spec(tmp_path)
    reference = tmp_path / "reference"
    result = rubik_cli(*_train_args(spec, data, reference))
    assert result.returncode == 0, result.stderr

    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "rubik.cli", *_train_args(spec, data, run)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list_checkpoints(run) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(random.uniform(0, 0.5))  # then at some moment after the first checkpoint
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed: make the run longer"
    killed_at = [p.name for p in list_checkpoints(run)]

    result = rubik_cli("train", "--resume", str(run))
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout, killed_at

    expected, got = _final(reference), _final(run)
    assert set(expected) == set(got) == {"model", "ema"}
    for name in expected:
        assert expected[name].keys() == got[name].keys()
        different = [k for k in expected[name] if not torch.equal(expected[name][k], got[name][k])]
        assert not different, f"{name}: {len(different)} tensors differ (e.g. {different[:3]}); killed at {killed_at}"
    assert (reference / "metrics.csv").read_text().count("\n") == (run / "metrics.csv").read_text().count("\n")
