"""Edge deployment benchmark: rubik's ONNX fp32 and int8 paths against the usual path, in one run.

Speed (batch 1, one thread, each model at its own resolution), all sides timed in the same interleaved
rounds, on the same random weights with BatchNorm statistics measured on 32 real photos (pure random
init shrinks activations into subnormal floats, which makes float timings erratic):
  timm eager            timm.create_model(name) in PyTorch (where timm has no such model, as for
                        tinynet_lite_*, every "plain" side takes rubik's module as it is instead of timm's)
  ORT fp32 (plain)      torch.onnx.export of timm's model, ONNX Runtime with default options, 1 thread
  ORT int8 (plain)      quantize_static defaults (QDQ, S8S8, per-tensor) calibrated on random data
  rubik fp32            rubik export: BN folded, GlobalAveragePool, ORT_ENABLE_ALL, sequential; GhostNet
                        split so no Ghost module concatenates (rubik/deploy/layout.py)
  rubik int8            rubik export --int8: U8S8 per-channel QDQ, float stem/thin layers, timed boundary;
                        GhostNet split in the blocks int8 leaves float
  ET fp32 (plain)       timm's model lowered by ExecuTorch's defaults (torch.export, XNNPACK partitioner)
  ET int8 (plain)       the same with PT2E int8 from ExecuTorch's XNNPACK quantizer (its defaults,
                        per-channel), calibrated on the same photos as rubik's int8
  rubik ET fp32/int8    rubik export --format executorch [--int8] (the deployed module: no Ghost no-op slice;
                        int8 with SiLU, sigmoid gates and hard-swish in int8 inside the delegate)
ExecuTorch's XNNPACK thread pool is pinned to --threads, like ONNX Runtime's intra-op threads.

The table ends with rubik's int8 files against plain ORT fp32 and rubik's .pte against ExecuTorch's
out-of-the-box int8 of timm's model.

Accuracy: a CIFAR-10 model trained with `rubik train` (tinynet_a at 32 px, 8 epochs of the `small`
recipe with crops keeping >= 80 % of the image, about 25 min on 2 quiet cores, cached under --work;
or --run RUN_DIR), then fp32 vs int8 top-1 on the 10,000 CIFAR-10 test images, calibrated on 256
training images, for ONNX Runtime and for ExecuTorch. Needs ../shared/datasets.

    .venv/bin/python benchmarks/deploy.py       # everything (~45 min on 2 cores; the trained model is cached)
    .venv/bin/python benchmarks/deploy.py --skip-speed --run runs/cifar-tinynet_a
    .venv/bin/python benchmarks/deploy.py --skip-accuracy --models tinynet_e --rounds 50
    .venv/bin/python benchmarks/deploy.py --skip-executorch   # ONNX Runtime sides only
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rubik.deploy.bench import realistic_batchnorm, torch_threads  # noqa: E402
from rubik.deploy.export import export_onnx  # noqa: E402
from rubik.deploy.images import open_images, sample, sample_photos  # noqa: E402
from rubik.deploy.quantize import check_int8, quantize_int8  # noqa: E402
from rubik.deploy.runtime import open_session  # noqa: E402
from rubik.timing import time_interleaved  # noqa: E402

MODELS = ["tinynet_a", "tinynet_e", "efficientnet_b0", "ghostnet_100", "efficientnet_lite0", "tinynet_lite_a",
          "tinynet_lite_e"]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"


def plain_ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()  # ORT's defaults, pinned to the same thread count
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def plain_export(model, res: int, path: Path) -> Path:
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, 3, res, res),), str(path), input_names=["input"],
                          output_names=["logits"], external_data=False)
    return path


def plain_int8(fp32: Path, res: int, out: Path) -> Path:
    """The naive recipe: quantize_static's defaults, calibrated on random data."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Random(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((1, 3, res, res), dtype=np.float32)}
                                 for _ in range(16)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(out), Random())
    return out


def executorch_sides(name: str, ours, theirs, x: torch.Tensor, work: Path, threads: int) -> dict:
    """Runners of timm's model lowered by ExecuTorch's defaults (fp32, PT2E int8) and of rubik's .pte files."""
    from rubik.deploy.executorch import export_executorch, lower
    from rubik.deploy.export import preprocess_of
    from rubik.deploy.runtime import ExecuTorchModel

    photos = sample_photos(64)
    pre = preprocess_of(ours)
    print("   ExecuTorch: lowering timm's model (fp32, int8) and rubik's (fp32, int8)", flush=True)
    plain_fp32, _ = lower(theirs, x, work / f"{name}.plain.pte", activations=False)
    plain_int8, outside = lower(theirs, x, work / f"{name}.plain.int8.pte",
                                (torch.from_numpy(pre([im])) for im in photos), activations=False)
    et_fp32 = export_executorch(ours, work / f"{name}.pte")
    et_int8 = export_executorch(ours, work / f"{name}.int8.pte", calib_images=photos, calib_n=64)
    for label, ops in (("timm int8", outside), ("rubik fp32", et_fp32.outside), ("rubik int8", et_int8.outside)):
        if ops:
            print(f"   {label}: outside the XNNPACK delegate: {', '.join(ops)}", flush=True)
    xn = x.numpy()
    models = {"ET fp32 (plain)": plain_fp32, "ET int8 (plain)": plain_int8, "rubik ET fp32": et_fp32.path,
              "rubik ET int8": et_int8.path}
    loaded = {k: ExecuTorchModel(p, threads) for k, p in models.items()}
    return {k: (lambda m=m, xn=xn: m.run(xn)) for k, m in loaded.items()}


def speed(models: list[str], work: Path, rounds: int, threads: int, executorch: bool = True) -> list[dict]:
    import timm

    import rubik

    rows = []
    for name in models:
        print(f"== {name}: exporting and quantizing", flush=True)
        ours = realistic_batchnorm(rubik.create_model(name))
        res = ours.spec.resolution
        if name in timm.list_models():
            theirs = timm.create_model(name).eval()
            theirs.load_state_dict(ours.state_dict())  # the same weights on both sides (rubik's keys are timm's)
        else:  # timm has no such model (tinynet_lite_*): the plain sides take rubik's module as it is
            theirs = copy.deepcopy(ours).eval()
        x = torch.randn(1, 3, res, res)
        xn = x.numpy()
        plain_fp32 = plain_export(theirs, res, work / f"{name}.plain.onnx")
        plain_q = plain_int8(plain_fp32, res, work / f"{name}.plain.int8.onnx")
        fp32 = export_onnx(ours, work / f"{name}.onnx")
        # the float file `rubik export --int8` quantizes (GhostNet: split only where int8 keeps float)
        source = export_onnx(ours, work / f"{name}.int8-source.onnx", layout="int8")
        config = quantize_int8(source, sample_photos(64), work / f"{name}.int8.onnx", calib_n=64, threads=threads,
                               log=lambda s: print("   " + s, flush=True))
        sessions = {"ORT fp32 (plain)": plain_ort_session(plain_fp32, threads),
                    "ORT int8 (plain)": plain_ort_session(plain_q, threads),
                    "rubik fp32": open_session(fp32, threads), "rubik int8": open_session(work / f"{name}.int8.onnx",
                                                                                          threads)}

        def eager(m=theirs, x=x):
            with torch.inference_mode():
                return m(x)

        fns = {"timm eager": eager}
        for k, s in sessions.items():
            fns[k] = (lambda s=s, xn=xn: s.run(None, {"input": xn}))
        if executorch:
            fns.update(executorch_sides(name, ours, theirs, x, work, threads))
        with torch_threads(threads):
            times = time_interleaved(fns, runs=rounds, warmup=10)
        med = {k: statistics.median(v) for k, v in times.items()}
        p10 = {k: float(np.percentile(v, 10)) for k, v in times.items()}
        rows.append({"model": name, "res": res, **med, "float_nodes": config.float_nodes, "nodes": config.nodes,
                     "stat": "median"})
        rows.append({"model": name, "res": res, **p10, "stat": "p10"})
        print("   median " + "  ".join(f"{k} {v:.2f}" for k, v in med.items()), flush=True)
        print("   p10    " + "  ".join(f"{k} {v:.2f}" for k, v in p10.items()), flush=True)
    return rows


def print_speed(rows: list[dict]) -> None:
    for stat in ("median", "p10"):
        print(f"\n{stat} latency:")
        print_table([r for r in rows if r["stat"] == stat])
    print("p10 (10th percentile) is the steadier figure when other work shares the CPU")


def print_table(rows: list[dict]) -> None:
    cols = [c for c in ["timm eager", "ORT fp32 (plain)", "ORT int8 (plain)", "rubik fp32", "rubik int8",
                        "ET fp32 (plain)", "ET int8 (plain)", "rubik ET fp32", "rubik ET int8"] if c in rows[0]]
    et = "rubik ET int8" in cols
    extra = ["rubik int8 vs ORT fp32 (plain)"]
    extra += ["rubik ET int8 vs ORT fp32 (plain)", "rubik ET int8 vs ET int8 (plain)"] if et else []
    print("| model | res | " + " | ".join(cols + extra) + " |")
    print("|---" * (len(cols) + len(extra) + 2) + "|")
    for r in rows:
        cells = " | ".join(f"{r[c]:.2f}" for c in cols)
        line = f"| {r['model']} | {r['res']} | {cells} | {r['ORT fp32 (plain)'] / r['rubik int8']:.2f}x |"
        if et:
            ours = r["rubik ET int8"]
            line += f" {r['ORT fp32 (plain)'] / ours:.2f}x | {r['ET int8 (plain)'] / ours:.2f}x |"
        print(line)
    print("ms, median of interleaved rounds, batch 1, 1 thread, random weights with measured BatchNorm statistics")


# --- accuracy: a small CIFAR-10 model -------------------------------------------------------------

def cifar_root(work: Path) -> Path:
    root = work / "cifar10"
    if not (root / "test").is_dir():
        if not CIFAR.is_file():
            raise SystemExit(f"{CIFAR} not found: run with --skip-accuracy")
        print(f"extracting {CIFAR} to {work}", flush=True)
        with tarfile.open(CIFAR) as tar:
            tar.extractall(work, filter="data")
    return root


def train_cifar(work: Path, arch: str, epochs: int) -> Path:
    """`rubik train` on CIFAR-10 at 32 px with the `small` recipe (cached under --work)."""
    from rubik.run import RunDir
    from rubik.tasks import make_task
    from rubik.train import build_config, train

    run = work / f"cifar-{arch}-32px-e{epochs}-crop08"
    if RunDir(run).epochs_done() >= epochs:
        return run
    root = cifar_root(work)
    print(f"training {arch} at 32 px on CIFAR-10 (50,000 images), {epochs} epochs, with rubik train", flush=True)
    c = build_config(cli_values={"model": arch, "data": str(root), "resolution": 32, "epochs": epochs,
                                 "batch_size": 128, "num_workers": 2, "crop_scale": [0.8, 1.0], "log_every": 0})
    train(c, run, make_task(c), resume=True, progress=False)  # a stopped run continues from its last checkpoint
    return run


def accuracy(work: Path, run: Path | None, arch: str, epochs: int, eval_n: int, threads: int,
             executorch: bool = True) -> dict:
    import onnx

    from rubik.classify.trained import load_classifier
    from rubik.deploy.metadata import set_onnx_metadata

    run = run or train_cifar(work, arch, epochs)
    model = load_classifier(run)
    root = cifar_root(work)
    resolution = model.spec.resolution
    fp32 = export_onnx(model, work / f"{run.name}.onnx")
    train_images = open_images(root, "train")
    calib_idx = sample(train_images, 256, seed=0)
    calib = train_images.subset(calib_idx)
    select = train_images.subset(sample(train_images, 256, seed=3, exclude=set(calib_idx)))  # as `rubik export`
    test = open_images(root, "test")
    test = test.subset(sample(test, eval_n, seed=1))
    out = {}
    for label, kwargs in [("rubik export --int8 (calibration auto, boundary auto)", {"select_images": select.images}),
                          ("rubik int8 (MinMax, boundary auto)", {"method": "minmax", "select_images": select.images}),
                          ("rubik int8 (Percentile, boundary auto)", {"method": "percentile",
                                                                       "select_images": select.images}),
                          ("rubik int8 (MinMax, all but stem)", {"method": "minmax", "boundary": "all"})]:
        q = work / f"{run.name}.{len(out)}.int8.onnx"
        config = quantize_int8(fp32, calib.images, q, calib_n=256, threads=threads, log=lambda s: None, **kwargs)
        label += f" [first {config.float_nodes} of {config.nodes} nodes float]"
        out[label] = check_int8(fp32, q, test, model.classes, threads)
        print(f"   {label}: {out[label]}", flush=True)
    plain = plain_int8(fp32, resolution, work / f"{run.name}.plain.int8.onnx")
    m = onnx.load(str(plain))  # the plain file has no preprocessing metadata: copy it, to evaluate alike
    set_onnx_metadata(m, {p.key: p.value for p in onnx.load(str(fp32)).metadata_props})
    onnx.save(m, str(plain))
    out["ORT int8 (plain: defaults, random calibration)"] = check_int8(fp32, plain, test, model.classes, threads)
    print(f"   plain: {out['ORT int8 (plain: defaults, random calibration)']}", flush=True)
    if executorch:
        from rubik.deploy.executorch import export_executorch

        et_fp32 = export_executorch(model, work / f"{run.name}.pte").path
        et_int8 = export_executorch(model, work / f"{run.name}.int8.pte", calib_images=calib.images).path
        label = "rubik export --format executorch --int8 (PT2E, XNNPACK quantizer)"
        out[label] = check_int8(et_fp32, et_int8, test, model.classes, threads)
        print(f"   {label}: {out[label]}", flush=True)
    return {"model": run.name, "results": out}


def accuracy_row(work: Path, arch: str, epochs: int, eval_n: int, threads: int, max_drop: float) -> dict:
    """fp32 and int8 top-1 of one CIFAR-10 model through both runtimes, as `rubik export --int8` makes the files
    (calibration, boundary and precision plan included), checked on `eval_n` test images."""
    from rubik.classify.trained import load_classifier
    from rubik.deploy.executorch import export_executorch
    from rubik.deploy.export import network_graph
    from rubik.deploy.precision_plan import export_executorch_planned
    from rubik.deploy.quantize import Int8Gate, export_int8

    run = train_cifar(work, arch, epochs)
    model = load_classifier(run)
    root = cifar_root(work)
    train_images = open_images(root, "train")
    calib_idx = sample(train_images, 256, seed=0)
    calib = train_images.subset(calib_idx).images
    select = train_images.subset(sample(train_images, 256, seed=3, exclude=set(calib_idx))).images
    test = open_images(root, "test")
    test = test.subset(sample(test, eval_n, seed=1))
    log = lambda s: print("   " + s, flush=True)  # noqa: E731
    fp32 = export_onnx(model, work / f"{run.name}.onnx", layout="int8")
    gate = Int8Gate(fp32, test, model.classes, max_drop, threads)
    config, ort = export_int8(fp32, calib, work / f"{run.name}.int8.onnx", gate, select_images=select, calib_n=256,
                              threads=threads, log=log)
    et_fp32 = export_executorch(model, work / f"{run.name}.pte").path
    et_gate = Int8Gate(et_fp32, test, model.classes, max_drop, threads)
    et, et_plan = export_executorch_planned(network_graph(model, layout=None), work / f"{run.name}.int8.pte", et_fp32,
                                            et_gate, calib_images=calib, select_images=select, threads=threads, log=log)
    et_check = et_gate.check(et.path)
    print(f"   ORT int8: {ort}\n   ET int8: {et_check}", flush=True)
    return {"model": arch, "run": run.name, "ort": ort, "et": et_check,
            "ort_float": (config.plan or {}).get("keep_float", []), "et_float": et_plan.get("keep_float", [])}


def print_accuracy(rows: list[dict]) -> None:
    print("\n| model | fp32 top-1 | ORT int8 top-1 | change | layers kept float (ORT) | ET fp32 top-1 | ET int8 top-1 "
          "| change | layers kept float (ET) |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, e = r["ort"], r["et"]
        print(f"| {r['model']} | {100 * o.fp32_accuracy:.2f} | {100 * o.int8_accuracy:.2f} | "
              f"{100 * o.accuracy_delta:+.2f} | {len(r['ort_float'])} | {100 * e.fp32_accuracy:.2f} | "
              f"{100 * e.int8_accuracy:.2f} | {100 * e.accuracy_delta:+.2f} | {len(r['et_float'])} |")
    print("top-1 % on CIFAR-10 test images; int8 as `rubik export --int8` makes it (its gate: --max-drop)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--rounds", type=int, default=150, help="interleaved timing rounds per model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="/tmp/rubik-bench-deploy", help="scratch folder (data, models, runs)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-executorch", action="store_true", help="ONNX Runtime and eager sides only")
    p.add_argument("--run", type=Path, help="a `rubik train` run on CIFAR-10 to check int8 on (default: train one)")
    p.add_argument("--arch", default="tinynet_a", help="architecture trained on CIFAR-10 when --run is not given")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--eval-n", type=int, default=10000, help="CIFAR-10 test images for fp32 vs int8")
    p.add_argument("--accuracy-models", nargs="*", metavar="ARCH",
                   help="train each (cached) and report fp32 and int8 top-1 through both runtimes, one table "
                        "(instead of the single-model recipe comparison of --arch)")
    p.add_argument("--max-drop", type=float, default=1.0, help="the int8 gate of --accuracy-models, as rubik export's")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import onnxruntime

    et_version = ""
    if not args.skip_executorch:
        from importlib.metadata import version

        et_version = f", executorch {version('executorch')}"
    print(f"machine: {cpu}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}{et_version}")
    et = not args.skip_executorch
    if args.accuracy_models:
        acc_rows = [accuracy_row(work, a, args.epochs, args.eval_n, args.threads, args.max_drop)
                    for a in args.accuracy_models]
        print_accuracy(acc_rows)
    acc = None if args.skip_accuracy or args.accuracy_models else accuracy(work, args.run, args.arch, args.epochs,
                                                                           args.eval_n, args.threads, et)
    rows = [] if args.skip_speed else speed(args.models, work, args.rounds, args.threads, et)
    if rows:
        print_speed(rows)
    if acc:
        print(f"\naccuracy, {acc['model']}, CIFAR-10 test images:")
        print("| path | fp32 top-1 | int8 top-1 | delta (points) | top-1 agreement |\n|---|---|---|---|---|")
        for label, c in acc["results"].items():
            print(f"| {label} | {100 * c.fp32_accuracy:.2f} | {100 * c.int8_accuracy:.2f} | "
                  f"{100 * c.accuracy_delta:+.2f} | {100 * c.top1_agreement:.1f}% |")


if __name__ == "__main__":
    main()
