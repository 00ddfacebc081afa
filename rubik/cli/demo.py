"""`rubik demo` (rubik/demo.py): the whole chain on the embedded digits, in a few minutes on a laptop CPU."""

from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> None:
    from ..demo import demo

    demo(args.base, args.ratio, args.epochs, args.runs, args.out, args.detector_epochs)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="twist -> train on digits -> int8 export -> latency, beside the base model; "
                       "then the same for a detector")
    p.add_argument("--base", default="efficientnet_b0")
    p.add_argument("--ratio", type=float, default=0.25, help="MACs of the twisted model / the base's")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--detector-epochs", type=int, default=5,
                   help="the detector's epochs (twist, train, int8, boxes, latency); 0 leaves it out (default 5)")
    p.add_argument("--runs", type=int, default=100, help="timed runs per backend")
    p.add_argument("--out", help="output folder (default runs/demo-DATE-TIME)")
    p.set_defaults(func=cmd_demo)
