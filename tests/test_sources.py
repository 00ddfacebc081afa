"""rubik.sources: every kind of data argument resolves, anything else is a one-line error naming the fix, and
the training defaults per (source, task) are the values the trainer used before the table existed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rubik.deploy.images import open_images
from rubik.detect.data import open_detection_data
from rubik.errors import RubikError
from rubik.sources import COCO, DIGITS, EMBEDDED, FOLDER, VOC, NoImagesError, loader_workers, resolve, train_defaults
from rubik.train.data import class_count, open_data, open_eval_split
from rubik.train.recipes import build_config


def _png(path: Path, w: int = 32, h: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def _classes(root: Path, classes=("cat", "dog"), n: int = 3) -> Path:
    for c in classes:
        for i in range(n):
            _png(root / c / f"{i}.png")
    return root


def _coco(root: Path, split: str = "train") -> Path:
    images = [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 24} for i in (1, 2, 3)]
    anns = [{"id": i, "image_id": i, "category_id": 5, "bbox": [2, 2, 10, 8], "area": 80, "iscrowd": 0} for i in (1, 2)]
    for im in images:
        _png(root / split / im["file_name"])
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 5, "name": "box"}]}))
    return path


def _voc(root: Path) -> Path:
    (root / "Annotations").mkdir(parents=True)
    for stem in ("a", "b", "c"):
        _png(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>32</width><height>24</height></size><object>"
            "<name>box</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>12</xmax><ymax>10</ymax></bndbox></object>"
            "</annotation>")
    return root


# ---- each kind resolves --------------------------------------------------------------------------------------


def test_the_embedded_sets_resolve_by_task():
    assert (resolve("digits").kind, resolve("digits", "images").kind) == (DIGITS, DIGITS)
    det = resolve("digits", "detect")
    assert (det.kind, det.num_classes, det.count, det.embedded) == (EMBEDDED, 10, 1200, True)
    det = resolve("digits:3:50", "detect")
    assert (det.kind, det.num_classes, det.count) == (EMBEDDED, 3, 50)
    data = open_detection_data("digits:3:50")
    assert (data.classes, len(data.train), len(data.val)) == (["0", "1", "2"], 50, 20)


def test_image_folders_resolve_flat_or_split_and_count_their_classes(tmp_path):
    flat = _classes(tmp_path / "flat")
    split = tmp_path / "split"
    _classes(split / "train", ("a", "b", "c"))
    _classes(split / "val", ("a", "b", "c"), n=1)
    for root in (flat, split):
        src = resolve(str(root))
        assert (src.kind, src.root, src.embedded) == (FOLDER, root, False)
    assert (class_count(str(flat)), class_count(str(split)), class_count("digits")) == (2, 3, 10)
    assert len(open_data(str(split), 16).val) == 3  # val/ is the validation split
    loose = tmp_path / "loose"  # an unlabelled tree is images (calibration), not a classifier's data
    _png(loose / "a.png")
    _png(loose / "x" / "y" / "b.png")
    assert resolve(loose, "images").kind == FOLDER and open_images(loose).labels is None


def test_the_eval_split_is_what_training_validated_on_and_what_deploy_checks(tmp_path):
    assert len(open_eval_split("digits", 16)) == 360
    flat = _classes(tmp_path / "flat", n=10)
    held = open_eval_split(str(flat), 16, (0.2, 3))
    assert held.samples == open_data(str(flat), 16, val_split=0.2, seed=3).val.samples and len(held) == 4
    assert [p for p, _ in held.samples] == open_images(flat, "test", (0.2, 3)).images
    only = tmp_path / "only"  # an evaluation folder alone is scored whole
    _classes(only / "test", n=2)
    assert [t for _, t in open_eval_split(str(only), 16).samples] == [0, 0, 1, 1]


def test_coco_folder_and_a_coco_file_resolve(tmp_path):
    path = _coco(tmp_path / "coco")
    assert resolve(tmp_path / "coco", "detect") == resolve(str(tmp_path / "coco"), "detect")
    assert (resolve(tmp_path / "coco", "detect").kind, resolve(tmp_path / "coco", "detect").annotation) == (COCO, None)
    one = resolve(path, "detect")
    assert (one.kind, one.root, one.annotation) == (COCO, tmp_path / "coco", path)
    _coco(tmp_path / "coco", "val")  # the folder now has two splits; the file given still names one
    data = open_detection_data(str(path), val_split=0.34)
    assert str(path) in data.description and (len(data.train), len(data.val)) == (2, 1)
    assert len(open_detection_data(str(tmp_path / "coco")).train) == 3  # the folder: train/ and val/ both


def test_voc_folder_resolves(tmp_path):
    src = resolve(_voc(tmp_path / "voc"), "detect")
    assert (src.kind, src.root) == (VOC, tmp_path / "voc")
    assert open_detection_data(str(tmp_path / "voc")).classes == ["box"]


# ---- anything else: one line that names the problem and the fix ----------------------------------------------


def _error(source, task="classify", kind=RubikError) -> str:
    with pytest.raises(kind) as e:
        resolve(source, task)
    message = str(e.value)
    assert "\n" not in message and str(source) in message
    return message


def test_bad_sources_are_one_line_errors(tmp_path):
    missing = tmp_path / "nope"
    for task in ("classify", "detect", "images"):
        assert str(missing) in _error(missing, task, NoImagesError) and "does not exist" in _error(missing, task)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no pictures")
    assert "no images found" in _error(tmp_path / "empty", "classify", NoImagesError)
    assert "calibration images" in _error(tmp_path / "empty", "images", NoImagesError)
    assert "is a file" in _error(tmp_path / "empty" / "cat" / "notes.txt")
    assert "neither a COCO folder" in _error(_classes(tmp_path / "cls"), "detect")
    _coco(tmp_path / "coco")
    assert "COCO detection folder" in _error(tmp_path / "coco")
    assert "VOC detection folder" in _error(_voc(tmp_path / "voc"))
    assert "is a file" in _error(tmp_path / "coco" / "annotations" / "instances_train.json")  # JSON: detection only
    assert "embedded detection set" in _error("digits:3") and "embedded detection set" in _error("digits:3", "images")
    for bad in ("digits:0", "digits:11", "digits:3:5", "digits:x", "digits:1:20:3"):
        assert "digits:K:N with K in 1..10" in _error(bad, "detect")
    with pytest.raises(RubikError, match="unknown data use 'segment'; choose one of classify, detect, images$"):
        resolve("digits", "segment")


def test_an_unreadable_folder_is_named(tmp_path, monkeypatch):
    root = _classes(tmp_path / "data", ("cat",))
    (root / "dog").mkdir()  # no images: the walk must look into cat/, which it may not read
    real = os.scandir

    def scandir(path="."):  # what chmod 0 does for a user who is not root
        if Path(path).name == "cat":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert _error(root) == f"data folder {root / 'cat'} is not readable (permission denied); fix its permissions"


def test_every_opener_goes_through_the_resolver(tmp_path):
    """The classifier's, the calibration images' and the detector's openers give the resolver's errors."""
    coco = tmp_path / "coco"
    _coco(coco)
    with pytest.raises(RubikError, match="COCO detection folder"):
        open_data(str(coco), 32)
    with pytest.raises(RubikError, match="COCO detection folder"):
        class_count(str(coco))
    with pytest.raises(RubikError, match="embedded detection set"):
        open_images("digits:2")
    with pytest.raises(RubikError, match="neither a COCO folder"):
        open_detection_data(str(_classes(tmp_path / "cls")))


# ---- defaults per (source, task): the values the trainer used before ------------------------------------------


DETECT = {"label_smoothing": 0.0, "drop_rate": 0.0, "crop_pct": 1.0, "crop_scale": [0.3, 1.0], "color_jitter": 0.4,
          "hflip": 0.5}


@pytest.mark.parametrize("source,task,expected", [
    ("digits", "classify", {"resolution": 64, "hflip": 0.0, "crop_scale": [0.8, 1.0], "crop_pct": 1.0,
                            "warmup_epochs": 3.0, "num_workers": 0}),
    ("/data/cifar10", "classify", {}),
    ("digits:3", "classify", {}),  # not the classifier's digits (and resolve refuses it)
    ("digits", "detect", {**DETECT, "hflip": 0.0, "num_workers": 0, "resolution": 160}),
    ("digits:3:400", "detect", {**DETECT, "hflip": 0.0, "num_workers": 0, "resolution": 160}),
    ("/data/coco", "detect", DETECT),
])
def test_train_defaults_are_the_values_used_before(source, task, expected):
    assert train_defaults(source, task) == expected
    assert train_defaults(Path(source) if source.startswith("/") else source, task) == expected


def test_train_defaults_reach_the_config_and_are_copies():
    c = build_config(data_defaults=train_defaults("digits"), cli_values={})
    assert (c.resolution, c.hflip, c.crop_scale, c.warmup_epochs, c.num_workers) == (64, 0.0, [0.8, 1.0], 3.0, 0)
    train_defaults("digits", "detect")["crop_scale"].append(9)
    assert train_defaults("digits", "detect")["crop_scale"] == [0.3, 1.0]
    assert train_defaults(resolve("digits"), "classify")["resolution"] == 64
    with pytest.raises(RubikError, match="'classify' and 'detect'"):
        train_defaults("digits", "images")


def test_loader_workers_none_for_the_embedded_sets(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert (loader_workers("digits"), loader_workers("digits:3"), loader_workers("/data/cifar10")) == (0, 0, 8)
    assert loader_workers("digits", 3) == 3 and loader_workers("/data/cifar10", 0) == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert loader_workers("/data/cifar10") == 1
