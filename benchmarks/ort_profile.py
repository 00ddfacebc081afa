"""Where ONNX Runtime spends a file's time: per operator type, with convolutions split into dense and depthwise.

Each file runs batch 1 on one thread with ORT's own profiler (`SessionOptions.enable_profiling`), on the
graph ORT actually executes after its optimisations (fused ops such as QuickGelu, QLinearConv), and the
table gives ms per run for the operator types that take the most time. Use it on the files
`benchmarks/deploy.py` and `rubik export` write, e.g.:

    W=/tmp/rubik-bench-deploy   # benchmarks/deploy.py's files
    .venv/bin/python benchmarks/ort_profile.py $W/tinynet_a.onnx $W/tinynet_a.int8.onnx
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np

WARMUP = 5


def profile(path: Path, runs: int) -> tuple[float, dict[str, float], dict[str, int]]:
    """(ms per run in all, ms per run per op kind, nodes per op kind) for one file."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")  # the graph ORT runs, node names included
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        depthwise = {n.name for n in onnx.load(so.optimized_model_filepath).graph.node
                     if "Conv" in n.op_type and next((a.i for a in n.attribute if a.name == "group"), 1) > 1}
        inp = session.get_inputs()[0]
        x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in inp.shape], dtype=np.float32)
        for _ in range(WARMUP + runs):
            session.run(None, {inp.name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    timed_from = starts[WARMUP]  # the warm-up runs are not counted
    ms: dict[str, float] = collections.Counter()
    count: dict[str, int] = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < timed_from:
            continue
        node, op = e["name"][:-len("_kernel_time")], e["args"]["op_name"]
        kind = f"{op} ({'depthwise' if node in depthwise else 'dense'})" if "Conv" in op else op
        ms[kind] += e["dur"] / 1000 / runs
        count[kind] += 1
    return sum(ms.values()), dict(ms), {k: round(v / runs) for k, v in count.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--top", type=int, default=10, help="operator kinds listed per file")
    a = p.parse_args()
    for path in a.files:
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: pass ONNX files (`rubik export` or benchmarks/deploy.py "
                             "write them)")
        total, ms, count = profile(path, a.runs)
        print(f"\n{path.name}: {total:.2f} ms per run in kernels (batch 1, 1 thread, {a.runs} runs)")
        print("| operator | ms per run | share | nodes |\n|---|---|---|---|")
        for kind, t in sorted(ms.items(), key=lambda kv: -kv[1])[:a.top]:
            print(f"| {kind} | {t:.3f} | {t / total:.0%} | {count[kind]} |")


if __name__ == "__main__":
    main()
