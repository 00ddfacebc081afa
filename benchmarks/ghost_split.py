"""The Ghost layout: how many bottlenecks to put in it, for fp32 and for the int8 path, against plain ORT fp32.

Exports ghostnet_100 (random weights, BatchNorm statistics from real photos) as it is and in the Ghost layout
through several depths, quantizes each as `rubik export --int8` does (auto boundary), and times every file
with the plain ORT fp32 export of the same weights in the same interleaved rounds (batch 1, 1 thread).
`rubik.deploy.layout.int8_layout_blocks` picks the depth for the int8 path from this table.

    .venv/bin/python benchmarks/ghost_split.py                  # depths 0 5 7 11 16, ~10 min on 2 cores
    .venv/bin/python benchmarks/ghost_split.py --depths 6 7 8 --rounds 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from deploy import plain_export, plain_ort_session  # noqa: E402

import rubik  # noqa: E402
from rubik.deploy.bench import realistic_batchnorm, time_interleaved  # noqa: E402
from rubik.deploy.export import export_onnx  # noqa: E402
from rubik.deploy.images import sample_photos  # noqa: E402
from rubik.deploy.layout import bottlenecks, int8_layout_blocks  # noqa: E402
from rubik.deploy.quantize import quantize_int8  # noqa: E402
from rubik.deploy.runtime import open_session  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ghostnet_100")
    p.add_argument("--depths", type=int, nargs="+", default=[0, 5, 7, 11, 16], help="bottlenecks in the Ghost layout")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--work", type=Path, default=Path("/tmp/rubik-bench-ghost-split"))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import numpy as np
    import timm

    model = realistic_batchnorm(rubik.create_model(args.model))
    res = model.spec.resolution
    theirs = timm.create_model(args.model).eval()
    theirs.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).standard_normal((1, 3, res, res), dtype=np.float32)
    sessions = {"ORT fp32 (plain)": plain_ort_session(plain_export(theirs, res, args.work / "plain.onnx"), 1)}
    for depth in args.depths:
        fp32 = export_onnx(model, args.work / f"layout{depth}.onnx", layout=depth or None)
        int8 = args.work / f"layout{depth}.int8.onnx"
        quantize_int8(fp32, sample_photos(64), int8, calib_n=64, log=lambda s: None)
        sessions[f"{depth} fp32"], sessions[f"{depth} int8"] = open_session(fp32), open_session(int8)
        print(f"exported and quantized with {depth} bottlenecks in the Ghost layout", flush=True)
    times = time_interleaved({k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()},
                             runs=args.rounds, warmup=10)
    med = {k: statistics.median(v) for k, v in times.items()}
    plain = med["ORT fp32 (plain)"]
    print(f"\n{args.model}, ms median of {args.rounds} interleaved rounds, batch 1, 1 thread; plain ORT fp32 "
          f"{plain:.2f} ms; int8_layout_blocks picks {int8_layout_blocks(bottlenecks(model))}")
    print("| bottlenecks in the layout | fp32 ms | int8 ms | fp32 vs plain | int8 vs plain |\n|---|---|---|---|---|")
    for depth in args.depths:
        f, q = med[f"{depth} fp32"], med[f"{depth} int8"]
        print(f"| {depth} | {f:.2f} | {q:.2f} | {plain / f:.2f}x | {plain / q:.2f}x |")


if __name__ == "__main__":
    main()
