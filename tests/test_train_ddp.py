"""Two processes on CPU with the gloo backend, as torchrun starts them on GPUs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

from train_helpers import QUICK, ROOT, make_image_folder, sets, write_spec

from rubik.train.checkpoint import list_checkpoints, load_checkpoint


def test_two_process_gloo_training(tmp_path):
    data = make_image_folder(tmp_path / "data", train=16, val=5)
    spec = write_spec(tmp_path)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "rubik.cli", "train", "--model", str(spec), "--data", str(data), "--out", str(run),
           *sets({**QUICK, "epochs": 2, "batch_size": 8, "checkpoint_every": 2})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "x 2 process(es)" in result.stdout
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 2
    # 48 training images, 8 per process per step: 3 steps per epoch, each step seeing 16 images in all.
    assert int(rows[-1]["step"]) == 6
    # Validation is summed over both processes: all 15 images are counted once (top-1 is a multiple of 1/15).
    for r in rows:
        assert abs(float(r["val_top1"]) * 15 / 100 - round(float(r["val_top1"]) * 15 / 100)) < 1e-3
    weights, state = load_checkpoint(list_checkpoints(run)[-1])
    assert len(state["rng"]) == 2  # each process's random state, for resuming
    assert json.loads((run / "model.json").read_text())["num_classes"] == 3
