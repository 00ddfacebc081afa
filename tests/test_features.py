"""features_only: the maps at strides 2..32 equal timm's features_only maps, with the same weights."""

import pytest
import torch
from safetensors.torch import save_file

import rubik
from rubik.errors import RubikError
from rubik.models import FAMILIES, MODELS

# ghostnetv2_100 joins once its family is registered (rubik/models/ghostnetv2.py); the case skips until then.
TIMM_CASES = ["tinynet_a", "efficientnet_b0", "efficientnet_lite0", "ghostnet_100", "resnet50", "ghostnetv2_100"]


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


@pytest.mark.parametrize("name", TIMM_CASES)
def test_maps_equal_timms(name, timm, tmp_path, randomize_bn):
    if name not in MODELS:
        pytest.skip(f"{name} is not registered yet")
    torch.manual_seed(0)
    full = timm.create_model(name).eval()
    randomize_bn(full)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    theirs = timm.create_model(name, features_only=True, pretrained=True,
                               pretrained_cfg_overlay={"file": str(path)}).eval()
    ours = rubik.create_model(name, features_only=True, weights=path).eval()
    assert ours.feature_info.channels() == theirs.feature_info.channels()
    assert ours.feature_info.reduction() == theirs.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert ours.feature_info.module_name() == theirs.feature_info.module_name()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert len(a) == len(b) == 5
    for mine, ref in zip(a, b, strict=True):
        assert mine.shape == ref.shape and (mine - ref).abs().max().item() < 1e-4
    # the head and classifier are not part of the backbone (nothing after the stride-32 tap)
    keys = set(ours.state_dict())
    assert not any(k.startswith(("classifier.", "fc.", "conv_head.")) for k in keys)


def test_out_indices_select_maps_like_timm():
    model = rubik.create_model("tinynet_e", features_only=True, out_indices=(1, 3, -1)).eval()
    assert model.feature_info.reduction() == [4, 16, 32]
    maps = model(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    assert [64 // m.shape[-1] for m in maps] == [4, 16, 32]
    # stopping at stride 8 drops the later stages
    early = rubik.create_model("tinynet_e", features_only=True, out_indices=(0, 2))
    assert not any(k.startswith("blocks.3") for k in early.state_dict())
    with pytest.raises(RubikError, match="out_indices"):
        rubik.create_model("tinynet_e", features_only=True, out_indices=(5,))
    with pytest.raises(RubikError, match="features_only"):
        rubik.create_model("tinynet_e", out_indices=(1,))


def test_twisted_specs_and_every_family_give_five_strides(tmp_path):
    from rubik.cube.twist import Twister

    twisted = Twister("ghostnet_100").to_ratio(0.3).spec
    specs = [twisted.to_dict(), {"name": "m", "width": 0.4, "depth": 0.5, "resolution": 64}]
    specs += [next(s for s in MODELS.values() if s.family == f) for f in FAMILIES]
    for spec in specs:
        model = rubik.create_model(spec, features_only=True).eval()
        maps = model(torch.randn(1, 3, 64, 64))
        assert [64 // m.shape[-1] for m in maps] == [2, 4, 8, 16, 32], spec
        assert [m.shape[1] for m in maps] == model.feature_info.channels(), spec


def test_features_load_a_trained_classifier_with_another_class_count(tmp_path):
    trained = rubik.create_model("tinynet_e", num_classes=3)
    path = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(path))
    model = rubik.create_model("tinynet_e", features_only=True, weights=path)
    assert torch.equal(model.blocks[2][0].conv_dw.weight, trained.blocks[2][0].conv_dw.weight)
