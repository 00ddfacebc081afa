"""The `rubik` command line: each subcommand parses its flags, calls rubik's Python API (rubik/api.py) and
prints. One module per group of commands registers its subcommands here."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import RubikError

# Modules with a `register(subparsers)` function, each adding its own subcommands.
COMMAND_MODULES = ["rubik.cli.models", "rubik.cli.demo", "rubik.cli.twist", "rubik.cli.train", "rubik.cli.deploy",
                   "rubik.cli.search"]

MACS_NOTE = "MACs = multiply-accumulates of convolutions and linear layers (SE included), what the papers call FLOPs"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rubik", description="Tiny, fast image models scaled to a budget.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


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
