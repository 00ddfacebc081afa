"""The run directory (rubik/run.py): runs written before the redesign load unchanged, new runs round-trip.

tests/fixtures/runs/ holds a classifier and a detector run as rubik wrote them on 2026-12-04, with their
outputs on a fixed input in expected.json (values rounded to 1e-6).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rubik.classify.trained import load_classifier
from rubik.detect.infer import load_detector
from rubik.errors import RubikError
from rubik.run import BEST_INFO_FILE, RUN_MODEL_FILE, RunDir, RunRecord, locate_weights, migrate_best

FIXTURES = Path(__file__).parent / "fixtures" / "runs"
CLS, DET = FIXTURES / "cls-2026-12-04", FIXTURES / "det-2026-12-04"
DIGITS = [str(i) for i in range(10)]


def expected(run: Path) -> tuple[dict, torch.Tensor]:
    data = json.loads((run / "expected.json").read_text())
    return data, eval(data["input"], {"torch": torch})  # the input as written, e.g. torch.linspace(...)


def raw_outputs(det: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box regression and class logits before decoding: what detect/export.py's DetectorCore computes."""
    with torch.no_grad():
        out = det.head(list(det.backbone(x).values()))
    return out["bbox_regression"], out["cls_logits"]


def test_the_classifier_run_of_2026_12_04_loads_unchanged():
    want, x = expected(CLS)
    net = load_classifier(CLS)
    with torch.no_grad():
        logits = net(x)[0]
    torch.testing.assert_close(logits, torch.tensor(want["logits"]), atol=1e-5, rtol=0)
    assert net.classes == DIGITS and net.holdout == (0.1, 0)


def test_the_detector_run_of_2026_12_04_loads_unchanged():
    want, x = expected(DET)
    det = load_detector(DET)
    boxes, logits = raw_outputs(det, x)
    assert [list(boxes.shape), list(logits.shape)] == want["shape"]
    assert boxes.sum().item() == pytest.approx(want["bbox_regression_sum"], abs=1e-4)
    assert logits.sum().item() == pytest.approx(want["cls_logits_sum"], abs=1e-4)
    first = lambda t, n: t.flatten()[:n]  # noqa: E731
    torch.testing.assert_close(first(boxes, 20), torch.tensor(want["bbox_regression_first"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(first(logits, 33), torch.tensor(want["cls_logits_first"]), atol=1e-5, rtol=0)
    assert det.classes == DIGITS and det.num_object_classes == 10


def test_old_records_read_as_they_were_trained():
    cls, det = RunDir(CLS).record, RunDir(DET).record
    assert (cls.task, cls.num_classes, cls.classes, cls.holdout) == ("classify", 10, DIGITS, (0.1, 0))
    assert "task" not in json.loads((CLS / RUN_MODEL_FILE).read_text())  # written before the key: a classifier
    assert cls.model["name"] == "fixture_tiny" and det.model["backbone"]["name"] == "fixture_tiny"
    assert (det.task, det.num_classes) == ("detect", 10)
    assert (det.model["tap16"], det.model["backbone_norm"]) == ("expansion", "ssdlite")  # stored values kept


def test_detector_specs_from_before_their_fields_get_the_values_they_were_trained_with():
    stored = json.loads((DET / RUN_MODEL_FILE).read_text())
    for key in ("tap16", "backbone_norm"):
        del stored["model"][key]
    record = RunRecord.from_dict(stored)
    assert (record.model["tap16"], record.model["backbone_norm"]) == ("stage", "model")
    assert "tap16" not in RunRecord.from_dict({**stored, "task": "classify"}).model  # only the detector's migrate


def test_old_best_json_reads_with_its_task_metric():
    cls, det = RunDir(CLS).best(), RunDir(DET).best()
    assert (cls["metric"], cls["value"], cls["top1"], cls["top5"]) == ("top1", 10.0, 10.0, 50.0)
    # detector runs kept mAP under "top1" and mAP@.5 under "top5"
    assert (det["metric"], det["value"]) == ("map", pytest.approx(0.0032489636935345355))
    assert det["map50"] == pytest.approx(0.01955321963416701) and "top1" not in det and "top5" not in det
    assert (det["weights"], det["epoch"], det["step"]) == ("ema", 1, 5) and math.isnan(det["loss"])
    assert migrate_best(det, ("map", "map50")) is det  # a new-format record passes through


def test_metrics_rows_and_epochs_done():
    cls, det = RunDir(CLS).metrics(), RunDir(DET).metrics()
    assert len(cls) == 1 and (cls[0]["epoch"], cls[0]["val_top1"], cls[0]["ema_val_top5"]) == (1, 10.0, 50.0)
    assert det[0]["ema_val_map"] == 0.0032 and math.isnan(det[0]["val_loss"])
    assert RunDir(CLS).epochs_done() == 1 and RunDir(DET / "missing").epochs_done() == 0


def test_a_new_run_round_trips(tmp_path):
    run = RunDir(tmp_path)
    spec = {**RunDir(DET).record.model, "tap16": "stage"}  # a complete spec, as DetectorSpec.to_dict() writes
    record = RunRecord("detect", spec, 2, ["cat", "dog"], (0.25, 7))
    run.write_record(record)
    assert run.is_run() and run.record == record
    assert json.loads((tmp_path / RUN_MODEL_FILE).read_text())["task"] == "detect"  # new runs always say
    best = {"metric": "map", "value": 41.5, "map": 41.5, "map50": 60.0, "loss": 3.2, "weights": "raw",
            "epoch": 4, "step": 80}
    run.write_best(best)
    assert run.best() == best and list(json.loads((tmp_path / BEST_INFO_FILE).read_text())) == list(best)
    with pytest.raises(ValueError, match="metric"):
        run.write_best({"top1": 1.0})
    assert locate_weights(tmp_path) == (tmp_path / "best.safetensors", record)


def test_a_folder_without_model_json_is_named_in_one_line(tmp_path):
    for load in (lambda: RunDir(tmp_path).record, lambda: load_classifier(tmp_path), lambda: load_detector(tmp_path)):
        with pytest.raises(RubikError, match="not a training run directory") as e:
            load()
        assert "\n" not in str(e.value) and "rubik train --out" in str(e.value) and str(tmp_path) in str(e.value)


def test_each_loader_refuses_the_other_tasks_run():
    with pytest.raises(RubikError, match="task 'detect', not a classifier"):
        load_classifier(DET)
    with pytest.raises(RubikError, match="task 'classify', not a detector"):
        load_detector(CLS)


def test_a_detector_file_with_another_anchor_layout_gets_its_class_count(tmp_path, monkeypatch):
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    import rubik.detect.model as detect_model

    # one aspect ratio per level: 2 + 2 x 1 = 4 boxes per location where the default [2, 3] makes 6
    monkeypatch.setattr(detect_model, "_anchor_generator",
                        lambda levels: DefaultBoxGenerator([[2]] * levels, min_ratio=0.2, max_ratio=0.95))
    spec = RunDir(DET).record.model
    det = detect_model.build_detector(spec, 3)
    save_file(det.state_dict(), str(tmp_path / "det.safetensors"))
    assert det.head.regression_head.module_list[0][1].out_channels == 4 * 4  # the layout is not the default
    loaded = load_detector(tmp_path / "det.safetensors", spec)
    assert loaded.num_object_classes == 3 and loaded.classes is None
    with pytest.raises(RubikError, match="--model"):
        load_detector(tmp_path / "det.safetensors")
