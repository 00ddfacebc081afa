"""The model core: exact to the papers (MACs, params) and to timm's checkpoints (keys, logits)."""

import math

import pytest
import torch

import rubik
import rubik.models
from rubik.models import EFFICIENTNET_B0_STAGES, EFFICIENTNET_RULES, MBConvNet, build, get_spec, published
from rubik.models.registry import INVERSE_GIANT_WIDTHS, UnknownModelError
from rubik.profile import count, count_params

# Published (MACs M, params M). EfficientNet B2..B7 were counted by TensorFlow's profiler, which
# adds elementwise ops, so they get the 12 % on MACs.
PUBLISHED = {
    "efficientnet_b0": (390, 5.3), "efficientnet_b1": (700, 7.8), "efficientnet_b2": (1000, 9.2),
    "efficientnet_b3": (1800, 12), "efficientnet_b4": (4200, 19), "efficientnet_b5": (9900, 30),
    "efficientnet_b6": (19000, 43), "efficientnet_b7": (37000, 66), "efficientnet_b_4": (24, 1.3),
    "tinynet_a": (339, 6.2), "tinynet_b": (202, 3.7), "tinynet_c": (100, 2.5), "tinynet_d": (52, 2.3),
    "tinynet_e": (24, 2.0), "ghostnet_050": (42, 2.6), "ghostnet_100": (141, 5.2), "ghostnet_130": (226, 7.3),
    "mobilenetv3_large_100": (219, 5.4), "mobilenetv3_small_100": (56, 2.5),  # torchvision's, as published
    # ResNet: He et al.'s 1.8 / 3.6 GMACs; 4.1 / 7.8 for the v1.5 layout of 50 / 101 (torchvision's figures)
    "resnet18": (1800, 11.7), "resnet34": (3600, 21.8), "resnet50": (4100, 25.6), "resnet101": (7800, 44.5),
    # EfficientNet-Lite: the TF Lite README's table (its MAdds from TensorFlow's profiler too)
    "efficientnet_lite0": (407, 4.7), "efficientnet_lite1": (631, 5.4), "efficientnet_lite2": (899, 6.1),
    "efficientnet_lite3": (1440, 8.2), "efficientnet_lite4": (2640, 13.0),
}
TF_COUNTED = {f"efficientnet_b{i}" for i in range(2, 8)} | {f"efficientnet_lite{i}" for i in range(5)}


def half_unit(published: float) -> float:
    """Half a unit of the second significant digit, as the papers print params (2.0 M covers 1.95..2.05 M)."""
    return 0.5 * 10 ** (math.floor(math.log10(published)) - 1)


def meta(name):
    with torch.device("meta"):
        return build(get_spec(name))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_macs_and_params_match_the_papers(name):
    model = meta(name)
    macs = count(model, model.spec.resolution)[0] / 1e6
    params = count_params(model) / 1e6
    paper_macs, paper_params = PUBLISHED[name]
    pub = published(model.spec)
    assert pub.macs_m == paper_macs and pub.params_m == paper_params
    macs_tol = 0.12 if name in TF_COUNTED else 0.02
    assert abs(macs - paper_macs) <= macs_tol * paper_macs, (macs, paper_macs)
    # 2 %, or the rounding of the figure as printed, whichever is wider.
    assert abs(params - paper_params) <= max(0.02 * paper_params, half_unit(paper_params)), (params, paper_params)


def test_every_named_model_has_a_config_and_runs():
    classifiers = rubik.models.list_models()
    assert set(classifiers) < set(rubik.list_models())  # rubik.list_models() adds the detectors
    for name in classifiers:
        spec = get_spec(name)
        pre = spec.preprocess
        assert spec.resolution >= 64 and 0 < pre.crop_pct <= 1 and pre.interpolation in ("bicubic", "bilinear")
        assert len(pre.mean) == 3 and len(pre.std) == 3
    model = rubik.create_model("tinynet_e", num_classes=7).eval()
    assert model(torch.randn(2, 3, 106, 106)).shape == (2, 7)


def test_inverse_giant_widths_halve_flops_per_step():
    base = count(MBConvNet(), 224)[0]
    for phi, width in INVERSE_GIANT_WIDTHS.items():
        model = meta(f"efficientnet_b_{phi}")
        assert model.spec.width == width
        assert model.spec.resolution == round(224 * 1.15 ** -phi)
        assert math.isclose(model.spec.depth, 1.2 ** -phi)
        macs = count(model, model.spec.resolution)[0]
        assert abs(macs / (base * 2.0 ** -phi) - 1) < 0.03, (phi, macs)
    # The literal width 1.1^-4 cannot reach the paper's 24 M MACs: this is why the width is solved.
    with torch.device("meta"):
        literal = MBConvNet(EFFICIENTNET_B0_STAGES, 1.1 ** -4, 1.2 ** -4, EFFICIENTNET_RULES)
    assert count(literal, 128)[0] > 35e6


def test_depth_rules_follow_the_official_code():
    assert meta("efficientnet_b1").depths == [2, 3, 3, 4, 4, 5, 2]  # ceil(1.1 x repeats)
    assert meta("tinynet_e").depths == [1, 1, 1, 2, 2, 2, 1]  # round(0.6 x repeats)
    tiny = meta("tinynet_e")
    assert tiny.conv_stem.out_channels == 32 and tiny.num_features == 1280  # fixed stem, head >= 1280
    assert meta("efficientnet_b_4").conv_stem.out_channels == 16  # inverse formula scales the stem


TIMM_MODELS = ["tinynet_a", "tinynet_b", "tinynet_c", "tinynet_d", "tinynet_e",
               "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "ghostnet_100"]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_state_dict_loads_and_logits_match(name, randomize_bn):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    theirs = timm.create_model(name).eval()
    randomize_bn(theirs)
    ours = rubik.create_model(name).eval()
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    r = min(ours.spec.resolution, 160)  # logits must agree at any size; keep the test quick
    x = torch.randn(2, 3, r, r)
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    assert diff < 1e-4


def test_ghostnet_cube_and_any_mbconv_point_build():
    for depth in (0.4, 0.7, 1.0, 1.6):
        model = build(get_spec({"name": "g", "family": "ghostnet", "width": 0.8, "depth": depth}), num_classes=3)
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)
        n_blocks = sum(len(stage) for stage in model.blocks[:-1])
        assert (n_blocks < 16) if depth < 1 else (n_blocks >= 16)
    model = rubik.create_model({"name": "x", "width": 0.33, "depth": 0.37, "resolution": 72}, num_classes=5)
    assert model.eval()(torch.randn(1, 3, 72, 72)).shape == (1, 5)


def test_drop_connect_only_in_training():
    model = rubik.create_model("tinynet_e", drop_connect_rate=0.5, drop_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        a = model(x)
        b = model(x)
    assert not torch.allclose(a, b)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="tinynet_a"):
        rubik.create_model("tinynet_aa")
    with pytest.raises(UnknownModelError, match="rubik models"):
        rubik.create_model("vgg16")  # nothing close: the hint names the list


def test_bad_spec_names_the_field(tmp_path):
    from rubik.errors import RubikError

    with pytest.raises(RubikError, match="width"):
        rubik.create_model({"name": "x", "width": -1})
    with pytest.raises(RubikError, match="colour"):
        rubik.create_model({"name": "x", "colour": 1})
    bad = tmp_path / "spec.json"
    bad.write_text("{not json")
    with pytest.raises(RubikError, match="not valid JSON"):
        rubik.create_model(str(bad))
    good = tmp_path / "good.json"
    good.write_text('{"model": {"name": "mine", "width": 0.5, "depth": 0.5, "resolution": 96}}')
    assert rubik.create_model(str(good)).spec.resolution == 96


def test_list_models_filter():
    assert rubik.list_models("tinynet_?") == [f"tinynet_{c}" for c in "abcde"]
    assert rubik.list_models("tinynet_lite_*") == [f"tinynet_lite_{c}" for c in "abcde"]
    assert "ghostnet_100" in rubik.list_models()


def test_plan_arithmetic_counts_what_the_hooks_count():
    """Twisting counts MACs by arithmetic on the plan; it must agree with counting the built model."""
    import random

    from rubik.models.ghost import GhostNet, ghost_plan_macs
    from rubik.models.mbconv import TINYNET_RULES, plan_macs

    rng = random.Random(0)
    for _ in range(15):
        w, d, r, n = rng.uniform(0.1, 2.2), rng.uniform(0.2, 2.5), rng.randint(32, 320), rng.choice([10, 1000])
        with torch.device("meta"):
            mb = MBConvNet(width=w, depth=d, rules=rng.choice([EFFICIENTNET_RULES, TINYNET_RULES]), num_classes=n)
            gh = GhostNet(width=w, depth=d, num_classes=n)
        assert plan_macs(mb.plan, r, n) == count(mb, r)[0]
        assert ghost_plan_macs(gh.plan, r, n) == count(gh, r)[0]


def test_an_unknown_model_too_long_for_a_file_name_is_the_unknown_model_error():
    """A string longer than a file name can be (a spec's repr, say) was stat()ed and raised OSError."""
    from rubik.models import get_spec
    from rubik.models.registry import UnknownModelError

    with pytest.raises(UnknownModelError, match="unknown model"):
        get_spec("x" * 5000)


def test_drop_connect_draws_and_scales_as_torchvisions_stochastic_depth():
    """rubik's DropConnect replaced torchvision's StochasticDepth('row'): the same random draws and scaling, so
    seeded training is bitwise what it was."""
    import torch
    from torchvision.ops import StochasticDepth

    from rubik.models.layers import DropConnect

    x = torch.randn(64, 4, 3, 3)
    torch.manual_seed(7)
    ours = DropConnect(0.3).train()(x)
    torch.manual_seed(7)
    theirs = StochasticDepth(0.3, "row").train()(x)
    assert torch.equal(ours, theirs)
    assert 0 < int((ours == 0).all(dim=(1, 2, 3)).sum()) < 64  # some samples dropped, not all
    assert torch.equal(DropConnect(0.3).eval()(x), x)
