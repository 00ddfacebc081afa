"""ExecuTorch export: a .pte lowered to XNNPACK, verified against PyTorch, int8 gated like ONNX, bad input.

Lowering takes seconds even for a tiny model, so one CLI run (module fixture) serves several tests.
"""

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import rubik
import rubik.cli

pytest.importorskip("executorch")

from rubik.deploy.executorch import ExecuTorchError, export_executorch, lower  # noqa: E402
from rubik.deploy.runtime import META_PREPROCESS, Classifier, Preprocess, sidecar_path  # noqa: E402

TINY = {"name": "tiny", "width": 0.25, "depth": 0.3, "resolution": 32, "crop_pct": 1.0}
RUNTIME_FILE = Path(rubik.__file__).parent / "deploy" / "runtime.py"


def run_cli(argv):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = rubik.cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`rubik export --format executorch --int8` of a run directory, with a gate no int8 file can pass."""
    tmp = tmp_path_factory.mktemp("et")
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import randomize_batchnorm

    torch.manual_seed(0)
    model = rubik.create_model(TINY, num_classes=3).eval()
    randomize_batchnorm(model)
    run = tmp / "run"
    run.mkdir()
    save_file(model.state_dict(), str(run / "best.safetensors"))
    (run / "model.json").write_text(json.dumps({"model": model.spec.to_dict(), "num_classes": 3,
                                                "classes": ["cat", "dog", "owl"]}))
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 4)):  # calibration and verification from train/, the check on val/
        for c in ("cat", "dog", "owl"):
            (tmp / "images" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    tmp / "images" / split / c / f"{i}.png")
    out = tmp / "out" / "m.pte"
    code, stdout, err = run_cli(["export", "--weights", str(run), "--format", "executorch", "-o", str(out),
                                 "--int8", "--calib", str(tmp / "images"), "--calib-n", "8", "--eval-n", "10",
                                 "--max-drop", "-1"])
    return {"model": model, "out": out, "fp32": tmp / "out" / "m.fp32.pte", "code": code, "stdout": stdout,
            "err": err, "tmp": tmp}


def test_pte_is_one_delegated_graph_verified_against_pytorch(exported):
    assert "ExecuTorch vs PyTorch: verified on 16 real images" in exported["stdout"], exported["err"]
    assert "one XNNPACK-delegated graph" in exported["stdout"]
    fp32 = exported["fp32"]
    meta = json.loads(sidecar_path(fp32).read_text())
    assert json.loads(meta[META_PREPROCESS])["resolution"] == 32 and meta["rubik.precision"] == "fp32"
    assert json.loads(meta["rubik.outside_delegate"]) == [] and json.loads(meta["rubik.input_shape"]) == [1, 3, 32, 32]
    clf = Classifier(fp32)
    assert clf.classes == ["cat", "dog", "owl"]
    x = clf.preprocess([np.full((20, 20, 3), v, np.uint8) for v in (0, 90, 200)])
    with torch.no_grad():
        ref = exported["model"](torch.from_numpy(x)).numpy()
    assert np.allclose(clf.logits(x), ref, atol=1e-4 + 1e-3 * np.abs(ref).max())


def test_int8_is_checked_on_held_out_images_and_gated(exported):
    # --max-drop -1 demands that int8 gain accuracy: the gate must refuse, in one line, after the check printed
    assert exported["code"] == 2
    assert "Traceback" not in exported["err"]
    ours = [line for line in exported["err"].splitlines() if line.startswith("rubik export:")]  # not ExecuTorch's logs
    assert len(ours) == 1 and "int8 loses" in ours[0] and "--max-drop" in ours[0]
    assert "int8 vs fp32 on 10 held-out images: top-1 agreement" in exported["stdout"]
    assert "PT2E static int8" in exported["stdout"] and "calibrated on 8 images" in exported["stdout"]
    clf = Classifier(exported["out"])
    assert clf.precision == "int8" and clf.logits(clf.preprocess(np.zeros((9, 9, 3), np.uint8))).shape == (1, 3)


def test_runtime_runs_the_pte_without_rubik(exported):
    """runtime.py, loaded on its own with rubik blocked, runs the .pte; no training dependency gets imported
    (ExecuTorch's own bindings import torch and torchao)."""
    image = np.random.default_rng(3).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    np.save(exported["tmp"] / "image.npy", image)
    with torch.no_grad():
        logits = exported["model"](torch.from_numpy(Preprocess(32, 1.0, "bicubic")(image)))[0]
    script = textwrap.dedent(f"""
        import importlib.abc, importlib.util, json, sys
        import numpy as np

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.startswith("rubik"):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Block())
        spec = importlib.util.spec_from_file_location("runtime", {str(RUNTIME_FILE)!r})
        runtime = sys.modules["runtime"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(runtime)
        clf = runtime.Classifier({str(exported["fp32"])!r})
        z = clf.logits(clf.preprocess(np.load({str(exported["tmp"] / "image.npy")!r})))
        training = ["torchvision", "timm", "onnx", "onnxruntime", "sklearn", "matplotlib", "optuna", "rubik"]
        heavy = [m for m in training if m in sys.modules]
        assert not heavy, heavy
        print(json.dumps(z[0].tolist()))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.asarray(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert np.allclose(got, logits.numpy(), atol=1e-4 + 1e-3 * float(logits.abs().max()))


def test_bad_inputs_are_one_line_errors(tmp_path):
    code, _, err = run_cli(["export", "--model", "tinynet_e", "--random-init", "--format", "tflite", "-o",
                            str(tmp_path / "m")])
    assert code == 2 and "unknown --format 'tflite'" in err and len(err.strip().splitlines()) == 1

    class DataDependent(torch.nn.Module):  # control flow on values: torch.export cannot capture it
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x - 1

    with pytest.raises(ExecuTorchError, match="ExecuTorch cannot export DataDependent") as e:
        lower(DataDependent(), torch.randn(1, 3, 8, 8), tmp_path / "d.pte")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "d.pte").exists()


def test_an_operator_outside_the_delegate_is_reported(tmp_path):
    class Cumulative(torch.nn.Module):  # XNNPACK has no cumulative sum: it runs in portable kernels
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    path, outside = lower(Cumulative(), torch.randn(1, 3, 4, 4), tmp_path / "c.pte")
    assert path.is_file() and any("cumsum" in op for op in outside)


@pytest.mark.skipif(importlib.util.find_spec("rubik.detect") is None, reason="no rubik.detect")
def test_detector_core_exports_with_every_output(tmp_path):
    from rubik.deploy.runtime import ExecuTorchModel
    from rubik.detect.export import OUTPUT_NAMES, DetectorCore
    from rubik.detect.model import build_detector

    det = build_detector({"detector": "ssdlite", "backbone": "ghostnet_050", "resolution": 64}, 2).eval()
    core = DetectorCore(det).eval()
    result = export_executorch(det, tmp_path / "d.pte", core=core, outputs=tuple(OUTPUT_NAMES),
                               preprocess=Preprocess(64))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = [t.numpy() for t in core(x)]
    got = ExecuTorchModel(result.path).run_all(x.numpy())
    assert len(got) == len(ref) == 2
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape and np.allclose(g, r, atol=1e-4 + 1e-3 * np.abs(r).max())
    assert json.loads(json.loads(sidecar_path(result.path).read_text())["rubik.outputs"]) == OUTPUT_NAMES
