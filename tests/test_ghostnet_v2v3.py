"""GhostNetV2 and GhostNetV3: timm's checkpoints and logits, V3's folding, MAC arithmetic."""

import copy

import pytest
import torch

import rubik
from rubik.models import get_spec, published
from rubik.models.ghostnetv2 import GhostNetV2
from rubik.models.ghostnetv2 import plan_macs as v2_macs
from rubik.models.ghostnetv3 import GhostNetV3
from rubik.models.ghostnetv3 import plan_macs as v3_macs
from rubik.profile import count, count_params, deployed

NAMES = ["ghostnetv2_100", "ghostnetv2_130", "ghostnetv2_160",
         "ghostnetv3_050", "ghostnetv3_100", "ghostnetv3_130", "ghostnetv3_160"]


def ours(name: str) -> torch.nn.Module:
    return rubik.create_model(name)


def timm_model(name: str, randomize_bn) -> torch.nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    randomize_bn(model)
    return model


def max_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


@pytest.mark.parametrize("name", NAMES)
def test_timm_state_dict_loads_strictly_and_logits_match(name, randomize_bn):
    theirs = timm_model(name, randomize_bn)
    model = ours(name).eval()
    result = model.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # Odd sizes exercise the DFC gate's floor pooling and nearest upsampling; batch sizes 1 and 3.
    sizes = [(224, 1), (97, 3)] if name.endswith("_100") else [(97, 3), (64, 1)]
    for resolution, batch in sizes:
        x = torch.randn(batch, 3, resolution, resolution)
        assert max_diff(model, theirs, x) < 1e-4, (resolution, batch)


@pytest.mark.parametrize("name", ["ghostnetv3_100"])  # 0.5x: through a weights file below
def test_v3_folding_keeps_logits_removes_parameters_and_matches_timm_deploy(name, randomize_bn):
    theirs = timm_model(name, randomize_bn)
    model = ours(name).eval()
    model.load_state_dict(theirs.state_dict(), strict=True)
    folded = copy.deepcopy(model).reparameterize()
    assert folded.is_reparameterized and not model.is_reparameterized
    theirs_folded = copy.deepcopy(theirs)
    theirs_folded.convert_to_deploy()
    assert count_params(folded) == count_params(theirs_folded) < count_params(model)  # 1.0x: 8.13 M -> 6.15 M
    # Same names and shapes as timm's folded model: a deployed checkpoint loads strictly into a folded model.
    fresh = ours(name).eval().reparameterize()
    fresh.load_state_dict(theirs_folded.state_dict(), strict=True)
    for resolution, batch in [(97, 3), (224, 1)]:
        x = torch.randn(batch, 3, resolution, resolution)
        assert max_diff(folded, model, x) < 1e-4
        assert max_diff(folded, theirs_folded, x) < 1e-4
        assert max_diff(fresh, theirs_folded, x) < 1e-4
    # A second fold is a no-op, and the folded model has no branch left to train.
    assert not any("rpr" in k for k in folded.reparameterize().state_dict())


@pytest.mark.parametrize("width,depth,resolution", [(1.0, 1.0, 224), (0.75, 0.5, 97), (0.5, 1.3, 20)])
def test_plan_macs_equal_the_hook_count(width, depth, resolution):
    # At 20 px the last groups run on 1x1 maps: the DFC gate then pools nothing (timm's would fail).
    with torch.device("meta"):  # shapes only: counting needs no arithmetic
        v2 = GhostNetV2(width, depth, num_classes=10)
        v3 = GhostNetV3(width, depth, num_classes=10)
    assert v2_macs(v2.plan, resolution, num_classes=10) == count(v2, resolution)[0]
    # count() counts a GhostNetV3 folded, as deployed; inside a Sequential (no reparameterize) it counts
    # the train-time branches.
    unfolded = v3_macs(v3.plan, resolution, num_classes=10, folded=False)
    assert unfolded == count(torch.nn.Sequential(v3), resolution)[0]
    folded = v3_macs(v3.plan, resolution, num_classes=10)
    assert folded == count(v3, resolution)[0] == count(copy.deepcopy(v3).reparameterize(), resolution)[0] < unfolded
    # Folded, GhostNetV3 is GhostNetV2's network: same MACs.
    assert folded == count(v2, resolution)[0]
    assert not v3.is_reparameterized  # counting folded a copy


def test_shape_only_models_count_folded():
    with torch.device("meta"):
        v3 = GhostNetV3(0.5)
    assert count(v3, 224)[0] == v3_macs(v3.plan, 224)


def test_official_branch_batchnorm_spelling_is_renamed():
    from rubik.models.ghostnetv3 import FAMILY

    state = GhostNetV3(0.5).state_dict()
    official = {k.replace("_rpr_conv.0.bn1.", "_rpr_conv.0.bn.").replace("_rpr_scale.bn1.", "_rpr_scale.bn."): v
                for k, v in state.items()}
    assert official.keys() != state.keys()
    assert FAMILY.key_filter(official).keys() == state.keys()


def test_folding_uses_running_statistics_not_the_batch():
    model = GhostNetV3(0.5, 0.5, num_classes=5)
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(2):  # move the running statistics away from their initial values
            model(torch.randn(2, 3, 48, 48) * 2 + 1)
    model.eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before = model(x)
        after = model.reparameterize()(x)
    assert (before - after).abs().max().item() < 1e-4
    assert before.abs().max().item() > 1e-3  # the comparison is not between two zeros


def test_export_folds_v3_and_the_onnx_file_verifies(tmp_path, randomize_bn):
    pytest.importorskip("onnxruntime")
    import onnx

    from rubik.deploy.export import export_onnx, verify_onnx

    # Random weights with random BN statistics make some draws chaotic in fp32 (PyTorch's own fp32 and fp64
    # logits then differ by ~0.1 %, more than any export tolerance): fix the draw and take BN statistics
    # from data, as training would, so the check is about the export, not the global RNG's state.
    torch.manual_seed(0)
    model = GhostNetV3(0.5, 0.5, num_classes=7)
    randomize_bn(model)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 64, 64))
    model.eval()
    path = export_onnx(model, tmp_path / "v3.onnx", resolution=64)
    result = verify_onnx(model, path, n=4)  # against the unfolded PyTorch model
    assert result.max_abs_diff <= result.tolerance
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    folded = copy.deepcopy(model).reparameterize()
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in folded.modules())
    assert len(convs) == n_conv < sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert not model.is_reparameterized  # exporting folded a copy


def test_weights_file_loads_through_create_model(tmp_path, randomize_bn):
    from safetensors.torch import save_file

    theirs = timm_model("ghostnetv3_050", randomize_bn)
    path = tmp_path / "v3.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    model = rubik.create_model("ghostnetv3_050", weights=path).eval()
    assert max_diff(model, theirs, torch.randn(1, 3, 97, 97)) < 1e-4
    head = rubik.create_model("ghostnetv3_050", num_classes=3, weights=path)  # all but the classifier
    assert torch.equal(head.conv_stem.weight, model.conv_stem.weight) and head.classifier.out_features == 3


def test_features_equal_timms_for_v3(tmp_path, randomize_bn):
    # tests/test_features.py checks ghostnetv2_100; V3's taps are the same modules, with its own blocks.
    from safetensors.torch import save_file

    timm = pytest.importorskip("timm")
    full = timm_model("ghostnetv3_100", randomize_bn)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    theirs = timm.create_model("ghostnetv3_100", features_only=True, pretrained=True,
                               pretrained_cfg_overlay={"file": str(path)}).eval()
    net = rubik.create_model("ghostnetv3_100", features_only=True, weights=path).eval()
    assert net.feature_info.channels() == theirs.feature_info.channels()
    assert net.feature_info.reduction() == theirs.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert net.feature_info.module_name() == theirs.feature_info.module_name()
    x = torch.randn(1, 3, 97, 97)
    with torch.no_grad():
        for a, b in zip(net(x), theirs(x), strict=True):
            assert a.shape == b.shape and (a - b).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_counted_macs_and_params_against_what_was_published(name):
    with torch.device("meta"):
        model = rubik.create_model(name)
    spec = get_spec(name)
    macs = count(model, spec.resolution)[0] / 1e6  # GhostNetV3 counted folded
    pub = published(spec)
    if pub.macs_m is not None:
        assert abs(macs - pub.macs_m) <= 0.02 * pub.macs_m, (macs, pub.macs_m)
    if pub.params_m is not None:
        params = count_params(deployed(model)) / 1e6
        assert abs(params - pub.params_m) <= 0.02 * pub.params_m, (params, pub.params_m)
    if pub.hub_id is not None:  # the hub id is one timm publishes weights under
        timm = pytest.importorskip("timm")
        assert pub.hub_id.removeprefix("timm/") in timm.list_pretrained(name + "*")


def test_models_profile_and_twist_report_the_folded_network(capsys):
    import json

    from rubik.cli import main

    assert main(["models", "ghostnetv3_1*", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert round(rows["ghostnetv3_100"]["params_m"], 2) == 6.15 and round(rows["ghostnetv3_100"]["macs_m"], 1) == 167.0
    assert rows["ghostnetv3_100"]["pretrained"] and rows["ghostnetv3_130"]["paper_top1"] == 79.1
    assert main(["profile", "ghostnetv3_050", "--json", "--no-latency", "--resolution", "96"]) == 0
    prof = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        model = rubik.create_model("ghostnetv3_050")
    assert prof["params"] == count_params(deployed(model)) < count_params(model)
    assert prof["macs"] == v3_macs(model.plan, 96)
    assert main(["twist", "--base", "ghostnetv3_100", "--ratio", "0.5", "--json", "--no-latency"]) == 0
    out = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        twisted = rubik.create_model(out["model"])
    assert out["params"] == count_params(deployed(twisted)) < count_params(twisted)


@pytest.mark.parametrize("name", ["ghostnet_100", "ghostnetv2_100", "ghostnetv3_100"])
def test_exported_graph_has_no_slice_that_keeps_every_channel(name):
    # torch.export turns a slice that keeps every channel into aten.alias; ExecuTorch then leaves an
    # alias_copy outside the XNNPACK delegate and splits the graph around it.
    model = rubik.create_model(name).eval()
    if hasattr(model, "reparameterize"):
        model.reparameterize()
    graph = torch.export.export(deployed(model), (torch.randn(1, 3, 64, 64),), strict=False).graph
    noop = [str(n) for n in graph.nodes if n.op == "call_function" and "alias" in str(n.target)]
    full = [str(n) for n in graph.nodes if n.op == "call_function" and "slice" in str(n.target)
            and n.meta["val"].shape == n.args[0].meta["val"].shape]
    assert not noop and not full, noop + full


def test_v2_and_v3_are_ghostnets_that_differ_only_in_their_bottlenecks():
    from rubik.models.ghost import GhostBottleneck, GhostModule, GhostNet
    from rubik.models.ghostnetv2 import ATTENTION_FROM, GhostModuleV2

    v1, v2 = GhostNet(0.5, 0.5, num_classes=3), GhostNetV2(0.5, 0.5, num_classes=3)
    assert isinstance(v2, GhostNet) and isinstance(GhostNetV3(0.5, 0.5), GhostNetV2)
    for own in ("__init__", "forward", "forward_features", "forward_head", "reset_classifier"):
        assert own not in vars(GhostNetV2) and own not in vars(GhostNetV3), own  # GhostNet's, not a copy
    # Same stem, head and keys outside the DFC branches; the gate from ATTENTION_FROM on.
    assert [k for k in v2.state_dict() if ".short_conv." not in k] == list(v1.state_dict())
    blocks = [b for stage in v2.blocks[:-1] for b in stage]
    assert all(isinstance(b, GhostBottleneck) for b in blocks)
    assert [type(b.ghost1) for b in blocks] == [GhostModule] * ATTENTION_FROM + [GhostModuleV2] * (
        len(blocks) - ATTENTION_FROM)
