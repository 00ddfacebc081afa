"""Counting, profiling and the `rubik models` / `rubik profile` commands."""

import json

import torch
from torch import nn

from rubik.cli import main
from rubik.profile import count, profile


def test_mac_count_of_a_known_network():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    macs, peak = count(model, 32)
    expected = 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 1 * 9 + 8 * 10
    assert macs == expected
    assert peak == (3 * 32 * 32 + 8 * 16 * 16) * 4  # the first conv's input and output, fp32


def test_profile_reports_everything():
    import rubik
    from rubik.cube.solve import macs_of

    model = rubik.create_model("tinynet_e")
    result = profile(model, runs=3)
    assert result.resolution == 106 and result.params == sum(p.numel() for p in model.parameters())
    assert result.macs == macs_of(model.spec)  # the hooks agree with the plan's arithmetic
    # peak activations: at least the stem convolution's fp32 input (3x106x106) and output (32x53x53)
    assert result.peak_activation_bytes >= (3 * 106 * 106 + 32 * 53 * 53) * 4
    assert result.latency_ms > 0


def test_cli_models_and_profile(capsys):
    assert main(["models", "tinynet_*"]) == 0
    out = capsys.readouterr().out
    assert "tinynet_e" in out and "efficientnet_b0" not in out and "MACs" in out
    assert main(["models", "resnet*", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == ["resnet101", "resnet18", "resnet34", "resnet50"]
    assert rows["resnet50"]["family"] == "resnet" and rows["resnet50"]["hub_id"] == "timm/resnet50.a1_in1k"
    assert abs(rows["resnet50"]["macs_m"] / rows["resnet50"]["paper_macs_m"] - 1) < 0.02
    assert main(["profile", "resnet18", "--json", "--no-latency", "--resolution", "96"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["resolution"] == 96 and abs(data["params"] / 11.69e6 - 1) < 0.01
    assert main(["profile", "tinynet_e", "--json", "--runs", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "tinynet_e" and data["resolution"] == 106 and 23e6 < data["macs"] < 26e6


def test_cli_user_errors_are_one_line(capsys):
    assert main(["profile", "tinynet_x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean" in err and "Traceback" not in err
    assert main(["profile", "tinynet_e", "--weights", "/nope.safetensors"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_meta_counting_equals_real_counting():
    import rubik

    real = rubik.create_model("ghostnet_050")
    with torch.device("meta"):
        fake = rubik.create_model("ghostnet_050")
    assert count(real, 224)[0] == count(fake, 224)[0]
