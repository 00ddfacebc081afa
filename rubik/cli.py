"""The `rubik` command line. Each subcommand lives beside the code it drives and registers here."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from .errors import RubikError

# Modules with a `register(subparsers)` function, each adding its own subcommands.
COMMAND_MODULES = ["rubik.cli", "rubik.demo", "rubik.cube.cli", "rubik.train.cli", "rubik.deploy.cli",
                   "rubik.search.cli"]

MACS_NOTE = "MACs = multiply-accumulates of convolutions and linear layers (SE included), what the papers call FLOPs"


def _meta_model(name: str):
    import torch

    from .models import build, get_spec

    with torch.device("meta"):  # shapes only: counting needs no memory and no arithmetic
        return build(get_spec(name))


def cmd_models(args: argparse.Namespace) -> None:
    from .models import MODELS, list_models, published
    from .profile import count, count_params, deployed

    rows = []
    for name in list_models(args.filter):
        spec, model = MODELS[name], deployed(_meta_model(name))  # GhostNetV3 folded, as published
        macs, _ = count(model, spec.resolution)
        pub = published(spec)
        rows.append({"name": name, "family": spec.family, "input": spec.resolution,
                     "params_m": count_params(model) / 1e6, "macs_m": macs / 1e6, "paper_macs_m": pub.macs_m,
                     "paper_params_m": pub.params_m, "paper_top1": pub.top1, "timm_top1": pub.timm_top1,
                     "pretrained": bool(pub.hub_id), "hub_id": pub.hub_id})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    fmt = "{:<24} {:>5} {:>9} {:>10} {:>11} {:>11} {:>10} {:>10}"
    print(fmt.format("model", "input", "params M", "MACs M", "paper MACs", "paper top1", "timm top1", "pretrained"))
    for r in rows:
        def opt(v, spec="{:.1f}"):
            return "-" if v is None else spec.format(v)
        print(fmt.format(r["name"], r["input"], f"{r['params_m']:.2f}", f"{r['macs_m']:.1f}",
                         opt(r["paper_macs_m"], "{:g}"), opt(r["paper_top1"]), opt(r["timm_top1"], "{:.2f}"),
                         "yes" if r["pretrained"] else "-"))
    print(f"# {MACS_NOTE}; paper top-1 is ImageNet-1k as published; timm top-1 is timm's evaluation of the "
          "pretrained weights.")


def cmd_profile(args: argparse.Namespace) -> None:
    from .models.weights import create_model
    from .profile import profile

    model = create_model(args.model, weights=args.weights)
    resolution = args.resolution or model.spec.resolution
    result = profile(model, resolution, measure_latency=not args.no_latency, threads=args.threads, runs=args.runs)
    if args.json:
        print(json.dumps({"model": model.spec.name, **result.as_dict(), "macs_counted": MACS_NOTE}, indent=2))
        return
    print(f"model              {model.spec.name}")
    print(f"input              3x{resolution}x{resolution}")
    print(f"parameters         {result.params / 1e6:.3f} M")
    print(f"MACs               {result.macs / 1e6:.1f} M   ({MACS_NOTE})")
    print(f"peak activations   {result.peak_activation_bytes / 2**20:.2f} MiB (fp32, batch 1)")
    if result.latency_ms is not None:
        print(f"CPU latency        {result.latency_ms:.2f} ms (median of {args.runs}, batch 1, {args.threads} thread)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the named models with input size, params, MACs and published top-1")
    p.add_argument("filter", nargs="?", help="shell-style name filter, e.g. 'tinynet_*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("profile", help="parameters, MACs, peak activation memory and CPU latency of a model")
    p.add_argument("model", help="a named model or a JSON model spec")
    p.add_argument("--resolution", type=int, help="input size (default: the model's own)")
    p.add_argument("--weights", help="a .safetensors or .pth file to load first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50, help="timed runs after 10 warm-up runs")
    p.add_argument("--no-latency", action="store_true", help="count only; skip timing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rubik", description="Tiny, fast image models scaled to a budget.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    if "twist" in sub.choices:  # cube does not import deploy: the deploy runtimes' latency is wired here
        sub.choices["twist"].set_defaults(latency_runtimes=LATENCY_RUNTIMES)
    return parser


def _deploy_latency(runtime: str):
    def measure(spec) -> float:
        from .deploy.bench import spec_latency

        return spec_latency(runtime)(spec)

    return measure


LATENCY_RUNTIMES = {"onnxruntime": _deploy_latency("onnxruntime"), "executorch": _deploy_latency("executorch")}


def _check_sizes(args: argparse.Namespace) -> None:
    """An input size must be positive in every subcommand (`--base-resolution 0` means the base's own)."""
    for flag, least in (("resolution", 1), ("base_resolution", 0)):
        value = getattr(args, flag, None)
        if value is not None and value < least:
            option = "--" + flag.replace("_", "-")
            raise RubikError(f"{option} must be a positive number of pixels, got {value}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_sizes(args)
        args.func(args)
    except (RubikError, FileNotFoundError, PermissionError) as e:
        print(f"rubik {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rubik {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
