"""Two torchrun "nodes" on one machine (--nnodes 2, c10d rendezvous on localhost, one gloo process each).

A node lost mid-run (its agent and its training process SIGKILLed) stops the other with a one-line error;
both rerun with --resume end bitwise where an uninterrupted two-node run ends (--deterministic).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from train_helpers import QUICK, ROOT, make_image_folder, sets, write_spec

from rubik.train.checkpoint import list_checkpoints, load_checkpoint

# 48 training images, 8 per process per step: 3 steps per epoch, 9 in all, a checkpoint after every step.
RUN = {**QUICK, "epochs": 3, "batch_size": 8, "checkpoint_every": 1, "drop_connect_rate": 0.2}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(port: int, train_args: list[str], logs: Path) -> list[subprocess.Popen]:
    """Both nodes' torchrun agents, as each machine would start them (only the endpoint is shared)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{port}", "--rdzv_id", f"rubik{port}",
           "-m", "rubik.cli", "train", *train_args]
    logs.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=open(logs / f"node{i}.log", "w"), stderr=subprocess.STDOUT)
            for i in range(2)]


def wait_all(procs, timeout=300) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()


def final(run: Path) -> dict:
    weights, state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["epoch"] == RUN["epochs"] and state["step"] == 9
    return weights


def test_two_nodes_train_lose_one_and_resume_exactly(tmp_path):
    data = make_image_folder(tmp_path / "data", train=16, val=4)
    spec = write_spec(tmp_path)

    def args(out: Path) -> list[str]:
        return ["--model", str(spec), "--data", str(data), "--out", str(out), "--deterministic", *sets(RUN)]

    reference = tmp_path / "reference"
    codes = wait_all(start_nodes(free_port(), args(reference), tmp_path / "logs-ref"))
    assert codes == [0, 0], [(tmp_path / "logs-ref" / f"node{i}.log").read_text()[-3000:] for i in range(2)]
    assert "x 2 process(es)" in "".join((tmp_path / "logs-ref" / f"node{i}.log").read_text() for i in range(2))

    run = tmp_path / "run"
    nodes = start_nodes(free_port(), args(run), tmp_path / "logs-kill")
    try:
        deadline = time.monotonic() + 240
        while not list_checkpoints(run) and time.monotonic() < deadline and all(p.poll() is None for p in nodes):
            time.sleep(0.05)
        assert all(p.poll() is None for p in nodes), "a node ended before the other could be killed"
        # The machine of node 1 goes away: its torchrun agent and the training process the agent started.
        agent = nodes[1].pid
        children = [int(pid) for pid in Path(f"/proc/{agent}/task/{agent}/children").read_text().split()]
        for pid in [*children, agent]:
            os.kill(pid, signal.SIGKILL)
        survivor = nodes[0].wait(timeout=180)  # stops instead of waiting on its lost peer
    finally:
        for p in nodes:
            p.kill()
            p.wait()
    log = (tmp_path / "logs-kill" / "node0.log").read_text()
    assert survivor != 0, log[-3000:]
    assert "another process of this 2-process run stopped" in log and f"--resume {run}" in log, log[-3000:]
    assert "trainer.py" not in log, log[-3000:]  # a one-line error from rubik, not a traceback through it
    killed_at = [p.name for p in list_checkpoints(run)]
    assert killed_at and "step-00000009" not in killed_at

    codes = wait_all(start_nodes(free_port(), ["--resume", str(run)], tmp_path / "logs-resume"))
    logs = [(tmp_path / "logs-resume" / f"node{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], [text[-3000:] for text in logs]
    assert "resumed from" in "".join(logs)

    expected, got = final(reference), final(run)
    assert set(expected) == set(got) == {"model", "ema"}
    for name in expected:
        different = [k for k in expected[name] if not torch.equal(expected[name][k], got[name][k])]
        assert not different, f"{name}: {len(different)} tensors differ (e.g. {different[:3]}); killed at {killed_at}"
    assert (reference / "metrics.csv").read_text().count("\n") == (run / "metrics.csv").read_text().count("\n") == 4
