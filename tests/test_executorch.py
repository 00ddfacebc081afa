"""ExecuTorch export: a .pte lowered to XNNPACK, verified against PyTorch, int8 gated like ONNX, bad input.

Lowering takes seconds even for a tiny model, so one CLI run (module fixture) serves several tests.
"""

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


def test_detector_graph_lowers_with_every_output(tmp_path):
    """The export core writes a detector's graph (raw SSD outputs) as a .pte like a classifier's network."""
    from rubik.deploy.executorch import write_pte
    from rubik.deploy.runtime import ExecuTorchModel
    from rubik.detect.export import OUTPUT_NAMES, detector_graph
    from rubik.detect.model import build_detector

    det = build_detector({"detector": "ssdlite", "backbone": "ghostnet_050", "resolution": 64}, 2).eval()
    graph = detector_graph(det, layout=None)
    result = write_pte(graph, tmp_path / "d.pte")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = [t.numpy() for t in graph.module(x)]
    got = ExecuTorchModel(result.path).run_all(x.numpy())
    assert len(got) == len(ref) == 2
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape and np.allclose(g, r, atol=1e-4 + 1e-3 * np.abs(r).max())
    meta = json.loads(sidecar_path(result.path).read_text())
    assert json.loads(meta["rubik.outputs"]) == list(OUTPUT_NAMES) and "rubik.detector" in meta


# ---- int8 activations (rubik/deploy/xnnpack_int8.py) ----------------------------------------------------


def _plain_int8_pte(model, x, batches, path):
    """ExecuTorch's out-of-the-box int8: its XNNPACK quantizer and partitioner, nothing of rubik's."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(model, (x,), strict=False).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    for b in batches:
        prepared(b)
    program = torch.export.export(convert_pt2e(prepared), (x,), strict=False)
    path.write_bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    return path


@pytest.fixture(scope="module")
def mbconv_int8(tmp_path_factory):
    """A tiny MBConv model with BatchNorm statistics from real photos, in fp32 and in both int8 .pte files."""
    from rubik.deploy.bench import realistic_batchnorm
    from rubik.deploy.export import preprocess_of
    from rubik.deploy.images import sample_photos

    tmp = tmp_path_factory.mktemp("act")
    torch.manual_seed(0)
    model = realistic_batchnorm(rubik.create_model({**TINY, "resolution": 64}, num_classes=10).eval())
    pre = preprocess_of(model)
    calib, test = sample_photos(32, seed=1), sample_photos(48, seed=2)
    ours = export_executorch(model, tmp / "ours.pte", calib_images=calib, calib_n=32)
    x = torch.from_numpy(pre(calib[:1]))
    plain = _plain_int8_pte(model, x, [torch.from_numpy(pre([im])) for im in calib], tmp / "plain.pte")
    return {"model": model, "ours": ours, "plain": plain, "pre": pre, "test": test}


def test_mbconv_int8_pte_keeps_no_float_sigmoid_or_silu_in_the_delegate(mbconv_int8):
    from rubik.deploy.xnnpack_int8 import delegate_ops

    model, ours = mbconv_int8["model"], mbconv_int8["ours"]
    graph = torch.export.export(model, (torch.randn(1, 3, 64, 64),), strict=False).graph
    names = [str(n.target) for n in graph.nodes]
    silus = names.count("aten.silu.default") + names.count("aten.silu_.default")
    gates = names.count("aten.sigmoid.default")
    assert silus > 0 and gates > 0
    assert (ours.activations.silu, ours.activations.gates) == (silus, gates)
    ops = delegate_ops(ours.path)  # read back out of the written file
    assert ops.float_compute() == {} and ours.float_inside == {}, ops.float
    assert ops.int8["XNNSigmoid"] == silus + gates and ops.int8["XNNMultiply"] >= silus + gates
    report = ours.activation_report()
    assert f"{silus} SiLU, {gates} sigmoid gate(s)" in report and "float operators inside the delegate: none" in report
    meta = json.loads(json.loads(sidecar_path(ours.path).read_text())["rubik.int8"])
    assert (meta["silu"], meta["gates"], meta["float_inside_delegate"]) == (silus, gates, {})
    # the same check finds ExecuTorch's default int8 running every sigmoid in float
    plain = delegate_ops(mbconv_int8["plain"])
    assert plain.float_compute().get("XNNSigmoid") == silus + gates


def test_int8_activations_follow_fp32_on_real_images(mbconv_int8):
    from rubik.deploy.runtime import ExecuTorchModel

    x = mbconv_int8["pre"](mbconv_int8["test"])
    with torch.no_grad():
        ref = mbconv_int8["model"](torch.from_numpy(x)).numpy()
    ours, plain = ExecuTorchModel(mbconv_int8["ours"].path), ExecuTorchModel(mbconv_int8["plain"])
    got = np.concatenate([ours.run(x[i:i + 1]) for i in range(len(x))])
    base = np.concatenate([plain.run(x[i:i + 1]) for i in range(len(x))])
    err, base_err = np.abs(got - ref).mean(), np.abs(base - ref).mean()
    # int8 activations add their rounding (1/256 steps for a gate) to the weights' and the convolutions':
    # on random weights the error stays of the order of ExecuTorch's own int8 with float activations
    assert err < 1.25 * base_err, (err, base_err)
    agree, base_agree = (got.argmax(1) == ref.argmax(1)).mean(), (base.argmax(1) == ref.argmax(1)).mean()
    assert agree >= base_agree - 0.1, (agree, base_agree)


def test_hardswish_runs_in_int8_and_keep_float_leaves_a_module_float(tmp_path):
    from rubik.deploy.images import sample_photos
    from rubik.deploy.xnnpack_int8 import delegate_ops

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2), torch.nn.Hardswish())
            self.b = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3), torch.nn.SiLU())
            self.head = torch.nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.head(self.b(self.a(x))).mean((2, 3))

    torch.manual_seed(0)
    net = Net().eval()
    batches = [torch.from_numpy(np.ascontiguousarray(im[:32, :32].transpose(2, 0, 1)[None], np.float32) / 255)
               for im in sample_photos(8)]
    from rubik.deploy.executorch import lower_report

    all_int8 = lower_report(net, batches[0], tmp_path / "a.pte", batches)
    assert all_int8.activations.hardswish == 1 and all_int8.activations.silu == 1 and all_int8.float_inside == {}
    assert delegate_ops(all_int8.path).int8["XNNHardswish"] == 1
    kept = lower_report(net, batches[0], tmp_path / "b.pte", batches, keep_float=["b"])
    assert kept.activations.silu == 0 and kept.activations.hardswish == 1
    ops = delegate_ops(kept.path)
    assert ops.float["XNNConv2d"] == 1 and ops.int8["XNNConv2d"] == 2 and "XNNSigmoid" in ops.float_compute()
