"""`rubik twist`: a base model and a budget in, the twisted model's spec (and curves) out."""

from __future__ import annotations

import argparse
import json


def cmd_twist(args: argparse.Namespace) -> None:
    from ..api import twist

    result = twist(args.base, flops=args.flops, ratio=args.ratio, latency=args.latency, runtime=args.runtime,
                   int8=args.int8, method=args.method, formula=args.formula, name=args.name,
                   base_resolution=args.base_resolution, num_classes=args.num_classes, out=args.out,
                   measure_latency=not args.no_latency, latency_of=args.latency_of)
    if args.plot:
        from ..cube.plot import plot_curves

        plot_curves(result.twister, args.plot, result)
    if args.json:
        print(json.dumps({**result.to_dict(), "params": result.params}, indent=2))
        return
    _print_table(result, args)
    if args.out:
        print(f"spec written to {args.out} (use it as --model {args.out})")
    if args.plot:
        print(f"curves written to {args.plot}")


def _print_table(result, args: argparse.Namespace) -> None:
    s, b, twister = result.spec, result.base, result.twister
    cube = getattr(result, "backbone", None) or result  # a detector's r, d, w are its backbone's
    what = " (r, d, w of its backbone; MACs of the whole detector)" if cube is not result else ""
    print(f"twist {b.name} to {result.budget} with the {args.method} formula ({twister.formula.path}){what}")
    fmt = "{:<30} {:>6} {:>6} {:>6} {:>6} {:>10} {:>8} {:>9} {:>11}"
    print(fmt.format("model", "input", "r", "d", "w", "MACs M", "err %", "params M", "latency ms"))
    base_ms = "-" if result.base_latency_ms is None else f"{result.base_latency_ms:.2f}"
    print(fmt.format(b.name + " (base)", b.resolution, "1", "1", "1", f"{result.base_macs / 1e6:.1f}", "",
                     f"{result.base_params / 1e6:.2f}", base_ms))
    lat = f"{result.latency_ms:.2f}" if result.latency_ms is not None else "-"
    cs, cb = cube.spec, cube.base
    print(fmt.format(s.name, s.resolution, f"{cs.resolution / cb.resolution:.3f}", f"{cs.depth / cb.depth:.3f}",
                     f"{cs.width / cb.width:.3f}", f"{result.macs / 1e6:.1f}", f"{100 * result.error:+.2f}",
                     f"{result.params / 1e6:.2f}", lat))
    if result.prediction is not None:
        p = result.prediction
        print(f"GP band (±2σ) at c={result.ratio:.4f}: r {p.r:.3f} [{p.r - 2 * p.r_std:.3f}, {p.r + 2 * p.r_std:.3f}],"
              f" d {p.d:.3f} [{p.d - 2 * p.d_std:.3f}, {p.d + 2 * p.d_std:.3f}]")
        if result.extrapolated(twister.formula):
            print(f"note: c={result.ratio:.4f} is far below the formula's smallest point "
                  f"(c={twister.formula.c_range[0]:g}): r and d are extrapolated")
    if result.latency_ms is not None:
        against = (f"; each model timed between two runs of {args.latency_of} (the budget) and scaled by its "
                   "first time, so a drift of the machine's speed cancels" if args.latency_of else "")
        print(f"latency: {args.runtime}{' int8' if args.int8 else ''}, batch 1, one thread, median on this "
              f"machine{against}")
    print("MACs = multiply-accumulates of convolutions and linear layers (SE included), what the papers call FLOPs")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("twist", help="the best (resolution, depth, width) for a MACs or latency budget")
    p.add_argument("--base", default="efficientnet_b0", help="model to twist (default efficientnet_b0): a classifier, "
                   "a detector (ssdlite_*: its backbone is twisted, the whole detector meets the budget) or a run")
    p.add_argument("--base-resolution", type=int, default=0,
                   help="the base's input size for this data (default: its own, e.g. 224); r scales from it")
    p.add_argument("--method", choices=("tiny", "giant"), default="tiny",
                   help="tiny: the TinyNet formula (GP fit); giant: EfficientNet compound scaling")
    budget = p.add_argument_group("budget (one of)")
    budget.add_argument("--flops", help="MACs budget, e.g. 100M (the papers' FLOPs are MACs)")
    budget.add_argument("--ratio", type=float, help="MACs as a fraction of the base, e.g. 0.25")
    budget.add_argument("--latency", help="latency budget on this machine, batch 1, one thread, e.g. 4ms")
    budget.add_argument("--latency-of", metavar="MODEL", help="another model's latency on this machine (at "
                        "--base-resolution when given), e.g. ssdlite_mobilenet_v3_large: each candidate is timed "
                        "against it, so a drift of the machine's speed cancels (--runtime onnxruntime|executorch)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime", "executorch"), default="torch",
                   help="runtime for latency: PyTorch eager, ONNX Runtime or ExecuTorch (XNNPACK), as exported")
    p.add_argument("--int8", action="store_true", help="with --latency: time the int8 file (--runtime onnxruntime or "
                   "executorch)")
    p.add_argument("--num-classes", dest="num_classes", type=int,
                   help="detector bases: the object classes its head predicts (default 80, COCO's)")
    p.add_argument("--formula", help="formula JSON file (default: the TinyNet paper's points)")
    p.add_argument("--name", help="name of the twisted model")
    p.add_argument("--out", help="write the model spec JSON here (usable as --model FILE)")
    p.add_argument("--plot", help="draw r(c), d(c), w(c) with the GP band to this PNG")
    p.add_argument("--no-latency", action="store_true", help="skip measuring latency")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_twist)
