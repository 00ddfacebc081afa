"""Quantization-aware fine-tuning: the export's int8 rounding simulated in training, weights kept plain."""

import json

import pytest
import torch
from train_helpers import QUICK, TINY_SPEC, make_image_folder, rubik_cli, sets

import rubik
from rubik.classify.trained import load_classifier
from rubik.train.qat import QATConv2d, QATLinear, fake_quant_weight, load_ranges, measure_ranges, prepare_qat


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = rubik.create_model(TINY_SPEC, num_classes=5)
    for m in model.modules():  # BatchNorm statistics of the data, as in a trained model
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    return model.eval()


def test_weights_land_on_a_symmetric_per_channel_int8_grid():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3) * torch.logspace(-3, 1, 6).view(6, 1, 1, 1)
    q = fake_quant_weight(w)
    for c in range(6):
        step = w[c].abs().max() / 127
        levels = q[c] / step
        torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)  # integers x the channel's step
        assert levels.abs().max() <= 127 + 1e-3 and (q[c] - w[c]).abs().max() <= step / 2 + 1e-6
    # Per-channel symmetric rounding commutes with a per-channel scale (BatchNorm folded at export).
    scale = torch.tensor([0.5, -2.0, 3.0, 1e-3, 7.0, -0.1]).view(6, 1, 1, 1)
    torch.testing.assert_close(fake_quant_weight(w * scale), scale * fake_quant_weight(w))


def test_prepare_keeps_the_state_dict_and_simulates_int8(tiny):
    keys = list(tiny.state_dict())
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = tiny(x)
    ranges = measure_ranges(tiny, [x[:4], x[4:]])
    stem = [name for name, r in ranges.items() if r == [0.0, 0.0]]
    assert stem == ["conv_stem"]  # reads the image: stays float, as the int8 export keeps it
    # Every other layer: the min and max of what it reads over both batches, widened to include zero.
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, []).append(args[0]))
             for name, m in tiny.named_modules() if name in ranges]
    with torch.no_grad():
        tiny(x)
    for h in hooks:
        h.remove()
    for name, (lo, hi) in ranges.items():
        if name != "conv_stem":
            inputs = torch.cat([t.flatten() for t in seen[name]])
            assert (lo, hi) == pytest.approx((min(0.0, inputs.min().item()), max(0.0, inputs.max().item())),
                                             rel=1e-5, abs=1e-6), name
    quantized = prepare_qat(tiny, ranges)
    assert quantized == len(ranges) - 1
    assert isinstance(tiny.conv_stem, QATConv2d) and isinstance(tiny.classifier, QATLinear)
    assert list(tiny.state_dict()) == keys  # a QAT run's weights load into the plain model
    with torch.no_grad():
        got = tiny(x)
    err = (got - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.3  # rounded, but the same network
    tiny.train()
    loss = tiny(x).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in tiny.named_parameters() if "weight" in n)


def test_ranges_must_match_the_model(tiny, tmp_path):
    with pytest.raises(rubik.errors.RubikError, match="no range for"):
        prepare_qat(tiny, {"conv_stem": [0.0, 0.0]})
    (tmp_path / "qat.json").write_text("{not json")
    with pytest.raises(rubik.errors.RubikError, match="not a valid int8 range file"):
        load_ranges(tmp_path)
    assert load_ranges(tmp_path / "missing") is None


def test_train_qat_fine_tunes_a_run_and_resumes(tmp_path):
    data = make_image_folder(tmp_path / "data", train=12, val=4)
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY_SPEC))
    base = tmp_path / "base"
    r = rubik_cli("train", "--model", str(spec), "--data", str(data), "--out", str(base), *sets(QUICK))
    assert r.returncode == 0, r.stderr[-2000:]

    r = rubik_cli("train", "--model", str(spec), "--data", str(data), "--out", str(tmp_path / "no-init"), "--qat",
                  *sets(QUICK))
    assert r.returncode != 0 and "--qat fine-tunes trained weights" in r.stderr and "Traceback" not in r.stderr

    qat = tmp_path / "qat"
    r = rubik_cli("train", "--model", str(spec), "--data", str(data), "--out", str(qat), "--qat", "--init", str(base),
                  *sets({**QUICK, "epochs": 1, "lr": 1e-4}))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "quantization-aware" in r.stdout
    ranges = json.loads((qat / "qat.json").read_text())
    assert ranges["conv_stem"] == [0.0, 0.0] and ranges["classifier"][1] > 0
    net = load_classifier(str(qat))  # plain float weights, plain model
    assert type(net.conv_stem) is torch.nn.Conv2d

    # Resuming reads the ranges back rather than measuring them on the changed weights.
    marked = {k: [v[0], v[1] * 1.5] for k, v in ranges.items()}
    (qat / "qat.json").write_text(json.dumps(marked))
    r = rubik_cli("train", "--resume", str(qat), "--epochs", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((qat / "qat.json").read_text()) == marked
