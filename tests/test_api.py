"""The Python API as the README shows it, for a classifier and a detector: twist, train, load_run,
evaluate, predict, export; create_model and profile take detectors; every command that takes a model
also takes a run directory. Short runs: the point is that each call does what the command does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import rubik
from rubik.cli import main

QUICK = dict(steps_per_epoch=6, batch_size=32, ema_decay=0.0, num_workers=0, log_every=0)


@pytest.fixture(scope="module")
def digits_png(tmp_path_factory) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    path = tmp_path_factory.mktemp("img") / "seven.png"
    Image.fromarray((d.images[7] * 255 / 16).astype(np.uint8)).resize((64, 64)).convert("RGB").save(path)
    return path


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory) -> rubik.Run:
    torch.set_num_threads(2)
    spec = rubik.twist("efficientnet_b0", ratio=0.25)
    out = tmp_path_factory.mktemp("cls") / "runs" / "d"
    return rubik.train(spec, data="digits", epochs=1, out=out, resolution=32, **QUICK)


def test_twist_meets_the_budget_and_names_its_numbers():
    spec = rubik.twist("efficientnet_b0", flops="100M")
    assert abs(spec.macs / 100e6 - 1) < 0.01
    assert spec.spec.resolution < 224 and "MACs" in str(spec)
    with pytest.raises(rubik.RubikError, match="exactly one budget"):
        rubik.twist("efficientnet_b0", flops="100M", ratio=0.5)


def test_classifier_train_load_evaluate_predict(classifier_run, digits_png):
    run = rubik.load_run(classifier_run.path)
    assert run.task == "classify" and run.record.num_classes == 10
    metrics = run.evaluate()
    assert set(metrics) >= {"top1", "top5", "loss", "images"} and metrics["images"] > 300
    assert metrics["top1"] == pytest.approx(json.loads((run.path / "best.json").read_text())["top1"], abs=1e-6) \
        or metrics["images"] != run.evaluate(data="digits")["images"]
    (pred,) = run.predict(digits_png)
    assert pred["top"][0]["class"] in [str(i) for i in range(10)] and len(pred["top"]) == 5


def test_classifier_export_int8(classifier_run, tmp_path):
    result = rubik.load_run(classifier_run.path).export(tmp_path / "m.onnx", int8=True, calib="digits", calib_n=64,
                                                        eval_n=200, max_drop=100.0)
    assert Path(result.path).is_file() and (tmp_path / "m.fp32.onnx").is_file()
    from rubik.deploy.runtime import Classifier

    assert [n for n, _ in Classifier(result.path).topk(np.zeros((32, 32, 3), np.uint8), k=10)] != []
    assert result.int8 is not None and 0 <= result.int8.drop <= 100.0


def test_commands_take_a_run_directory(classifier_run, capsys):
    assert main(["profile", str(classifier_run.path), "--no-latency", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == classifier_run.record.model["name"] and out["resolution"] == 32


def test_detectors_are_models(capsys):
    det = rubik.create_model("ssdlite_tinynet_e", num_classes=3)
    assert det.num_object_classes == 3
    p = rubik.profile("ssdlite_tinynet_e", measure_latency=False)
    assert p.macs == sum(part.macs for part in p.parts.values())
    assert main(["models", "ssdlite_*", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert "ssdlite_tinynet_e" in names and "ssdlite_mobilenet_v3_large" in names


def test_detector_train_evaluate_predict_export(tmp_path, digits_png):
    spec = {"detector": "ssdlite", "name": "det_api", "resolution": 64, "extra_channels": [32, 32, 16, 16],
            "backbone": {"name": "tiny", "family": "ghostnet", "width": 0.3, "depth": 0.3}}
    run = rubik.train(spec, data="digits:2:64", epochs=1, out=tmp_path / "det", batch_size=8, crop_scale=[1.0, 1.0],
                      color_jitter=0.0, num_workers=0, ema_decay=0.0, log_every=0)
    assert rubik.load_run(run.path).task == "detect"
    metrics = run.evaluate()
    assert set(metrics) >= {"map", "map50", "images"}
    (pred,) = run.predict(digits_png, min_score=0.0, out=tmp_path / "boxes.png")
    assert isinstance(pred["boxes"], list) and (tmp_path / "boxes.png").is_file()
    result = run.export(tmp_path / "det.pte", format="executorch")
    from rubik.deploy.runtime import Detector

    boxes = Detector(result.path).detect(np.zeros((64, 64, 3), np.uint8))
    assert isinstance(boxes, list)


def test_twist_and_train_take_a_run_directory_as_the_architecture(classifier_run):
    record = classifier_run.record
    twisted = rubik.twist(classifier_run.path, ratio=0.5)
    assert twisted.base.name == record.model["name"] and abs(twisted.error) < 0.01
    assert rubik.train_config(classifier_run.path).model == record.model
    with pytest.raises(rubik.RubikError, match="did you mean 'epochs'"):
        rubik.train(classifier_run.path, epoch=3)


def test_twist_command_takes_a_detector_and_its_spec_is_a_model(tmp_path, capsys):
    out = tmp_path / "det.json"
    assert main(["twist", "--base", "ssdlite_tinynet_e", "--flops", "150M", "--no-latency", "--out", str(out),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert abs(printed["twist"]["macs"] / 150e6 - 1) < 0.01 and "detector" in printed["model"]
    det = rubik.create_model(str(out), num_classes=80)  # the file is a --model, of the detection task
    assert det.spec.name == printed["model"]["name"]
    assert abs(rubik.profile(det, measure_latency=False).macs / 150e6 - 1) < 0.01
    assert main(["twist", "--base", "ssdlite_tinynet_e", "--flops", "1M", "--no-latency"]) == 2
    assert "M MACs" in capsys.readouterr().err  # the feasible range, in one line


def test_api_names_that_are_also_packages_stay_importable():
    """rubik.train, rubik.search and rubik.profile are the API's functions and rubik's modules of those names:
    calling them runs the API, and their submodules import as before (a plain function there broke
    `import rubik.search.study as s`)."""
    import rubik.search.study as study_module
    import rubik.train.trainer as trainer_module
    from rubik.profile import count

    assert callable(rubik.train) and callable(rubik.search) and callable(rubik.profile)
    assert study_module.__name__ == "rubik.search.study" and trainer_module.__name__ == "rubik.train.trainer"
    assert rubik.profile("tinynet_e", measure_latency=False).macs == count(rubik.create_model("tinynet_e"), 106)[0]
    with pytest.raises(rubik.RubikError, match="unknown training option"):
        rubik.train("tinynet_e", data="digits", epoch=1)
