"""ResNet as a family: timm's keys and logits, plan arithmetic, scaling rules, twisting, pretrained."""

import json
import random

import pytest
import torch
from safetensors.torch import save_file

import rubik
from rubik.cli import main
from rubik.models import FAMILIES, build, get_spec
from rubik.models.resnet import ResNet, ResNetRules
from rubik.profile import count


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_timm_state_dict_loads_strictly_and_logits_match(name, randomize_bn):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    theirs = timm.create_model(name).eval()
    randomize_bn(theirs)
    ours = rubik.create_model(name).eval()
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for batch, size in ((1, 64), (3, 97), (2, 128)):
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            a, b = ours(x), theirs(x)
        assert a.shape == b.shape == (batch, 1000)
        assert (a - b).abs().max().item() < 1e-4, (name, batch, size)


def test_plan_arithmetic_counts_what_the_hooks_count():
    rng = random.Random(0)
    family = FAMILIES["resnet"]
    for base in ("resnet18", "resnet50", "resnet101"):
        for _ in range(3):
            w, d, r, n = rng.uniform(0.2, 1.5), rng.uniform(0.2, 1.6), rng.randint(32, 260), rng.choice([10, 1000])
            spec = get_spec({"name": "x", "family": "resnet", "width": w, "depth": d, "resolution": r,
                             "rules": {"base": base}})
            with torch.device("meta"):
                model = build(spec, num_classes=n)
            assert family.macs(family.plan_of(spec), r, n) == count(model, r)[0], (base, w, d, r)


def test_scaling_rules_round_blocks_and_channels():
    model = ResNet(width=0.5, depth=0.5, rules=ResNetRules("resnet50"))
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 3, 2]  # round(0.5 x (3, 4, 6, 3))
    assert model.conv1.out_channels == 32 and model.layer1[0].conv1.out_channels == 32
    assert model.fc.in_features == 256 * 4
    tiny = ResNet(width=0.1, depth=0.1, rules=ResNetRules("resnet18"))
    assert [len(getattr(tiny, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]  # at least one block
    assert tiny.layer1[0].conv1.out_channels == 8  # never below one multiple of 8


def test_twist_resnet50_lands_within_one_percent_with_its_own_formula(capsys, tmp_path):
    out = tmp_path / "r50.json"
    assert main(["twist", "--base", "resnet50", "--ratio", "0.5", "--no-latency", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert abs(printed["twist"]["macs"] / printed["twist"]["target_macs"] - 1) <= 0.01
    spec = get_spec(str(out))
    assert spec.family == "resnet" and spec.rules.base == "resnet50"
    with torch.device("meta"):
        model = build(spec)
    assert abs(count(model, spec.resolution)[0] / (0.5 * count(build_meta("resnet50"), 224)[0]) - 1) <= 0.01
    from rubik.cube.twist import Twister

    assert Twister("resnet50").formula.path == "built-in resnet_paper.json"  # the family's formula
    assert Twister("tinynet_e").formula.path == "built-in tinynet_paper.json"


def build_meta(name):
    with torch.device("meta"):
        return build(get_spec(name))


def test_pretrained_loads_timms_hub_file(monkeypatch, tmp_path, randomize_bn):
    trained = rubik.create_model("resnet18").eval()
    randomize_bn(trained)
    path = tmp_path / "model.safetensors"
    save_file(trained.state_dict(), str(path))
    calls = []

    def fake(repo_id, filename, **kwargs):
        calls.append(repo_id)
        return str(path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    model = rubik.create_model("resnet18", pretrained=True, num_classes=5)
    assert calls == ["timm/resnet18.a1_in1k"]
    assert torch.equal(model.layer3[1].conv2.weight, trained.layer3[1].conv2.weight)
    assert model.fc.out_features == 5  # a classifier of another size is skipped, the rest loads
