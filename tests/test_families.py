"""The family interface: one table, named rows, separate metadata, old spec files, bad input."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import rubik
from rubik.cli import main
from rubik.errors import RubikError
from rubik.models import FAMILIES, MODELS, ModelSpec, build, get_spec, published
from rubik.models.ghost import GHOSTNET_GROUPS, GhostRow, GhostRules
from rubik.profile import count


def test_every_named_model_is_in_a_family_whose_plan_counts_its_macs():
    for name, spec in MODELS.items():
        family = FAMILIES[spec.family]
        assert isinstance(spec.rules, family.rules), name
        if family.macs is not None and name.endswith(("_b0", "_e", "_100")):
            with torch.device("meta"):
                model = build(spec)
            assert family.macs(family.plan_of(spec), 96, 1000) == count(model, 96)[0], name


def test_ghost_table_is_named_rows():
    rows = [row for group in GHOSTNET_GROUPS for row in group]
    assert len(rows) == 16
    # Fields by name (paper Table 7): a table whose columns were in another order would not read so.
    assert rows[3] == GhostRow(kernel=5, expand=72, channels=40, se_ratio=0.25, stride=2)
    assert rows[9] == GhostRow(kernel=3, expand=480, channels=112, se_ratio=0.25, stride=1)
    assert [r.se_ratio > 0 for r in rows].count(True) == 7
    assert [r.stride for r in rows].count(2) == 4 and rows[-1].channels == 160


def test_unknown_family_in_a_json_spec_names_the_known_ones(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"name": "x", "family": "vgg"}))
    with pytest.raises(RubikError, match="family") as e:
        rubik.create_model(str(path))
    for name in FAMILIES:
        assert name in str(e.value)


def test_specs_written_by_earlier_versions_still_load(tmp_path):
    # model.json as rubik wrote it before preprocessing and published figures moved out of the spec
    old = {"name": "ghostnet_100", "family": "ghostnet", "width": 1.0, "depth": 1.0, "resolution": 224,
           "rules": {"depth_rounding": "ceil", "stem": "scaled", "head": "scaled", "stem_channels": 32,
                     "head_channels": 1280},
           "drop_rate": 0.2, "crop_pct": 0.9, "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5],
           "std": [0.25, 0.25, 0.25], "paper": {"macs_m": 141}, "hub_id": "timm/ghostnet_100.in1k"}
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"model": old, "num_classes": 3}))
    spec = get_spec(str(path))
    assert spec.rules == GhostRules() and spec.preprocess.crop_pct == 0.9
    assert spec.preprocess.mean == (0.5, 0.5, 0.5) and spec.preprocess.interpolation == "bilinear"
    assert published(spec).hub_id == "timm/ghostnet_100.in1k"  # by name and architecture, not from the file
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and "paper" not in spec.to_dict() and "hub_id" not in spec.to_dict()


def test_unknown_rules_for_the_family_are_an_error():
    with pytest.raises(RubikError, match="not ghostnet rules"):
        get_spec({"name": "g", "family": "ghostnet", "rules": {"expand_ratio": 3}})
    with pytest.raises(RubikError, match="not mbconv rules"):
        get_spec({"name": "m", "rules": {"divisor": 4}})


def test_twisted_and_renamed_specs_carry_no_published_figures():
    from rubik.cube.twist import Twister

    result = Twister("tinynet_e").to_ratio(0.5)
    assert published(result.spec) == published(replace(MODELS["tinynet_e"], name="other"))
    assert published(result.spec).hub_id is None and published(MODELS["tinynet_e"]).hub_id
    # the registered name with another architecture is not the published model either
    assert published(replace(MODELS["tinynet_e"], width=0.3)).top1 is None


def test_ghostnet_key_filter_belongs_to_ghostnet(tmp_path):
    torch.manual_seed(0)
    ghost = rubik.create_model("ghostnet_050").eval()
    state = {re.sub(r"^(blocks\.9\.0\.)bn1\.", r"\1bn.", k): v for k, v in ghost.state_dict().items()}
    assert any(".bn.running_mean" in k for k in state)  # the official file's spelling
    save_file(state, str(tmp_path / "g.safetensors"))
    loaded = rubik.create_model("ghostnet_050", weights=tmp_path / "g.safetensors")
    assert torch.equal(loaded.blocks[9][0].bn1.weight, ghost.blocks[9][0].bn1.weight)
    # an MBConv checkpoint with a `bn.` key is not renamed: GhostNet's rename is GhostNet's
    tiny = rubik.create_model("tinynet_e").state_dict()
    tiny["blocks.1.0.bn.weight"] = tiny.pop("blocks.1.0.bn1.weight")
    save_file(tiny, str(tmp_path / "t.safetensors"))
    with pytest.raises(RubikError, match="missing"):
        rubik.create_model("tinynet_e", weights=tmp_path / "t.safetensors")


def test_nothing_branches_on_a_family_name():
    root = Path(rubik.__file__).parent
    branching = re.compile(r"family\s*(==|!=|not in|in)\s*[\"'(\[]")
    offenders = [f"{p.relative_to(root)}:{i + 1}" for p in root.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines()) if branching.search(line)]
    assert not offenders, offenders


@pytest.mark.parametrize("argv", [
    ["profile", "tinynet_e", "--resolution", "-3", "--no-latency"],
    ["profile", "tinynet_e", "--resolution", "0", "--no-latency"],
    ["twist", "--base", "tinynet_e", "--ratio", "0.5", "--base-resolution", "-1", "--no-latency"],
    ["train", "--model", "tinynet_e", "--data", "digits", "--resolution", "0"],
    ["export", "--model", "tinynet_e", "--random-init", "-o", "x.onnx", "--resolution", "-2"],
])
def test_a_non_positive_resolution_is_a_one_line_error(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resolution must be a positive" in err, err
    assert not list(tmp_path.iterdir())  # nothing was written


@pytest.mark.parametrize("name", ["tinynet_e", "ghostnet_050", "ghostnetv2_100", "ghostnetv3_050", "resnet18"])
def test_every_family_shares_the_classifier_head_and_its_reset(name):
    """The shared head: pool -> [GhostNet's conv_head + ReLU] -> dropout -> classifier under the family's key
    name; reset_classifier swaps only the classifier (freshly initialised), 0 classes give the pooled features."""
    torch.manual_seed(0)
    model = rubik.create_model(name).eval()
    head = FAMILIES[model.spec.family].classifier[0]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(f"{head}.")}
        features = model.forward_head(model.forward_features(x))
        assert torch.equal(model(x), features) and features.shape == (2, 1000)
        model.reset_classifier(7)
        fc = getattr(model, head)
        assert isinstance(fc, torch.nn.Linear) and fc.in_features == model.num_features and model.num_classes == 7
        bound = model.num_features ** -0.5
        assert fc.weight.abs().max() <= bound and fc.weight.abs().max() > 0.9 * bound and not fc.bias.any()
        assert model(x).shape == (2, 7)
        after = model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before.items())  # nothing but the classifier changed
        model.reset_classifier(0)
        pooled = model(x)
    assert pooled.shape == (2, model.num_features) and sorted(model.state_dict()) == sorted(before)
    if "ghost" in name:  # GhostNet's head: a 1x1 conv (last width -> num_features) and ReLU after pooling
        assert pooled.min() >= 0 and model.conv_head.in_channels == model.plan.last != model.num_features
