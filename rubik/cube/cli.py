"""`rubik twist`: a base model and a budget in, the twisted model's spec (and curves) out."""

from __future__ import annotations

import argparse
import json


def _torch_latency(spec) -> float:
    from ..models import build
    from ..profile import deployed, latency

    return latency(deployed(build(spec)), spec.resolution, threads=1, runs=30)  # GhostNetV3 folded


def _measure(args: argparse.Namespace):
    """The latency function for --runtime: torch here (models level); the deploy runtimes are handed in by
    the CLI layer above (`rubik.cli` sets `latency_runtimes`), so cube never imports deploy."""
    if args.runtime == "torch":
        return _torch_latency
    runtimes = getattr(args, "latency_runtimes", None) or {}
    if args.runtime not in runtimes:
        from ..errors import RubikError

        raise RubikError(f"no latency function for --runtime {args.runtime}; run twist through the `rubik` command")
    return runtimes[args.runtime]


def cmd_twist(args: argparse.Namespace) -> None:
    from ..errors import RubikError
    from ..profile import count_params, deployed
    from .twist import Budget, Twister, parse_latency, parse_macs

    given = [b for b in (args.flops, args.ratio, args.latency) if b is not None]
    if len(given) != 1:
        raise RubikError("give exactly one budget: --flops 100M, --ratio 0.25 or --latency 4ms")
    if args.flops is not None:
        budget = Budget("macs", parse_macs(args.flops))
    elif args.ratio is not None:
        budget = Budget("ratio", args.ratio)
    else:
        budget = Budget("latency", parse_latency(args.latency))

    base = args.base
    if args.base_resolution:
        from dataclasses import replace

        from ..models import get_spec

        base = replace(get_spec(args.base), resolution=args.base_resolution)
    twister = Twister(base, args.method, args.formula)
    measure = _measure(args)
    if budget.kind == "macs":
        result = twister.to_macs(budget.value, args.name)
    elif budget.kind == "ratio":
        result = twister.to_ratio(budget.value, args.name)
    else:
        result = twister.to_latency(budget.value, measure, args.name)
    if result.latency_ms is None and not args.no_latency:
        result.latency_ms = measure(result.spec)

    from ..models import build

    with __import__("torch").device("meta"):
        params = count_params(deployed(build(result.spec)))  # as deployed (GhostNetV3 folded), like MACs
        base_params = count_params(deployed(build(twister.base)))
    out = result.to_dict()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    if args.plot:
        from .plot import plot_curves

        plot_curves(twister, args.plot, result)
    if args.json:
        print(json.dumps({**out, "params": params}, indent=2))
        return

    s, b = result.spec, twister.base
    print(f"twist {b.name} to {budget} with the {args.method} formula ({twister.formula.path})")
    fmt = "{:<30} {:>6} {:>6} {:>6} {:>6} {:>10} {:>8} {:>9} {:>11}"
    print(fmt.format("model", "input", "r", "d", "w", "MACs M", "err %", "params M", "latency ms"))
    base_ms = "-" if result.latency_ms is None else f"{measure(b):.2f}"
    print(fmt.format(b.name + " (base)", b.resolution, "1", "1", "1", f"{twister.base_macs / 1e6:.1f}", "",
                     f"{base_params / 1e6:.2f}", base_ms))
    lat = f"{result.latency_ms:.2f}" if result.latency_ms is not None else "-"
    print(fmt.format(s.name, s.resolution, f"{s.resolution / b.resolution:.3f}", f"{s.depth / b.depth:.3f}",
                     f"{s.width / b.width:.3f}", f"{result.macs / 1e6:.1f}", f"{100 * result.error:+.2f}",
                     f"{params / 1e6:.2f}", lat))
    if result.prediction is not None:
        p = result.prediction
        print(f"GP band (±2σ) at c={result.ratio:.4f}: r {p.r:.3f} [{p.r - 2 * p.r_std:.3f}, {p.r + 2 * p.r_std:.3f}],"
              f" d {p.d:.3f} [{p.d - 2 * p.d_std:.3f}, {p.d + 2 * p.d_std:.3f}]")
        if result.extrapolated(twister.formula):
            print(f"note: c={result.ratio:.4f} is far below the formula's smallest point "
                  f"(c={twister.formula.c_range[0]:g}): r and d are extrapolated")
    if result.latency_ms is not None:
        print(f"latency: {args.runtime}, batch 1, one thread, median on this machine")
    print("MACs = multiply-accumulates of convolutions and linear layers (SE included), what the papers call FLOPs")
    if args.out:
        print(f"spec written to {args.out} (use it as --model {args.out})")
    if args.plot:
        print(f"curves written to {args.plot}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("twist", help="the best (resolution, depth, width) for a MACs or latency budget")
    p.add_argument("--base", default="efficientnet_b0", help="model to twist (default efficientnet_b0)")
    p.add_argument("--base-resolution", type=int, default=0,
                   help="the base's input size for this data (default: its own, e.g. 224); r scales from it")
    p.add_argument("--method", choices=("tiny", "giant"), default="tiny",
                   help="tiny: the TinyNet formula (GP fit); giant: EfficientNet compound scaling")
    budget = p.add_argument_group("budget (one of)")
    budget.add_argument("--flops", help="MACs budget, e.g. 100M (the papers' FLOPs are MACs)")
    budget.add_argument("--ratio", type=float, help="MACs as a fraction of the base, e.g. 0.25")
    budget.add_argument("--latency", help="latency budget on this machine, batch 1, one thread, e.g. 4ms")
    p.add_argument("--runtime", choices=("torch", "onnxruntime", "executorch"), default="torch",
                   help="runtime for latency: PyTorch eager, ONNX Runtime or ExecuTorch (XNNPACK), as exported")
    p.add_argument("--formula", help="formula JSON file (default: the TinyNet paper's points)")
    p.add_argument("--name", help="name of the twisted model")
    p.add_argument("--out", help="write the model spec JSON here (usable as --model FILE)")
    p.add_argument("--plot", help="draw r(c), d(c), w(c) with the GP band to this PNG")
    p.add_argument("--no-latency", action="store_true", help="skip measuring latency")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_twist)
