"""The int8 precision plan: layer sensitivity on selection images, the fewest layers kept float to pass the gate."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from rubik.deploy.export import export_onnx
from rubik.deploy.images import LabelledImages
from rubik.deploy.precision_plan import find_plan, probe_layers
from rubik.deploy.quantize import (
    META_INT8,
    Int8Gate,
    Int8GateError,
    enforce_gate,
    export_int8,
    predictions,
    quantize_int8,
    quantized_weights,
)
from rubik.deploy.runtime import Preprocess

RES = 16


class Net(nn.Module):
    """stem -> a -> b (1x1) -> c -> pool -> fc, ReLU between."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.a = nn.Conv2d(8, 16, 3, 1, 1)
        self.b = nn.Conv2d(16, 16, 1)
        self.c = nn.Conv2d(16, 16, 3, 1, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        for conv in (self.stem, self.a, self.b, self.c):
            x = torch.relu(conv(x))
        return self.fc(x.mean((2, 3)))


def colour_images(n, seed):
    """Flat random colours with noise: pooled features differ from image to image, so classes differ too."""
    rng = np.random.default_rng(seed)
    return [np.clip(rng.integers(0, 256, (1, 1, 3)) + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            for _ in range(n)]


def make_net(fragile: bool) -> nn.Module:
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.from_numpy(Preprocess(RES)(colour_images(64, 1)))
    with torch.no_grad():
        if fragile:
            # a's channels 0 and 1 are the same activation; b reads them with weights +60 and -60, which cancel
            # exactly in fp32 and in int8 alike, but set b's per-channel int8 scale to 60/127: every other weight
            # of b (|w| < 0.25) rounds to 0 or +-0.47, and b's output is noise.
            net.a.weight[1], net.a.bias[1] = net.a.weight[0], net.a.bias[0]
            net.b.weight[:, 0], net.b.weight[:, 1] = 60.0, -60.0
        net.fc.bias.sub_(net(x).mean(0))  # every class predicted
    return net


@pytest.fixture
def setup(tmp_path):
    def make(fragile: bool, max_drop: float = 10.0):
        fp32 = export_onnx(make_net(fragile), tmp_path / f"{fragile}.fp32.onnx", resolution=RES)
        images = colour_images(192, 0)
        held = images[128:]
        # labelled with fp32's own answers: fp32 scores 100 %, int8 scores its agreement with fp32
        labels = predictions(fp32, held)
        gate = Int8Gate(fp32, LabelledImages(held, list(labels), [str(i) for i in range(5)]), max_drop=max_drop)
        return fp32, images[:32], images[32:128], gate
    return make


def test_fragile_layer_ranks_first_and_the_plan_keeps_it_float(tmp_path, setup):
    fp32, calib, select, gate = setup(fragile=True)
    lines = []
    config, check = export_int8(fp32, calib, tmp_path / "m.onnx", gate, select_images=select, calib_n=32,
                                boundary="all", method="minmax", tune_rounds=3, log=lines.append)
    plan = config.plan
    assert plan["agreement_before"] < 0.5  # all-int8 flips most predictions
    assert next(iter(plan["sensitivity"])) == "b"  # the most sensitive layer, by far
    assert plan["sensitivity"]["b"] > 0.4 and all(v < 0.2 for k, v in plan["sensitivity"].items() if k != "b")
    assert plan["passed"] and plan["modules"] == ["b"] and plan["agreement_after"] > 0.9
    assert "node_relu_1" in plan["float_nodes"]  # b's input stays float too (else ORT rounds b's weights itself)
    assert set(plan["ms"]) == {"fp32", "int8", "plan"} and all(v > 0 for v in plan["ms"].values())
    assert any(line.startswith("precision plan: 1 of 4 probed layers kept float: b (+") for line in lines)
    # the written file: b is float and reads a float input, the other convolutions int8; it passes the gate
    model = onnx.load(str(tmp_path / "m.onnx"))
    weights = {n.name: n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    assert weights["node_conv2d_2"] == "b.weight" and weights["node_conv2d_3"].endswith("DequantizeLinear_Output")
    assert not quantized_weights(model, {"node_conv2d_2"})
    meta = json.loads({p.key: p.value for p in model.metadata_props}[META_INT8])
    assert meta["plan"]["keep_float"] == ["node_conv2d_2"]
    assert check.top1_agreement > 0.9 and gate(tmp_path / "m.onnx")
    enforce_gate(gate, tmp_path / "m.onnx")  # raises nothing
    # the all-int8 file of the same boundary and calibration fails that gate
    quantize_int8(fp32, calib, tmp_path / "all.onnx", calib_n=32, boundary="all", method="minmax", log=lambda s: None)
    assert gate.check(tmp_path / "all.onnx").top1_agreement < 0.5 and not gate(tmp_path / "all.onnx")


def test_a_model_that_passes_keeps_everything_int8(tmp_path, setup):
    fp32, calib, select, gate = setup(fragile=False)
    options = dict(calib_n=32, boundary="all", method="minmax", log=lambda s: None)
    config, check = export_int8(fp32, calib, tmp_path / "m.onnx", gate, select_images=select, **options)
    assert config.plan == {} and gate(tmp_path / "m.onnx") and check.top1_agreement > 0.9
    plain = quantize_int8(fp32, calib, tmp_path / "plain.onnx", **options)
    assert plain == config  # same metadata
    assert onnx.load(str(tmp_path / "m.onnx")) == onnx.load(str(tmp_path / "plain.onnx"))  # the same file


def test_no_plan_passes_names_the_layers(tmp_path, setup):
    fp32, calib, select, gate = setup(fragile=True, max_drop=0.0)  # not one flip allowed
    config, _ = export_int8(fp32, calib, tmp_path / "m.onnx", gate, select_images=select, calib_n=32,
                            boundary="all", method="minmax", log=lambda s: None)
    assert not config.plan["passed"] and config.plan["keep_float"] == [] and config.plan["tried"]
    with pytest.raises(Int8GateError) as e:
        enforce_gate(gate, tmp_path / "m.onnx", config.plan)
    text = str(e.value)
    assert "precision plan could not save it" in text and "layers tried b" in text and "\n" not in text


def test_find_plan_core_is_runtime_agnostic():
    """The core on a fake runtime: files are frozensets, agreement is a table; greedy adds only what helps."""
    hurt = {"x": 0.30, "y": 0.05, "z": 0.0, "w": 0.10}  # agreement each layer costs when int8

    def agreement(keep):
        return 1.0 - sum(v for k, v in hurt.items() if k not in keep)

    plan = find_plan(lambda keep: keep, agreement, lambda f: agreement(f) >= 0.9, list(hurt), max_float=3,
                     log=lambda s: None)
    assert plan.sensitive == ["x", "w", "y"]  # z gains nothing: never kept float
    assert plan.passed and plan.keep_float == ["x", "w"] and plan.file == {"x", "w"}
    assert plan.agreement_before == pytest.approx(0.55) and plan.agreement_after == pytest.approx(0.95)
    capped = find_plan(lambda keep: keep, agreement, lambda f: agreement(f) >= 0.99, list(hurt), max_float=2,
                       log=lambda s: None)
    assert not capped.passed and capped.keep_float == ["x", "w"] and capped.file == frozenset()
    empty = find_plan(lambda keep: keep, agreement, lambda f: True, list(hurt), log=lambda s: None)
    assert empty.keep_float == [] and empty.probed == 0 and empty.passed
    assert probe_layers([str(i) for i in range(10)], 4) == ["0", "3", "6", "9"]


def test_executorch_hook_passes_keep_float_and_records_the_plan(tmp_path, monkeypatch):
    """The .pte hook on a stand-in runtime: write_pte, agreement and timing faked; the plan must reach
    write_pte as module names (named_modules of the graph) and land in the sidecar's metadata."""
    from types import SimpleNamespace

    import rubik.deploy.executorch as et
    import rubik.deploy.quantize as q
    import rubik.deploy.runtime as rt
    from rubik.deploy.export import network_graph
    from rubik.deploy.precision_plan import META_PLAN, executorch_layers, export_executorch_planned

    calls = []

    def write_pte(graph, path, *, keep_float=(), **options):
        calls.append(list(keep_float))
        Path(path).write_text(",".join(keep_float))  # the "file" says which modules stayed float
        rt.sidecar_path(path).write_text(json.dumps({"rubik.precision": "int8"}))
        return et.ExecuTorchExport(Path(path), "int8", keep_float=list(keep_float))

    def agreement_of(path):  # quantizing module b costs 60 % agreement, anything else nothing
        return 1.0 if "b" in Path(path).read_text().split(",") else 0.4

    monkeypatch.setattr(et, "write_pte", write_pte)
    monkeypatch.setattr(q, "Agreement", lambda *a: agreement_of)
    monkeypatch.setattr(rt, "open_model", lambda path, threads=1: SimpleNamespace(run=lambda x: x))
    fp32 = tmp_path / "m.fp32.pte"
    fp32.write_text("stem,a,b,c,fc")  # every module float
    rt.sidecar_path(fp32).write_text(json.dumps({rt.META_PREPROCESS: Preprocess(RES).to_json()}))
    graph = network_graph(make_net(fragile=False), resolution=RES, layout=None)
    assert executorch_layers(graph.module) == ["stem", "a", "b", "c", "fc"]
    result, plan = export_executorch_planned(graph, tmp_path / "m.pte", fp32, lambda p: agreement_of(p) > 0.9,
                                             calib_images=colour_images(4, 0), select_images=colour_images(4, 1),
                                             log=lambda s: None)
    assert plan["keep_float"] == ["b"] and plan["passed"] and set(plan["ms"]) == {"fp32", "int8", "plan"}
    assert result.path == tmp_path / "m.pte" and result.keep_float == ["b"]
    assert (tmp_path / "m.pte").read_text() == "b"  # the written file is the probe that kept b float
    sidecar = json.loads(rt.sidecar_path(tmp_path / "m.pte").read_text())
    assert sidecar["rubik.precision"] == "int8" and json.loads(sidecar[META_PLAN])["keep_float"] == ["b"]
    # all-int8, then one probe per module; the chosen file is copied, not lowered again
    assert calls[0] == [] and sorted(calls[1:]) == [["a"], ["b"], ["c"], ["fc"], ["stem"]]
