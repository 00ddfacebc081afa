"""EfficientNet-Lite (the MBConv family under Lite's rules) against timm, twisting a Lite, and TinyNet-Lite A..E."""

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

import rubik
from rubik.cli import main
from rubik.cube.formula import TinyFormula
from rubik.cube.solve import macs_of
from rubik.cube.twist import Twister
from rubik.errors import RubikError
from rubik.models import FAMILIES, LITE_RULES, MODELS, get_spec, published
from rubik.models.layers import SqueezeExcite
from rubik.models.registry import TINYNET_LITE_POINTS
from rubik.profile import count, count_params

LITES = [f"efficientnet_lite{i}" for i in range(5)]
# timm's _gen_efficientnet_lite (the TF reference's table): (width, depth, resolution, dropout)
LITE_PARAMS = {"efficientnet_lite0": (1.0, 1.0, 224, 0.2), "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
               "efficientnet_lite2": (1.1, 1.2, 260, 0.3), "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
               "efficientnet_lite4": (1.4, 1.8, 300, 0.3)}
TINYNET_BUDGETS = {"a": 0.9, "b": 0.5, "c": 0.25, "d": 0.13, "e": 0.06}  # TinyNet A..E's c


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


@pytest.fixture(scope="module")
def lite_twister():
    return Twister("efficientnet_lite0")


def assert_is_lite(model: nn.Module) -> None:
    """No squeeze-excite anywhere, ReLU6 for every activation, a 32-channel stem."""
    assert not any(isinstance(m, SqueezeExcite) for m in model.modules())
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Sigmoid))]
    assert acts and all(type(m) is nn.ReLU6 for m in acts)
    assert model.conv_stem.out_channels == 32


def test_lite0_logits_equal_timms(timm, randomize_bn):
    torch.manual_seed(0)
    theirs = timm.create_model("efficientnet_lite0").eval()
    randomize_bn(theirs)
    ours = rubik.create_model("efficientnet_lite0").eval()
    result = ours.load_state_dict(theirs.state_dict(), strict=True)  # timm's keys, unchanged
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == (2, 1000) and torch.allclose(a, b, rtol=0, atol=1e-5), (a - b).abs().max().item()


@pytest.mark.parametrize("name", LITES)
def test_lite_matches_timm_keys_params_and_macs(name, timm):
    theirs = timm.create_model(name).eval()
    ours = rubik.create_model(name).eval()
    w, d, r, drop = LITE_PARAMS[name]
    spec = ours.spec
    assert (spec.width, spec.depth, spec.resolution, spec.drop_rate) == (w, d, r, drop)
    assert spec.rules == LITE_RULES and spec.family == "mbconv"
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(ref)
    assert all(mine[k].shape == ref[k].shape for k in mine)
    assert count_params(ours) == sum(p.numel() for p in theirs.parameters())
    assert_is_lite(ours)
    assert ours.num_features == 1280 and ours.depths[0] == 1 and ours.depths[-1] == 1  # fixed head, first, last
    # MACs: rubik's hooks and plan arithmetic equal torch's own FLOP counter on timm's model (FLOPs = 2 MACs)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        theirs(torch.randn(1, 3, r, r))
    macs = count(ours, r)[0]
    assert macs == counter.get_total_flops() // 2 == macs_of(spec)


def test_lite_macs_and_params_against_published():
    """The TF Lite README's figures (4.7 M / 407 M for Lite0, ...). Its MAdds come from TF's profiler, which
    also counts elementwise ops: our conv+linear counts are 3-6 % below them, as for EfficientNet B2..B7."""
    for name in LITES:
        with torch.device("meta"):
            model = rubik.models.build(get_spec(name))
        pub = published(model.spec)
        macs, params = count(model, model.spec.resolution)[0] / 1e6, count_params(model) / 1e6
        assert -0.06 <= macs / pub.macs_m - 1 <= 0, (name, macs, pub.macs_m)
        assert abs(params - pub.params_m) <= 0.05, (name, params, pub.params_m)
    lite0 = MODELS["efficientnet_lite0"]
    assert published(lite0).hub_id == "timm/efficientnet_lite0.ra_in1k"
    with torch.device("meta"):
        model = rubik.models.build(lite0)
    assert count_params(model) == 4_652_008 and count(model, 224)[0] == 385_187_552


def test_lite_rules_round_trip_and_bad_values():
    spec = MODELS["efficientnet_lite2"]
    again = get_spec(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.rules == LITE_RULES
    with pytest.raises(RubikError, match="act"):
        get_spec({"name": "x", "rules": {"act": "gelu"}})
    with pytest.raises(RubikError, match="squeeze_excite"):
        get_spec({"name": "x", "rules": {"squeeze_excite": "no"}})
    # the default rules are still EfficientNet's: SE, SiLU, every stage depth-scaled
    b1 = rubik.create_model("efficientnet_b1")
    assert any(isinstance(m, SqueezeExcite) for m in b1.modules()) and isinstance(b1.act, nn.SiLU)
    assert b1.depths[0] == 2


@pytest.mark.parametrize("budget", [("ratio", 0.5), ("macs", 100e6), ("macs", 250e6), ("ratio", 0.1)])
def test_twist_on_a_lite_base_lands_within_one_percent_and_builds_a_lite(budget, lite_twister):
    kind, value = budget
    result = lite_twister.to_ratio(value) if kind == "ratio" else lite_twister.to_macs(value)
    assert abs(result.error) <= 0.01, (budget, result.spec)
    model = rubik.create_model(result.to_dict()["model"])  # through JSON, as `rubik twist --out` writes it
    assert_is_lite(model)
    assert count(model, result.spec.resolution)[0] == result.macs


def test_cli_twist_a_lite_base(capsys, tmp_path):
    out = tmp_path / "lite.json"
    assert main(["twist", "--base", "efficientnet_lite0", "--ratio", "0.5", "--no-latency", "--out", str(out)]) == 0
    assert "efficientnet_lite0_tiny" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert abs(data["twist"]["macs"] / data["twist"]["target_macs"] - 1) <= 0.01
    assert_is_lite(rubik.create_model(str(out)))
    assert main(["twist", "--base", "efficientnet_lite0", "--flops", "50M", "--no-latency", "--json"]) == 0
    twisted = json.loads(capsys.readouterr().out)
    assert abs(twisted["twist"]["macs"] / 50e6 - 1) <= 0.01


def test_tinynet_lite_constants_are_the_formulas_models(lite_twister):
    """The registry stores TinyNet-Lite's (r, d, w) (models must not import cube); recompute them here."""
    assert lite_twister.formula.path == TinyFormula.builtin(FAMILIES["mbconv"].formula).path
    assert sorted(TINYNET_LITE_POINTS) == sorted(TINYNET_BUDGETS)
    family = FAMILIES["mbconv"]
    for letter, c in TINYNET_BUDGETS.items():
        stored_c, resolution, depth, width = TINYNET_LITE_POINTS[letter]
        named = MODELS[f"tinynet_lite_{letter}"]
        assert stored_c == c and (named.resolution, named.depth, named.width) == (resolution, depth, width)
        result = lite_twister.to_ratio(c)
        spec = result.spec
        assert named.rules == spec.rules == lite_twister.twist_rules()
        assert spec.resolution == resolution, letter
        assert abs(spec.depth - depth) < 1e-3 and abs(spec.width - width) < 1e-3, (letter, spec)
        assert family.plan_of(named) == family.plan_of(spec), letter  # the same channels and blocks
        macs = macs_of(named)
        assert abs(macs / (c * lite_twister.base_macs) - 1) <= 0.01, (letter, macs)
        assert published(named).hub_id is None  # architectures only: no weights exist


def test_tinynet_lite_models_build_run_and_are_lite():
    assert rubik.list_models("tinynet_lite_*") == [f"tinynet_lite_{c}" for c in "abcde"]
    for letter in "abcde":
        model = rubik.create_model(f"tinynet_lite_{letter}", num_classes=5).eval()
        assert_is_lite(model)
        r = model.spec.resolution
        with torch.no_grad():
            assert model(torch.randn(1, 3, r, r)).shape == (1, 5)


def test_cli_lists_and_profiles_lite(capsys):
    assert main(["models", "*lite*"]) == 0
    listed = capsys.readouterr().out
    for name in LITES + [f"tinynet_lite_{c}" for c in "abcde"]:
        assert name in listed
    assert main(["profile", "efficientnet_lite0", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "4.652 M" in out and "385.2 M" in out


def test_a_lite_point_off_the_table_still_builds():
    spec = replace(MODELS["efficientnet_lite0"], name="mine", width=0.6, depth=0.5, resolution=96)
    model = rubik.create_model(spec, num_classes=3).eval()
    assert_is_lite(model)
    assert model.depths == [1, 1, 1, 2, 2, 2, 1]  # ceil(0.5 x repeats) between the fixed first and last stages
    assert count(model, 96)[0] == macs_of(spec, num_classes=3)
