"""`rubik demo`: the whole chain on the embedded digits data, in a few minutes on a laptop CPU.

twist EfficientNet-B0 (at 64 px, the size digits are served at) to a quarter of its MACs with the
tiny formula -> train it on digits -> export fp32 and int8 ONNX (verified) -> time everything
beside the base model, batch 1, one thread.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

DIGITS_RESOLUTION = 64


def demo(base_name: str = "efficientnet_b0", ratio: float = 0.25, epochs: int = 15, runs: int = 100,
         out: str | Path | None = None) -> Path:
    """Run the demo into `out` (default runs/demo-DATE-TIME), printing each step and the table; returns `out`."""
    from . import api
    from .deploy.bench import FILE_BACKEND, bench
    from .deploy.images import open_images
    from .deploy.quantize import check_int8
    from .errors import RubikError
    from .models import get_spec

    out = Path(out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()):
        raise RubikError(f"{out} already holds files; pick another --out (the demo never overwrites a run)")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    base = replace(get_spec(base_name), resolution=DIGITS_RESOLUTION, name=f"{base_name}_{DIGITS_RESOLUTION}px")
    (out / "base.json").write_text(json.dumps({"model": base.to_dict()}, indent=2))
    print(f"== 1/4 twist {base.name} to {ratio:g} x its MACs (tiny formula)")
    spec_path = out / "twisted.json"
    result = api.twist(base, ratio=ratio, name=f"{base_name}_tiny_{ratio:g}", out=spec_path)
    s = result.spec
    print(f"   r={s.resolution / base.resolution:.3f} ({s.resolution} px)  d={s.depth:.3f}  w={s.width:.3f}  "
          f"{result.macs / 1e6:.2f} M MACs (base {result.base_macs / 1e6:.2f} M)")

    print(f"== 2/4 train on digits, {epochs} epochs")
    run = api.train(str(spec_path), data="digits", epochs=epochs, resolution=s.resolution, out=out / "train")

    print("== 3/4 export fp32 and int8 ONNX, verified against PyTorch")
    onnx_path = out / "model.onnx"
    # The demo reports int8's accuracy change in its table instead of stopping at the usual 1-point gate.
    run.export(onnx_path, int8=True, calib="digits", max_drop=100, log=print)
    fp32_path = out / "model.fp32.onnx"
    check = check_int8(fp32_path, onnx_path, open_images("digits", "test"), [str(i) for i in range(10)])

    print("== 4/4 latency, batch 1, one thread (base: random weights, same input size)")
    quiet = lambda *a, **k: None  # noqa: E731
    rows = bench([str(out / "base.json")], backends=("eager", "ort-fp32"), runs=runs, log=quiet)
    rows += bench([run.model], backends=("eager",), runs=runs, log=quiet)
    rows += bench([str(fp32_path), str(onnx_path)], runs=runs, log=quiet)
    ms = {(r.model if r.backend != FILE_BACKEND else Path(r.model).name, r.backend): r.median_ms for r in rows}

    def cell(key):
        return f"{ms[key]:.2f}" if key in ms else "-"

    best = run.best
    print()
    fmt = "{:<30} {:>6} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9}"
    print(fmt.format("model", "input", "MACs M", "top-1 fp32", "top-1 int8", "eager ms", "ORT fp32", "ORT int8"))
    print(fmt.format(base.name, base.resolution, f"{result.base_macs / 1e6:.2f}", "-", "-",
                     cell((base.name, "eager")), cell((base.name, "ort-fp32")), "-"))
    print(fmt.format(s.name, s.resolution, f"{result.macs / 1e6:.2f}", f"{100 * check.fp32_accuracy:.2f}",
                     f"{100 * check.int8_accuracy:.2f}", cell((s.name, "eager")),
                     cell(("model.fp32.onnx", FILE_BACKEND)), cell(("model.onnx", FILE_BACKEND))))
    print(f"top-1 on the {check.n} held-out digits test images; best validation top-1 during training: "
          f"{best.get('top1', float('nan')):.2f} % ({best.get('weights', '?')} weights)")
    print("MACs = multiply-accumulates of convolutions and linear layers, what the papers call FLOPs; "
          "the base is not trained by the demo")
    print(f"everything is in {out} ({time.perf_counter() - start:.0f} s)")
    return out
