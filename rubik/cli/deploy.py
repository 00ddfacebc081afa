"""`rubik export` (ONNX, ExecuTorch, ncnn; int8) and `rubik bench` (latency on every path)."""

from __future__ import annotations

import argparse
import json

EXPORT_FLAGS = ("format", "int8", "calib", "calib_n", "eval", "eval_n", "max_drop", "batch", "resolution", "opset",
                "dynamic_batch", "boundary", "calib_method", "images", "threads")


def cmd_export(args: argparse.Namespace) -> None:
    from ..api import export

    export(args.model, args.output, weights=args.weights, pretrained=args.pretrained, random_init=args.random_init,
           num_classes=args.num_classes, log=print, **{k: getattr(args, k) for k in EXPORT_FLAGS})


def cmd_bench(args: argparse.Namespace) -> None:
    from ..api import bench
    from ..deploy.bench import DEFAULT_BACKENDS, format_table, matmul_peak, plot

    backends = tuple(b.strip() for b in args.backends.split(",")) if args.backends else DEFAULT_BACKENDS
    if args.no_compile:
        backends = tuple(b for b in backends if b != "compile")
    peak = matmul_peak(args.threads)
    rows = bench(args.targets, weights=args.weights, threads=args.threads, batch=args.batch, runs=args.runs,
                 backends=backends, calib=args.calib, calib_n=args.calib_n, together=args.together,
                 log=None if args.json else lambda s: print(s, flush=True))
    if args.json:
        print(json.dumps({"matmul_peak_gmacs": peak, "rows": [r.as_dict() for r in rows]}, indent=2))
    else:
        print(format_table(rows, peak))
        print(f"# fp32 matmul peak on this machine: {peak:.1f} GMAC/s ({args.threads} thread); "
              "GMAC/s = MACs x batch / median latency; random weights unless --weights")
    if args.plot:
        from ..models import MODELS, published

        acc = {n: published(s).top1 / 100 for n, s in MODELS.items() if published(s).top1 is not None}
        print(f"wrote {plot(rows, args.plot, acc)}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained classifier or detector to ONNX or ExecuTorch (optionally "
                       "int8) or ncnn, verified")
    p.add_argument("--model", help="a named model or a JSON spec (read from the run directory when omitted)")
    p.add_argument("--weights", help="a training run directory or a .safetensors/.pth file")
    p.add_argument("--pretrained", action="store_true", help="the official ImageNet weights instead of --weights")
    p.add_argument("--random-init", action="store_true", help="untrained weights (speed tests only)")
    p.add_argument("--num-classes", type=int, default=1000, help="with --random-init")
    p.add_argument("--format", default="onnx", help="onnx (default), executorch (a .pte lowered to XNNPACK, for "
                   "Android/iOS) or ncnn (classifiers)")
    p.add_argument("-o", "--output", required=True, help="model.onnx or model.pte (with --int8 the fp32 file goes "
                   "beside it as model.fp32.onnx / .pte); for ncnn, the stem of model.ncnn.param / .bin")
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch size free (default: fixed)")
    p.add_argument("--batch", type=int, default=1, help="the fixed batch size (default 1)")
    p.add_argument("--resolution", type=int, help="input size (default: the model's)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--images", help="images to verify the export on (default: --calib, else two sample photos)")
    p.add_argument("--int8", action="store_true", help="post-training static int8 quantization")
    p.add_argument("--calib", help="calibration images: a folder (ROOT/CLASS/*.jpg, or ROOT/train/...) or 'digits'")
    p.add_argument("--calib-n", type=int, default=256, help="calibration images to use (default 256)")
    p.add_argument("--calib-method", choices=("auto", "minmax", "entropy", "percentile"), default="auto",
                   help="auto: MinMax or Percentile, whichever agrees better with fp32 on images not used for "
                   "calibration")
    p.add_argument("--boundary", default="auto", help="first quantized node: 'auto' (the fastest of the "
                   "candidates that agree best with fp32), 'all' (all but the stem) or an index")
    p.add_argument("--eval", help="held-out images for the int8 check (default: the test/ or val/ split of "
                   "--calib, else calibration-folder images not used for calibration)")
    p.add_argument("--eval-n", type=int, default=1000, help="held-out images to check int8 on (default 1000)")
    p.add_argument("--max-drop", type=float, default=1.0, help="fail when int8 loses more accuracy points "
                   "(first the precision plan keeps the layers that cost the most float, up to 10 %% of them)")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="latency of models on PyTorch eager, torch.compile, ORT fp32 and int8")
    p.add_argument("targets", nargs="+", metavar="MODEL|FILE",
                   help="named models, JSON specs, run directories, .onnx or .pte files")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=100, help="timed rounds after 10 warm-up calls")
    p.add_argument("--weights", help="weights for a single model (default: random; latency does not depend on them)")
    p.add_argument("--backends", help="comma-separated subset of eager,compile,ort-fp32,ort-int8,et-fp32,"
                   "et-int8 (the default: all of them; ExecuTorch needs the executorch package) and ort-plain "
                   "(torch.onnx.export as it is, ORT defaults)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it takes minutes to compile)")
    p.add_argument("--calib", help="int8 calibration images (default: crops of two sample photos)")
    p.add_argument("--calib-n", type=int, default=64)
    p.add_argument("--together", action="store_true",
                   help="time every target in one interleaved loop (default: one loop per target)")
    p.add_argument("--plot", help="write accuracy (published top-1, when known) or MACs against latency to a PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
