"""Detection: readers (COCO, VOC, embedded) and their errors, COCO mAP against pycocotools, the detectors,
and the torch-free runtime's decoding. Fast: no training here (tests/test_detect_train.py trains)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rubik.cli import main
from rubik.detect.data import AnnotationError, open_detection_data, read_coco
from rubik.detect.evaluate import coco_ground_truth, coco_map
from rubik.detect.model import DETECTORS, build_detector, get_detector_spec, is_detector
from rubik.errors import RubikError


def _image(path: Path, w: int = 64, h: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(path)


def make_coco(root: Path, split: str = "train", *, boxes=None, images=None, categories=None, write_images=True):
    """A COCO folder: root/annotations/instances_<split>.json and root/<split>/*.png."""
    images = images if images is not None else [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                                                {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
                                                {"id": 3, "file_name": "neg.png", "width": 64, "height": 48}]
    boxes = boxes if boxes is not None else [(1, 1, [4, 4, 20, 16]), (2, 1, [30, 10, 20, 30]), (2, 7, [5, 5, 10, 10])]
    categories = categories or [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog"}]
    anns = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (im, c, b) in enumerate(boxes)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    if write_images:
        for im in images:
            _image(root / split / im["file_name"], im["width"], im["height"])
    return path


def make_voc(root: Path, objects: dict[str, list[tuple[str, list[int]]]], sets: bool = True) -> None:
    (root / "Annotations").mkdir(parents=True)
    for stem, objs in objects.items():
        _image(root / "JPEGImages" / f"{stem}.jpg")
        xml = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                      f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objs)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>64</width><height>48</height><depth>3</depth>"
            f"</size>{xml}</annotation>")
    if sets:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        stems = list(objects)
        (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(stems[:-1]) + "\n")
        (root / "ImageSets" / "Main" / "val.txt").write_text(stems[-1] + "\n")


# ---- readers -------------------------------------------------------------------------------------


def test_coco_reader_train_val_negatives_and_contiguous_labels(tmp_path):
    make_coco(tmp_path, "train2017")
    make_coco(tmp_path, "val2017", boxes=[(1, 7, [1, 2, 3, 4])])
    data = open_detection_data(str(tmp_path))
    assert data.classes == ["cat", "dog"]
    assert len(data.train) == 3 and len(data.val) == 3
    by_id = {s.image_id: s for s in data.train.samples}
    assert by_id[1].boxes.tolist() == [[4, 4, 24, 20]]  # xywh -> xyxy
    assert by_id[2].labels.tolist() == [1, 2]  # category id 7 -> label 2 (1..K, 0 is background)
    assert len(by_id[3].boxes) == 0  # an image with no boxes stays, as a negative
    (image, target), meta = data.train[0]
    assert image.size == (64, 48) and target["boxes"].shape == (1, 4) and meta["size"] == (48, 64)


def test_coco_single_file_is_split_and_val_only_read_for_eval(tmp_path):
    make_coco(tmp_path, "train")
    data = open_detection_data(str(tmp_path), val_split=0.34)
    assert len(data.train) + len(data.val) == 3 and len(data.val) == 1
    make_coco(tmp_path, "val", boxes=[(1, 1, [1, 2, 3, 4])])
    only = open_detection_data(str(tmp_path), split="val", classes=["cat", "dog"])
    assert len(only.train) == 0 and len(only.val) == 3
    with pytest.raises(AnnotationError, match="differ from the model's classes"):
        open_detection_data(str(tmp_path), split="val", classes=["cat", "bird"])


def test_coco_bad_boxes_are_counted_or_fail_with_strict(tmp_path):
    boxes = [(1, 1, [4, 4, 20, 16]), (1, 1, [10, 10, 0, 5]), (2, 1, [100, 100, 10, 10]), (2, 1, [-5, 40, 20, 20])]
    make_coco(tmp_path, "train", boxes=boxes)
    samples, _, check = read_coco(tmp_path / "annotations" / "instances_train.json", tmp_path / "train")
    assert check.dropped == 2  # zero width, and entirely outside the image
    kept = {s.image_id: s.boxes.tolist() for s in samples}
    assert kept[2] == [[0, 40, 15, 48]]  # partly outside: clipped to the image
    data = open_detection_data(str(tmp_path), val_split=0.34)
    assert data.dropped == 2 and "dropped 2 boxes" in data.description and "--strict" in data.description
    with pytest.raises(AnnotationError, match=r"instances_train.json image 1 .* non-positive size; fix it"):
        open_detection_data(str(tmp_path), strict=True)


@pytest.mark.parametrize("case, message", [
    ("missing", "no annotations/instances_<split>.json in"),
    ("malformed", r"instances_train.json is not valid JSON \(Expecting"),
    ("no_images_key", "has no 'images' list"),
    ("unknown_category", "has category_id 99, which is not in its categories"),
    ("missing_image", r"image .*b.png is listed in .*instances_train.json but does not exist"),
    ("unknown_image", "refers to image_id 42"),
])
def test_coco_bad_files_give_one_line_errors(tmp_path, case, message):
    if case == "missing":
        (tmp_path / "annotations").mkdir()
    elif case == "malformed":
        path = make_coco(tmp_path)
        path.write_text(path.read_text()[:-20])
    elif case == "no_images_key":
        path = make_coco(tmp_path)
        path.write_text(json.dumps({"annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    elif case == "unknown_category":
        make_coco(tmp_path, boxes=[(1, 99, [1, 1, 5, 5])])
    elif case == "missing_image":
        make_coco(tmp_path)
        (tmp_path / "train" / "b.png").unlink()
    elif case == "unknown_image":
        make_coco(tmp_path, boxes=[(42, 1, [1, 1, 5, 5])])
    with pytest.raises(AnnotationError, match=message) as e:
        open_detection_data(str(tmp_path))
    assert "\n" not in str(e.value)


def test_bad_annotation_error_through_the_cli_is_one_line(tmp_path, capsys):
    path = make_coco(tmp_path)
    path.write_text("{not json")
    assert main(["train", "--model", "ssdlite_ghostnet_100", "--data", str(tmp_path), "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rubik train: error: annotation file") and "not valid JSON" in err
    assert len(err.splitlines()) == 1


def test_voc_reader_sets_classes_and_errors(tmp_path):
    make_voc(tmp_path / "voc", {"a": [("person", [1, 1, 20, 20])], "b": [("car", [5, 5, 30, 40]),
                                                                         ("person", [5, 6, 9, 5])], "c": []})
    data = open_detection_data(str(tmp_path / "voc"))
    assert data.classes == ["car", "person"] and len(data.train) == 2 and len(data.val) == 1
    b = data.train.samples[1]
    assert b.boxes.tolist() == [[4, 4, 30, 40]] and b.labels.tolist() == [1]  # 1-based pixels; the flat box dropped
    assert data.dropped == 1 and len(data.val.samples[0].boxes) == 0  # c.xml: a negative
    bad = tmp_path / "bad"
    make_voc(bad, {"a": [("person", [1, 1, 20, 20])]}, sets=False)
    (bad / "Annotations" / "z.xml").write_text("<annotation><object>")
    with pytest.raises(AnnotationError, match=r"VOC file .*z.xml is not valid XML"):
        open_detection_data(str(bad))
    (bad / "Annotations" / "z.xml").unlink()
    (bad / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"image .*a.jpg is named by .*a.xml but does not exist"):
        open_detection_data(str(bad))


def test_not_a_detection_folder(tmp_path):
    with pytest.raises(RubikError, match="neither a COCO folder"):
        open_detection_data(str(tmp_path))
    with pytest.raises(RubikError, match="digits:K or digits:K:N with K in 1..10"):
        open_detection_data("digits:11")


def test_embedded_set_is_deterministic_with_negatives_and_boxes_on_the_ink():
    a, b = open_detection_data("digits:3"), open_detection_data("digits:3")
    assert a.classes == ["0", "1", "2"]
    for i in (0, 5, 17):
        (ia, ta), _ = a.train[i]
        (ib, tb), _ = b.train[i]
        assert np.array_equal(np.asarray(ia), np.asarray(ib)) and torch.equal(ta["boxes"], tb["boxes"])
    labels = np.concatenate([s.labels for s in a.train.samples])
    assert set(labels.tolist()) == {1, 2, 3}
    assert 0 < sum(len(s.boxes) == 0 for s in a.train.samples) < 0.15 * len(a.train)
    # Every box is inside the image and holds ink that differs from its surroundings.
    (image, target), _ = a.train[1]
    px = np.asarray(image).astype(float)
    for x1, y1, x2, y2 in target["boxes"].round().int().tolist():
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
        assert px[y1:y2, x1:x2].std() > 10


# ---- COCO mAP ------------------------------------------------------------------------------------


def test_coco_map_matches_a_hand_computed_case_and_pycocotools_on_the_files(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path = make_coco(tmp_path, "val", boxes=[(1, 1, [10, 10, 20, 20]), (2, 7, [0, 0, 30, 30])])
    data = open_detection_data(str(tmp_path), split="val", classes=["cat", "dog"])
    gt = coco_ground_truth(data.val.samples, data.classes)
    # cat: exact; dog: a box of IoU 0.64 (matches at IoU thresholds .50 .55 .60 only).
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": 2, "category_id": 2, "bbox": [0, 0, 19.2, 30], "score": 0.8}]
    r = coco_map(gt, dets)
    assert r.per_class == pytest.approx([100.0, 30.0], abs=1e-6)
    assert r.map == pytest.approx(65.0, abs=1e-6) and r.map50 == pytest.approx(100.0, abs=1e-6)
    # The same numbers from pycocotools used the standard way, on the user's annotation file.
    coco_gt = COCO(str(path))
    file_dets = [dict(d, category_id=7 if d["category_id"] == 2 else 1) for d in dets]
    ev = COCOeval(coco_gt, coco_gt.loadRes(file_dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert r.map == pytest.approx(100 * ev.stats[0], abs=1e-6) and r.map50 == pytest.approx(100 * ev.stats[1], abs=1e-6)
    # No detections: zero, not an error; a class with no boxes in the data: NaN.
    empty = coco_map(gt, [])
    assert empty.map == 0.0
    only_cat = coco_map(coco_ground_truth(data.val.samples[:1], data.classes), dets[:1])
    assert only_cat.per_class[0] == pytest.approx(100.0) and math.isnan(only_cat.per_class[1])


# ---- detectors -----------------------------------------------------------------------------------


def test_named_detectors_and_specs(tmp_path):
    for name in ("ssdlite_ghostnet_100", "ssdlite_ghostnet_130", "ssdlite_tinynet_d", "ssdlite_efficientnet_b_3",
                 "ssdlite_mobilenet_v3_large"):
        assert name in DETECTORS and is_detector(name)
    assert is_detector("ssdlite:tinynet_e") and not is_detector("tinynet_e")
    spec_file = tmp_path / "tiny.json"
    spec_file.write_text(json.dumps({"name": "b", "width": 0.4, "depth": 0.5, "resolution": 96}))
    spec = get_detector_spec(f"ssdlite:{spec_file}")
    assert spec.backbone["width"] == 0.4 and spec.name == "ssdlite_tiny"
    det_file = tmp_path / "det.json"
    det_file.write_text(json.dumps({"detector": "ssdlite", "backbone": str(spec_file), "resolution": 128,
                                    "extra_channels": [64, 32, 32, 16]}))
    assert is_detector(str(det_file)) and get_detector_spec(str(det_file)).resolution == 128
    with pytest.raises(RubikError, match="did you mean .*ssdlite_ghostnet_100"):
        get_detector_spec("ssdlite_ghostnet_10")
    with pytest.raises(RubikError, match="unknown field"):
        get_detector_spec({"detector": "ssdlite", "backbone": "tinynet_e", "colour": 1})


def test_detector_taps_forward_and_loss():
    det = build_detector({"detector": "ssdlite", "backbone": "ghostnet_050", "resolution": 96}, 2)
    info = det.backbone.body.feature_info
    # SSDLite's stride-16 tap: the expansion (first Ghost module) of the first stride-32 bottleneck
    assert info.reduction() == [16, 32] and info.module_name() == ["blocks.7.0.expand", "blocks.9"]
    det.train()
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]  # a negative image
    losses = det(torch.rand(2, 3, 96, 96), targets)
    assert set(losses) == {"bbox_regression", "classification"} and all(torch.isfinite(v) for v in losses.values())
    det.eval()
    with torch.no_grad():
        out = det(torch.rand(1, 3, 96, 96))[0]
    assert out["boxes"].shape[1] == 4 and (out["labels"] >= 1).all() and (out["labels"] <= 2).all()


def test_mbconv_taps_and_torchvision_reference():
    det = build_detector("ssdlite_tinynet_d", 3)
    assert det.backbone.body.feature_info.channels() == [384, 176]  # 64 x 6: the expansion, as torchvision taps
    assert det.backbone.body.feature_info.module_name() == ["blocks.5.0.expand", "blocks.6"]
    stage = build_detector({"detector": "ssdlite", "backbone": "tinynet_d", "tap16": "stage"}, 3)
    assert stage.backbone.body.feature_info.module_name() == ["blocks.4", "blocks.6"]
    with pytest.raises(RubikError, match="tap16"):
        get_detector_spec({"detector": "ssdlite", "backbone": "tinynet_d", "tap16": "middle"})
    ref = build_detector("ssdlite_mobilenet_v3_large", 3)
    assert type(ref.backbone).__name__ == "SSDLiteFeatureExtractorMobileNet"  # torchvision's own, as is
    assert ref.head.classification_head.num_columns == 4


@pytest.mark.parametrize("backbone", ["ghostnet_050", "ghostnetv2_100", "tinynet_e"])
def test_expansion_tap_is_the_blocks_own_expansion(backbone):
    """The tapped map is what the classifier's own block computes there, and stride 32 is unchanged."""
    torch.manual_seed(0)
    det = build_detector({"detector": "ssdlite", "backbone": backbone, "resolution": 128}, 2).eval()
    body = det.backbone.body
    name = body.feature_info.module_name(0).removesuffix(".expand")
    block = body.get_submodule(name)
    seen = {}
    hook = (block.ghost1 if hasattr(block, "ghost1") else block.bn1).register_forward_hook(
        lambda m, a, out: seen.setdefault("expansion", out))
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        tapped = body(x)
        hook.remove()
    stage = build_detector({"detector": "ssdlite", "backbone": backbone, "resolution": 128, "tap16": "stage"}, 2)
    stage.backbone.body.load_state_dict(body.state_dict())  # the same backbone modules under the same names
    with torch.no_grad():
        plain = stage.eval().backbone.body(x)
    expansion = seen["expansion"] if hasattr(block, "ghost1") else block.act(seen["expansion"])
    assert tapped[0].shape[1] > plain[0].shape[1]
    torch.testing.assert_close(tapped[0], expansion)
    torch.testing.assert_close(tapped[1], plain[1])


def test_a_run_from_before_the_expansion_tap_still_loads(tmp_path):
    from safetensors.torch import save_file

    from rubik.detect.infer import load_detector
    from rubik.run import RUN_MODEL_FILE, RUN_WEIGHTS_FILE

    old = get_detector_spec({"detector": "ssdlite", "backbone": "ghostnet_050", "resolution": 96, "tap16": "stage"})
    det = build_detector(old, 2)
    stored = old.to_dict()
    del stored["tap16"]  # model.json as runs wrote it before the field existed
    (tmp_path / RUN_MODEL_FILE).write_text(json.dumps({"task": "detect", "model": stored, "num_classes": 2,
                                                       "classes": ["a", "b"]}))
    save_file(det.state_dict(), str(tmp_path / RUN_WEIGHTS_FILE))
    loaded = load_detector(tmp_path)
    assert loaded.backbone.body.feature_info.module_name() == ["blocks.6", "blocks.9"]


def test_pretrained_backbone_weights_load_from_a_file(tmp_path):
    from safetensors.torch import save_file

    import rubik

    src = rubik.create_model("ghostnet_050")
    for p in src.parameters():
        torch.nn.init.normal_(p)
    save_file(src.state_dict(), str(tmp_path / "in1k.safetensors"))
    det = build_detector("ssdlite_ghostnet_050", 2, backbone_weights=tmp_path / "in1k.safetensors")
    assert torch.equal(det.backbone.body.blocks[6][0].ghost1.primary_conv[0].weight,
                       src.blocks[6][0].ghost1.primary_conv[0].weight)


@pytest.mark.parametrize("name", ["ssdlite_ghostnet_050", "ssdlite_tinynet_e"])
def test_from_scratch_backbone_gets_torchvisions_ssdlite_init(name):
    """As ssdlite320_mobilenet_v3_large without backbone weights: every backbone convolution N(0, 0.03)."""
    torch.manual_seed(0)
    det = build_detector(name, 2)
    convs = [m for m in det.backbone.body.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert weights.std().item() == pytest.approx(0.03, rel=0.05) and abs(weights.mean().item()) < 1e-3
    assert all(c.bias is None or not c.bias.any() for c in convs)
    depthwise = next(c for c in convs if c.groups > 1 and c.kernel_size == (3, 3))
    assert depthwise.weight.std().item() < 0.06  # the classification init gives a 3x3 depthwise kernel std 0.47


def test_extra_layers_are_torchvisions_ssdlite_extra_blocks():
    """rubik's own extra_block/normal_init build what torchvision's private SSDLite helpers build (the oracle
    here): same keys and shapes, the same numbers drawn from the same seed, the same outputs."""
    from functools import partial

    ssdlite = pytest.importorskip("torchvision.models.detection.ssdlite")
    if not hasattr(ssdlite, "_extra_block"):
        pytest.skip("this torchvision has no private _extra_block to compare with")
    from rubik.detect.model import SSDLITE_NORM, extra_block, normal_init

    norm = partial(torch.nn.BatchNorm2d, **SSDLITE_NORM)
    torch.manual_seed(0)
    ours = torch.nn.ModuleList([extra_block(40, 512, norm), extra_block(512, 256, norm)])
    normal_init(ours)
    torch.manual_seed(0)
    theirs = torch.nn.ModuleList([ssdlite._extra_block(40, 512, norm), ssdlite._extra_block(512, 256, norm)])
    ssdlite._normal_init(theirs)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 40, 9, 9)
    ours.train(), theirs.train()
    assert torch.equal(ours[1](ours[0](x)), theirs[1](theirs[0](x)))  # stride 2 twice: 9 -> 5 -> 3
    assert ours[0](x).shape == (2, 512, 5, 5)


def _trained_like(det: torch.nn.Module) -> torch.nn.Module:
    """Running statistics and affine terms a trained model would have: BatchNorm folding must carry them."""
    g = torch.Generator().manual_seed(1)
    for m in det.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5),
                              (m.bias, -0.2, 0.2)):
                t.data.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return det.eval()


def test_ghostnet_detector_exports_in_the_ghost_layout_with_the_same_outputs(tmp_path):
    """The body in the Ghost layout (no Ghost Concats before stride 32) computes the detector's raw outputs, in
    PyTorch and in the ONNX file; other backbones, torchvision's MobileNetV3 included, export as they are."""
    import onnx

    from rubik.detect.export import DetectorCore, body_bottlenecks, export_detector

    torch.manual_seed(0)
    det = _trained_like(build_detector({"detector": "ssdlite", "backbone": "ghostnet_050", "resolution": 96}, 2))
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        ref = DetectorCore(det)(x)
        cores = {layout: DetectorCore(det, layout) for layout in ("fp32", "int8")}
        for core in cores.values():
            for want, got in zip(ref, core(x), strict=True):
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # fp32: every bottleneck before stride 32 in the layout (11 in GhostNet); int8: through the first at stride 16
    assert [len(c.layout_body.prefix.bottlenecks) for c in cores.values()] == [11, 7]
    for name in ("ssdlite_tinynet_e", "ssdlite_mobilenet_v3_large"):
        assert DetectorCore(build_detector(name, 2), "fp32").layout_body is None
    # GhostNetV2's bottlenecks look like v1's (expand/finish, Ghost modules that derive from v1's): not v1 arithmetic
    v2 = build_detector({"detector": "ssdlite", "backbone": "ghostnetv2_100", "resolution": 96}, 2)
    assert body_bottlenecks(v2.backbone.body) and DetectorCore(v2, "fp32").layout_body is None

    def concats(layout):
        path = export_detector(det, tmp_path / f"{layout}.onnx", layout=layout)
        return sum(n.op_type == "Concat" for n in onnx.load(str(path)).graph.node)

    assert concats("fp32") < concats(None) - 15  # one Concat per Ghost module before stride 32 is gone


def test_bench_times_a_detector_file(tmp_path, capsys):
    """`rubik bench det.onnx` times the file in its runtime whatever its task, with the MACs its metadata carries;
    the formats a detector has no graph for say so."""
    from rubik.deploy.pipeline import export
    from rubik.detect.export import DetectorExport, export_detector
    from rubik.detect.model import detector_macs_params

    det = _trained_like(build_detector({"detector": "ssdlite", "backbone": "tinynet_e", "resolution": 64}, 2))
    path = export_detector(det, tmp_path / "det.onnx")
    assert main(["bench", str(path), "--runs", "3", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["backend"] == "file" and row["model"] == "det.onnx" and row["median_ms"] > 0
    assert row["macs"] == detector_macs_params(det)[0] > 0
    with pytest.raises(RubikError, match="exports to onnx or executorch, not ncnn"):
        export(DetectorExport(det), tmp_path / "det", format="ncnn")


def test_backbone_norm_defaults_to_torchvisions_ssdlite_batchnorm_and_old_runs_keep_theirs(tmp_path):
    from safetensors.torch import save_file

    from rubik.detect.infer import load_detector
    from rubik.run import RUN_MODEL_FILE, RUN_WEIGHTS_FILE

    def backbone_bns(det):
        return [m for m in det.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    spec = {"detector": "ssdlite", "backbone": "ghostnet_050", "resolution": 96}
    assert all((m.eps, m.momentum) == (0.001, 0.03) for m in backbone_bns(build_detector(spec, 2)))
    assert all((m.eps, m.momentum) == (0.001, 0.03) for m in backbone_bns(build_detector("ssdlite_tinynet_e", 2)))
    classifier_norm = {**spec, "backbone_norm": "model"}
    assert all((m.eps, m.momentum) == (1e-5, 0.1) for m in backbone_bns(build_detector(classifier_norm, 2)))
    with pytest.raises(RubikError, match="backbone_norm"):
        get_detector_spec({**spec, "backbone_norm": "torchvision"})
    stored = get_detector_spec(classifier_norm).to_dict()
    del stored["backbone_norm"]  # model.json as runs wrote it before the field existed: they trained with "model"
    (tmp_path / RUN_MODEL_FILE).write_text(json.dumps({"task": "detect", "model": stored, "num_classes": 2}))
    save_file(build_detector(classifier_norm, 2).state_dict(), str(tmp_path / RUN_WEIGHTS_FILE))
    assert all(m.eps == 1e-5 for m in backbone_bns(load_detector(tmp_path)))
