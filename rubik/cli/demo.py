"""`rubik demo` (rubik/demo.py): the whole chain on the embedded digits, in a few minutes on a laptop CPU."""

from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> None:
    from ..demo import demo

    demo(args.base, args.ratio, args.epochs, args.runs, args.out, args.detector_epochs)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="twist -> train on digits -> int8 export -> latency, beside the base model "
                       "(--detector-epochs N: a detector too)")
    p.add_argument("--base", default="efficientnet_b0")
    p.add_argument("--ratio", type=float, default=0.25, help="MACs of the twisted model / the base's")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--detector-epochs", type=int, default=0,
                   help="add the detector: twist, train it this many epochs, int8, boxes, latency (default: none)")
    p.add_argument("--runs", type=int, default=100, help="timed runs per backend")
    p.add_argument("--out", help="output folder (default runs/demo-DATE-TIME)")
    p.set_defaults(func=cmd_demo)
