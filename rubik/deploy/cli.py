"""`rubik export` (ONNX, int8, ncnn) and `rubik bench` (latency on every path). Heavy imports stay inside."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import RubikError

FORMATS = ("onnx", "executorch", "ncnn")


def _load_model(args: argparse.Namespace):
    from ..classify.trained import load_classifier
    from ..models.weights import create_model

    if args.weights:
        if not Path(args.weights).exists():
            raise RubikError(f"weights {args.weights} do not exist; pass a training run directory "
                             "(with model.json and best.safetensors) or a .safetensors/.pth file")
        return load_classifier(args.weights, args.model)
    if not args.model:
        raise RubikError("name the model: --model NAME|SPEC.json, or --weights RUN_DIR")
    if args.pretrained:
        return create_model(args.model, pretrained=True).eval()
    if args.random_init:
        return create_model(args.model, num_classes=args.num_classes).eval()
    raise RubikError("export needs trained weights: --weights RUN_DIR|FILE, or --pretrained for the official "
                     "ImageNet weights (--random-init exports untrained weights, for speed tests only)")


def _heldout(calib: str, eval_source: str | None, calib_images, calib_idx: list[int], n: int, holdout):
    from .images import open_images, sample

    if eval_source:
        held = open_images(eval_source, "test", holdout)
        return held.subset(sample(held, n, seed=1))
    held = open_images(calib, "test", holdout)
    same = held.images == calib_images.images
    idx = sample(held, n, seed=1, exclude=set(calib_idx) if same else None)
    return held.subset(idx)


def cmd_export(args: argparse.Namespace) -> None:
    from ..detect.model import is_detection_run

    if args.weights and is_detection_run(args.weights, args.model):  # a detector: rubik/detect/export.py
        from ..detect.export import cmd_export as export_detector_cmd

        return export_detector_cmd(args)
    from .export import export_onnx, verify_file

    if args.format not in FORMATS:
        raise RubikError(f"unknown --format {args.format!r}; choose one of {', '.join(FORMATS)}")
    out = Path(args.output)
    executorch = args.format == "executorch"
    if args.int8 and not args.calib:
        raise RubikError("--int8 needs calibration images: --calib DIR (images like the training data) or 'digits'")
    if args.format == "ncnn" and args.int8:
        raise RubikError("--int8 is for --format onnx or executorch; ncnn models are quantized with ncnn's own tools")
    if executorch and (args.boundary != "auto" or args.calib_method != "auto" or args.dynamic_batch):
        raise RubikError("--boundary, --calib-method and --dynamic-batch are for --format onnx; an ExecuTorch file "
                         "has a static batch and its int8 is the XNNPACK quantizer's (every layer int8 unless the "
                         "precision plan keeps some float)")
    model = _load_model(args)
    name = model.spec.name
    verify_images = None
    if args.calib or args.images:
        from .images import open_images, sample

        source = open_images(args.images or args.calib, "train")  # any real images: this checks arithmetic
        verify_images = source.subset(sample(source, 16, seed=2)).images

    if args.format == "ncnn":
        from .edge import export_ncnn

        result = export_ncnn(model, out, images=verify_images, threads=args.threads)
        print(f"wrote {result.param} and {result.bin}")
        print(f"ncnn {result.verification}")
        return

    suffix = ".pte" if executorch else ".onnx"
    fp32_path = out.with_name(out.name.removesuffix(suffix) + ".fp32" + suffix) if args.int8 else out
    if executorch:
        from .executorch import export_executorch

        print(export_executorch(model, fp32_path, batch=args.batch, resolution=args.resolution))
    else:
        export_onnx(model, fp32_path, dynamic_batch=args.dynamic_batch, batch=args.batch,
                    resolution=args.resolution, opset=args.opset, split="int8" if args.int8 else "fp32")
        print(f"wrote {fp32_path} ({name}, fp32, BatchNorm folded, "
              f"{'dynamic' if args.dynamic_batch else args.batch} batch)")
    check = verify_file(model, fp32_path, images=verify_images, threads=args.threads)
    print(f"{'ExecuTorch' if executorch else 'ONNX Runtime'} vs PyTorch: {check}")
    if not args.int8:
        return

    from ..image_folder import DEFAULT_HOLDOUT
    from .images import open_images, sample
    from .quantize import Int8Gate, enforce_gate, ort_activation_note

    holdout = getattr(model, "holdout", DEFAULT_HOLDOUT)  # a run's split of a folder without val/
    calib = open_images(args.calib, "train", holdout)
    calib_idx = sample(calib, args.calib_n, seed=0)
    held = _heldout(args.calib, args.eval, calib, calib_idx, args.eval_n, holdout)
    gate = Int8Gate(fp32_path, held, getattr(model, "classes", None), args.max_drop, args.threads)
    # The boundary and the precision plan are chosen on other images than the ones the gate checks on.
    select = calib.subset(sample(calib, 256, seed=3, exclude=set(calib_idx))).images
    images = calib.subset(calib_idx).images
    if executorch:
        from .precision_plan import export_executorch_planned

        result, plan = export_executorch_planned(model, out, fp32_path, gate, calib_images=images, select_images=select,
                                                 calib_n=args.calib_n, batch=args.batch, resolution=args.resolution,
                                                 threads=args.threads)
        print(f"{result}; PT2E static int8 (XNNPACK quantizer: per-channel symmetric weights), calibrated on "
              f"{result.calib_images} images; " + (f"{len(result.keep_float)} layer(s) float by the precision plan"
                                                   if result.keep_float else "every layer int8"))
        print(result.activation_report())
    else:
        from .quantize import export_int8

        config, _ = export_int8(fp32_path, images, out, gate, select_images=select,
                                calib_n=args.calib_n, boundary=args.boundary, method=args.calib_method,
                                threads=args.threads)
        print(config.describe(out))
        print(ort_activation_note(model) or "", end="")
        plan = config.plan
    print(gate.check(out))
    enforce_gate(gate, out, plan)


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import DEFAULT_BACKENDS, bench, format_table, matmul_peak, plot

    backends = tuple(b.strip() for b in args.backends.split(",")) if args.backends else DEFAULT_BACKENDS
    if args.no_compile:
        backends = tuple(b for b in backends if b != "compile")
    peak = matmul_peak(args.threads)
    rows = bench(args.targets, threads=args.threads, batch=args.batch, runs=args.runs, backends=backends,
                 weights=args.weights, calib=args.calib, calib_n=args.calib_n, log=lambda s: None if args.json
                 else print(s, flush=True))
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
    p = sub.add_parser("export", help="export a trained model to ONNX (optionally int8) or ncnn, verified")
    p.add_argument("--model", help="a named model or a JSON spec (read from the run directory when omitted)")
    p.add_argument("--weights", help="a training run directory or a .safetensors/.pth file")
    p.add_argument("--pretrained", action="store_true", help="the official ImageNet weights instead of --weights")
    p.add_argument("--random-init", action="store_true", help="untrained weights (speed tests only)")
    p.add_argument("--num-classes", type=int, default=1000, help="with --random-init")
    p.add_argument("--format", default="onnx", help="onnx (default), executorch (a .pte lowered to XNNPACK, for "
                   "Android/iOS) or ncnn")
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
    p.add_argument("targets", nargs="+", metavar="MODEL|FILE", help="named models, JSON specs, .onnx or .pte files")
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
    p.add_argument("--plot", help="write accuracy (published top-1, when known) or MACs against latency to a PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
