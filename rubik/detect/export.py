"""Detector -> ONNX: backbone and head in the graph, decoding and NMS in the runtime.

The graph maps a 1x3xRxR normalised image to SSD's raw outputs, `bbox_regression` (1 x A x 4 offsets
from the A default boxes) and `cls_logits` (1 x A x (K + 1), class 0 the background). Decoding,
softmax, per-class thresholds, top-k and NMS run in `rubik.deploy.runtime.Detector` (numpy), with
torchvision SSD's rules; the default boxes and settings travel in the file's metadata. Why there and
not in the graph: int8 then covers exactly the backbone and head (the arithmetic that costs), and
box decoding stays float in every precision; ONNX NMS would also tie the file to runtimes that have it.

`verify_detector` checks the file against PyTorch twice: the raw outputs on the same inputs, and the
final boxes of `Detector` against torchvision's SSD (same labels, IoU > 0.99, scores within 1e-3):
every one of the best 20 boxes per image, and 98 % of all above the score threshold.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RubikError

OUTPUT_NAMES = ["bbox_regression", "cls_logits"]
TOP_BOXES = 20  # per image, the runtime must reproduce each of PyTorch's best boxes


class SplitGhostBody(nn.Module):
    """A GhostNet detector body whose first `blocks` bottlenecks run split (`deploy.layout`), for float export.

    The same function as the body (`ExpansionTaps`), without the Concats and layout conversions that cost
    ONNX Runtime's float kernels on x86; the split ends before the stride-32 stage, where both taps are.
    """

    def __init__(self, body: nn.Module, blocks: int | None = None, block: int = 16):
        super().__init__()
        from ..deploy.layout import SplitGhostPrefix

        self.start = body._steps.index(body._stage)
        bottlenecks = self.bottlenecks(body)
        blocks = len(bottlenecks) if blocks is None else min(blocks, len(bottlenecks))
        self.prefix = SplitGhostPrefix(body.conv_stem, body.bn1, bottlenecks[:blocks], block)
        self.rest = nn.Sequential(*bottlenecks[blocks:])
        self.body = body

    @staticmethod
    def bottlenecks(body: nn.Module) -> list[nn.Module]:
        """The body's bottlenecks before the stride-32 stage, in order."""
        steps = body._steps[:body._steps.index(body._stage)]
        return [b for step in steps if step.startswith("blocks.") for b in body._module(step)]

    @staticmethod
    def applies(body: nn.Module) -> bool:
        """A GhostNet body tapped at the expansion, whose steps before the stride-32 stage are stem and blocks."""
        from ..models.ghost import GhostBottleneck
        from .model import ExpansionTaps

        if not isinstance(body, ExpansionTaps) or getattr(body.spec, "family", None) != "ghostnet":
            return False
        steps = body._steps[:body._steps.index(body._stage)]
        blocks = [s for s in steps if s.startswith("blocks.")]
        return (steps == ["conv_stem", "bn1", "act1", *blocks] and isinstance(body.act1, nn.ReLU)
                and all(isinstance(b, GhostBottleneck) for b in SplitGhostBody.bottlenecks(body)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(self.rest(self.prefix(x)), start=self.start)


def split_body(det: nn.Module, split: str | None) -> SplitGhostBody | None:
    """The split body `export_detector(split=...)` exports ("fp32": every bottleneck before stride 32 split,
    "int8": those the int8 file keeps in float), or None for no split or a body that is not a GhostNet's."""
    from ..deploy.layout import int8_split_count

    if split not in (None, "fp32", "int8"):
        raise RubikError(f"split must be 'fp32', 'int8' or None, got {split!r}")
    body = getattr(det.backbone, "body", None)  # torchvision's own MobileNetV3 extractor has none
    if split is None or not SplitGhostBody.applies(body):
        return None
    blocks = None if split == "fp32" else int8_split_count(SplitGhostBody.bottlenecks(body))
    return SplitGhostBody(body.eval(), blocks)


class DetectorCore(nn.Module):
    """Backbone + extra layers + SSDLite head of a torchvision SSD: what the ONNX graph computes.

    `split` ("fp32" or "int8", as `deploy.export.export_onnx`) runs a GhostNet body split (`SplitGhostBody`).
    """

    def __init__(self, det: nn.Module, split: str | None = None):
        super().__init__()
        self.backbone, self.head = det.backbone, det.head
        self.split = split_body(det, split)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x) if self.split is None else self.backbone.extend(self.split(x))
        out = self.head(list(feats.values()))
        return out["bbox_regression"], out["cls_logits"]


def default_boxes(det: nn.Module) -> torch.Tensor:
    """The SSD's default boxes (A x 4, x1 y1 x2 y2 in input pixels), from its own DefaultBoxGenerator."""
    from torchvision.models.detection.image_list import ImageList

    r = det.spec.resolution
    x = torch.zeros(1, 3, r, r)
    with torch.no_grad():
        was = det.training
        det.eval()
        feats = list(det.backbone(x).values())
        det.train(was)
    return det.anchor_generator(ImageList(x, [(r, r)]), feats)[0]


def detector_metadata(det: nn.Module) -> dict[str, str]:
    from ..deploy.runtime import META_CLASSES, META_DETECTOR, META_MODEL, META_PRECISION, META_PREPROCESS, Preprocess

    spec = det.spec
    anchors = default_boxes(det).numpy().astype("<f4")
    settings = {"resolution": spec.resolution, "resize": "stretch", "box_weights": list(det.box_coder.weights),
                "bbox_xform_clip": float(det.box_coder.bbox_xform_clip), "score_thresh": det.score_thresh,
                "nms_thresh": det.nms_thresh, "topk_candidates": det.topk_candidates,
                "detections_per_img": det.detections_per_img, "num_classes": det.num_object_classes,
                "anchors": base64.b64encode(anchors.tobytes()).decode()}
    # crop_pct 1 and bilinear: what deploy's calibration reads; the runtime itself stretches to R x R.
    pre = Preprocess(spec.resolution, 1.0, "bilinear", tuple(spec.mean), tuple(spec.std))
    meta = {META_PREPROCESS: pre.to_json(), META_DETECTOR: json.dumps(settings), META_PRECISION: "fp32",
            META_MODEL: json.dumps(spec.to_dict())}
    if det.classes:
        meta[META_CLASSES] = json.dumps(list(det.classes))
    return meta


def export_detector(det: nn.Module, path: str | Path, opset: int = 18, split: str | None = "fp32") -> Path:
    """Write the detector's backbone + head as ONNX (BatchNorm folded) with the runtime's metadata.

    `split`: a GhostNet body runs split (`SplitGhostBody`): "fp32" every bottleneck before stride 32,
    "int8" those the int8 file keeps in float (as `deploy.export.export_onnx`), None none.
    """
    import onnx

    from ..deploy.export import fold_batchnorm, set_metadata

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    det = det.eval()
    core = fold_batchnorm(DetectorCore(det, split))
    r = det.spec.resolution
    tmp = path.with_name(path.name + ".partial")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as log:
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(core, (torch.randn(1, 3, r, r),), str(tmp), input_names=["input"],
                              output_names=OUTPUT_NAMES, opset_version=opset, dynamo=True, external_data=False,
                              verbose=False)
        except Exception as e:
            tmp.unlink(missing_ok=True)
            tail = " ".join(log.getvalue().split()[-30:])
            raise RubikError(f"ONNX export of detector {det.spec.name} failed: {type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]} {tail[:200]}") from e
    model = onnx.load(str(tmp))
    set_metadata(model, **detector_metadata(det))
    model.producer_name = "rubik"
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    tmp.replace(path)  # atomic: an interrupted export never leaves a half-written det.onnx
    return path


@dataclass
class DetectorVerification:
    images: int
    max_abs_diff: float  # raw outputs, ONNX vs PyTorch
    tolerance: float
    boxes: int  # final detections compared (PyTorch's, score >= min_score)
    matched: int  # of them, found in the runtime's output (same label, IoU > 0.99, score within 1e-3)

    def __str__(self) -> str:
        return (f"verified on {self.images} images: raw outputs max |diff| {self.max_abs_diff:.2e} (tolerance "
                f"{self.tolerance:.1e}); {self.matched}/{self.boxes} PyTorch boxes reproduced by the runtime")


class DetectorMismatchError(RubikError):
    """The exported detector computes other boxes than PyTorch."""


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-12)


def torch_detections(det: nn.Module, image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torchvision SSD's boxes (in the image's pixels), scores and labels for one PIL image."""
    from .data import eval_transform

    r = det.spec.resolution
    with torch.no_grad():
        out = det.eval()(eval_transform(r)(image).unsqueeze(0))[0]
    scale = np.array([image.width / r, image.height / r] * 2, dtype=np.float32)
    return out["boxes"].numpy() * scale, out["scores"].numpy(), out["labels"].numpy()


def verify_detector(det: nn.Module, path: str | Path, images: list, min_score: float = 0.05,
                    rtol: float = 1e-3, atol: float = 1e-4) -> DetectorVerification:
    """Raise unless the file's raw outputs and the runtime's final boxes match PyTorch on `images` (PIL)."""
    from ..deploy.runtime import Detector

    runtime = Detector(path)
    core = DetectorCore(det.eval())
    worst, tol, total, matched, top_missed = 0.0, 0.0, 0, 0, 0
    for image in images:
        pixels, size = runtime.resize(image)
        x = runtime.preprocess.normalise(pixels)
        with torch.no_grad():
            ref = [t[0].numpy() for t in core(torch.from_numpy(x))]
        got = runtime.raw(x)
        for g, r in zip(got, ref, strict=True):
            worst = max(worst, float(np.abs(g - r).max()))
            tol = max(tol, atol + rtol * float(np.abs(r).max()))
        boxes, scores, labels = torch_detections(det, image)
        keep = scores >= min_score + 1e-3  # near the threshold a box may fall on either side
        mine = runtime.decode(*got, size, min_score)
        if not keep.any():
            continue
        total += int(keep.sum())
        if not mine:
            continue
        mb = np.array([d["box"] for d in mine], dtype=np.float32)
        ms = np.array([d["score"] for d in mine])
        ml = np.array([d["label"] for d in mine])
        iou = _iou(boxes[keep], mb)
        ok = ((iou > 0.99) & (labels[keep][:, None] == ml[None, :]) & (np.abs(scores[keep][:, None] - ms) < 1e-3)
              ).any(1)
        matched += int(ok.sum())
        top_missed += int((~ok[:TOP_BOXES]).sum())  # torch sorts by score: the best boxes must all be there
    result = DetectorVerification(len(images), worst, tol, total, matched)
    if not math.isfinite(worst) or worst > tol:
        raise DetectorMismatchError(f"exported {path} does not match PyTorch: {result}; report it with the model "
                                    "spec")
    # Below the best boxes, float ties at the top-k and detections-per-image cuts may swap a box or two.
    if top_missed or matched < 0.98 * total:
        raise DetectorMismatchError(f"the runtime's boxes from {path} differ from PyTorch's: {result}")
    return result


def int8_agreement(fp32_path: str | Path, int8_path: str | Path, images: list, min_score: float = 0.3) -> float:
    """Fraction of fp32 detections (score >= min_score) the int8 file also finds (same class, IoU >= 0.5)."""
    from ..deploy.runtime import Detector

    a, b = Detector(fp32_path), Detector(int8_path)
    total = found = 0
    for image in images:
        ref, got = a.detect(image, min_score), b.detect(image, min_score / 2)
        total += len(ref)
        if not ref or not got:
            continue
        iou = _iou(np.array([d["box"] for d in ref]), np.array([d["box"] for d in got]))
        same = np.array([d["label"] for d in ref])[:, None] == np.array([d["label"] for d in got])[None, :]
        found += int(((iou >= 0.5) & same).any(1).sum())
    return found / total if total else math.nan


def quantize_detector(fp32_path: Path, calib_images: list, out_path: Path, calib_n: int = 256,
                      method: str = "minmax", boundary: int | str = "auto") -> Any:
    """Static int8 (QDQ, per-channel weights) of backbone and head with deploy's quantizer.

    `boundary` as `deploy.quantize.quantize_int8`: "auto" times where int8 starts on this machine (ORT's int8
    depthwise is slower than float on the thin high-resolution layers), "all" quantizes all but the stem.
    Quantize a file exported with `export_detector(split="int8")`: a GhostNet then keeps its split float prefix.
    """
    from ..deploy.quantize import quantize_int8

    return quantize_int8(fp32_path, calib_images, out_path, calib_n=calib_n, boundary=boundary, method=method,
                         log=lambda *a, **k: None)


def cmd_export(args) -> None:
    """`rubik export` for a detector run: verified fp32 ONNX, and with --int8 the int8 file beside it."""
    from PIL import Image

    from .cli import load_detector
    from .data import open_detection_data

    if getattr(args, "format", "onnx") != "onnx":
        raise RubikError("detectors export to ONNX only (--format onnx)")
    det = load_detector(args.weights, args.model)
    if args.resolution:
        raise RubikError("a detector exports at the resolution it was trained at; drop --resolution")
    out = Path(args.output)
    source = args.images or args.calib
    if source:
        data = open_detection_data(source, classes=det.classes)
        pool = data.val
    else:
        pool = None

    def images_of(ds, idx):
        return [ds.load_image(i) for i in idx]

    if pool is not None:
        verify = images_of(pool, range(min(8, len(pool))))
    else:
        from ..deploy.images import sample_photos

        verify = [Image.fromarray(a) for a in sample_photos(4)]
    fp32 = out.with_name(out.stem + ".fp32.onnx") if args.int8 else out
    export_detector(det, fp32, opset=args.opset, split="int8" if args.int8 else "fp32")
    check = verify_detector(det, fp32, verify)
    print(f"wrote {fp32}: {det.spec.name} at {det.spec.resolution} px, {det.num_object_classes} classes; {check}")
    if not args.int8:
        return
    if not args.calib:
        raise RubikError("--int8 needs calibration images: --calib DATA (the detector's training data, e.g. 'digits' "
                         "or the COCO/VOC folder)")
    calib_data = open_detection_data(args.calib, classes=det.classes)
    n = min(args.calib_n, len(calib_data.train))
    calib = [np.asarray(calib_data.train.load_image(i)) for i in range(n)]
    method = "minmax" if args.calib_method == "auto" else args.calib_method
    config = quantize_detector(fp32, calib, out, calib_n=n, method=method, boundary=args.boundary)
    held = images_of(calib_data.val, range(min(32, len(calib_data.val))))
    agree = int8_agreement(fp32, out, held)
    print(f"wrote {out}: int8 backbone and head from node {config.boundary} of {config.nodes} on ({method} "
          f"calibration on {n} training images); on {len(held)} "
          f"validation images it finds {agree:.1%} of the fp32 file's boxes (score >= 0.3, IoU >= 0.5)")
