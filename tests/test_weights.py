"""Weights from files: round trips, head replacement, and refusing bad or unsafe files."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

import rubik
from rubik.models.weights import WeightsError


@pytest.fixture
def trained(randomize_bn):
    torch.manual_seed(1)
    model = rubik.create_model("tinynet_e").eval()
    randomize_bn(model)
    return model


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_round_trip(tmp_path, trained, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(trained.state_dict(), str(path))
    else:
        torch.save({"state_dict": trained.state_dict(), "epoch": 3}, path)
    loaded = rubik.create_model("tinynet_e", weights=path).eval()
    x = torch.randn(1, 3, 106, 106)
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))


def test_other_num_classes_loads_all_but_classifier(tmp_path, trained):
    path = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(path))
    model = rubik.create_model("tinynet_e", num_classes=10, weights=path)
    assert model.classifier.out_features == 10
    assert torch.equal(model.conv_head.weight, trained.conv_head.weight)
    assert torch.equal(model.blocks[3][0].conv_dw.weight, trained.blocks[3][0].conv_dw.weight)


def test_ddp_prefix_and_thop_counters_are_tolerated(tmp_path, trained):
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}
    state["module.total_ops"] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    model = rubik.create_model("tinynet_e", weights=path)
    assert torch.equal(model.conv_stem.weight, trained.conv_stem.weight)


def test_mismatched_architecture_is_a_clear_error(tmp_path, trained):
    path = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(path))
    with pytest.raises(WeightsError, match="does not fit model tinynet_a"):
        rubik.create_model("tinynet_a", weights=path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file_is_a_clear_error(tmp_path, trained, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(trained.state_dict(), str(path))
    else:
        torch.save(trained.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt|truncated"):
        rubik.create_model("tinynet_e", weights=path)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match="corrupt|truncated|readable"):
        rubik.create_model("tinynet_e", weights=path)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/rubik-pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": Exploit()}}, path)
    with pytest.raises(WeightsError, match="refused"):
        rubik.create_model("tinynet_e", weights=path)
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(WeightsError):
        rubik.create_model("tinynet_e", weights=plain)


def test_missing_file():
    with pytest.raises(WeightsError, match="does not exist"):
        rubik.create_model("tinynet_e", weights="/nonexistent/w.safetensors")


def test_pretrained_offline_says_how_to_pass_a_file(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError, match="weights="):
        rubik.create_model("tinynet_a", pretrained=True)
    with pytest.raises(WeightsError, match="no official pretrained weights"):
        rubik.create_model("ghostnet_130", pretrained=True)


def test_pretrained_loads_what_the_hub_returns(monkeypatch, tmp_path, trained):
    path = tmp_path / "model.safetensors"
    save_file(trained.state_dict(), str(path))
    calls = []

    def fake(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    model = rubik.create_model("tinynet_e", pretrained=True)
    assert calls == [("timm/tinynet_e.in1k", "model.safetensors")]
    assert torch.equal(model.conv_stem.weight, trained.conv_stem.weight)


def test_load_classifier_from_run_dir_and_from_file(tmp_path, trained):
    import json

    from rubik.classify.trained import load_classifier
    from rubik.errors import RubikError

    small = rubik.create_model("tinynet_e", num_classes=3).eval()
    run = tmp_path / "run"
    run.mkdir()
    save_file(small.state_dict(), str(run / "best.safetensors"))
    (run / "model.json").write_text(json.dumps({"model": small.spec.to_dict(), "num_classes": 3,
                                                "classes": ["a", "b", "c"]}))
    loaded = load_classifier(run)
    assert loaded.classes == ["a", "b", "c"] and loaded.classifier.out_features == 3
    assert torch.equal(loaded.conv_stem.weight, small.conv_stem.weight)
    from_file = load_classifier(run / "best.safetensors", model="tinynet_e")
    assert from_file.classifier.out_features == 3
    with pytest.raises(WeightsError, match="--model"):
        load_classifier(run / "best.safetensors")
    with pytest.raises(RubikError, match="not a training run"):
        load_classifier(tmp_path)
