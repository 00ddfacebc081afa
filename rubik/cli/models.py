"""`rubik models` and `rubik profile`."""

from __future__ import annotations

import argparse
import json

from . import MACS_NOTE


def _opt(v, spec="{:.1f}") -> str:
    return "-" if v is None else spec.format(v)


def cmd_models(args: argparse.Namespace) -> None:
    from ..api import model_table

    rows = model_table(args.filter)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    fmt = "{:<28} {:>5} {:>9} {:>10} {:>11} {:>11} {:>10} {:>10}"
    print(fmt.format("model", "input", "params M", "MACs M", "paper MACs", "paper top1", "timm top1", "pretrained"))
    for r in rows:
        print(fmt.format(r["name"], r["input"], f"{r['params_m']:.2f}", f"{r['macs_m']:.1f}",
                         _opt(r["paper_macs_m"], "{:g}"), _opt(r["paper_top1"]), _opt(r["timm_top1"], "{:.2f}"),
                         "yes" if r["pretrained"] else "-"))
    print(f"# {MACS_NOTE}; paper top-1 is ImageNet-1k as published; timm top-1 is timm's evaluation of the "
          "pretrained weights; ssdlite_* are detectors (320 px; pretrained: the backbone's weights).")


def cmd_profile(args: argparse.Namespace) -> None:
    from ..api import create_model, profile

    model = create_model(args.model, weights=args.weights)
    result = profile(model, args.resolution, measure_latency=not args.no_latency, threads=args.threads, runs=args.runs)
    if args.json:
        print(json.dumps({"model": model.spec.name, **result.as_dict(), "macs_counted": MACS_NOTE}, indent=2))
        return
    print(f"model              {model.spec.name}")
    print(f"input              3x{result.resolution}x{result.resolution}")
    print(f"parameters         {result.params / 1e6:.3f} M")
    print(f"MACs               {result.macs / 1e6:.1f} M   ({MACS_NOTE})")
    for name, part in (result.parts or {}).items():
        print(f"  {name:<16} {part.macs / 1e6:8.1f} M MACs  {part.params / 1e6:7.3f} M params")
    print(f"peak activations   {result.peak_activation_bytes / 2**20:.2f} MiB (fp32, batch 1)")
    if result.latency_ms is not None:
        print(f"CPU latency        {result.latency_ms:.2f} ms (median of {args.runs}, batch 1, {args.threads} thread)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the named models (classifiers and detectors) with input size, params, "
                                      "MACs and published top-1")
    p.add_argument("filter", nargs="?", help="shell-style name filter, e.g. 'tinynet_*' or 'ssdlite_*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("profile", help="parameters, MACs, peak activation memory and CPU latency of a model")
    p.add_argument("model", help="a named model (classifier or detector), a JSON model spec or a run directory")
    p.add_argument("--resolution", type=int, help="input size (default: the model's own)")
    p.add_argument("--weights", help="a .safetensors or .pth file to load first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50, help="timed runs after 10 warm-up runs")
    p.add_argument("--no-latency", action="store_true", help="count only; skip timing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)
