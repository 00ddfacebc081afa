"""The detector's part of the export pipeline: its graph (backbone and head), its checks, its images.

The graph maps a 1x3xRxR normalised image to SSD's raw outputs, `bbox_regression` (1 x A x 4 offsets
from the A default boxes) and `cls_logits` (1 x A x (K + 1), class 0 the background). Decoding,
softmax, per-class thresholds, top-k and NMS run in `rubik.deploy.runtime.Detector` (numpy), with
torchvision SSD's rules; the default boxes and settings travel in the file's metadata. Why there and
not in the graph: int8 then covers exactly the backbone and head (the arithmetic that costs), and
box decoding stays float in every precision; ONNX NMS would also tie the file to runtimes that have it.
The export core (rubik.deploy) writes the graph as ONNX or as an ExecuTorch .pte; `DetectorExport` is
what `deploy.pipeline.export` asks of a detector.

`verify_detector` checks the file against PyTorch twice: the raw outputs on the same inputs, and the
final boxes of `Detector` against torchvision's SSD (same labels, IoU > 0.99, scores within 1e-3):
every one of the best 20 boxes per image, and 98 % of all above the score threshold.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..deploy.export import Graph
from ..deploy.images import LabelledImages
from ..errors import RubikError

OUTPUT_NAMES = ("bbox_regression", "cls_logits")
TOP_BOXES = 20  # per image, the runtime must reproduce each of PyTorch's best boxes
VERIFY_PHOTOS = 4  # sample photos the fp32 file is checked on when no images are given


class GhostLayoutBody(nn.Module):
    """A GhostNet detector body whose first `blocks` bottlenecks run in the Ghost layout (`deploy.layout`).

    The same function as the body (`ExpansionTaps`), without the Concats and layout conversions that cost
    ONNX Runtime's float kernels on x86; the layout ends before the stride-32 stage, where both taps are.
    """

    def __init__(self, body: nn.Module, blocks: int, block: int = 16):
        super().__init__()
        from ..deploy.layout import GhostLayoutPrefix

        self.start = body._steps.index(body._stage)
        modules = body_bottlenecks(body)
        self.prefix = GhostLayoutPrefix(body.conv_stem, body.bn1, modules[:blocks], block)
        self.rest = nn.Sequential(*modules[blocks:])
        self.body = body

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(self.rest(self.prefix(x)), start=self.start)


def body_bottlenecks(body: nn.Module | None) -> list[nn.Module] | None:
    """The bottlenecks of a body tapped at the expansion (`ExpansionTaps`) before its stride-32 stage, when its
    steps before that stage are a ReLU stem and blocks only (a GhostNet's); else None."""
    from .model import ExpansionTaps

    if not isinstance(body, ExpansionTaps):  # torchvision's own MobileNetV3 extractor, or another tap
        return None
    steps = body._steps[:body._steps.index(body._stage)]
    blocks = [s for s in steps if s.startswith("blocks.")]
    if steps != ["conv_stem", "bn1", "act1", *blocks] or not isinstance(body.act1, nn.ReLU):
        return None
    return [b for step in blocks for b in body._module(step)]


def body_layout(det: nn.Module, layout: str | int | None) -> GhostLayoutBody | None:
    """The body `DetectorCore` runs for `layout` (as `deploy.layout.layout_blocks`: "fp32" every bottleneck before
    stride 32, "int8" those the int8 file keeps in float, N the first N), or None: no layout, or a body that is not
    a GhostNet v1's."""
    from ..deploy.layout import layout_blocks

    body = getattr(det.backbone, "body", None)
    modules = body_bottlenecks(body)
    blocks = layout_blocks(modules or [], layout)
    return None if blocks is None else GhostLayoutBody(body.eval(), blocks)


class DetectorCore(nn.Module):
    """Backbone + extra layers + SSDLite head of a torchvision SSD: what the exported graph computes.

    `layout` ("fp32" or "int8", as `deploy.export.export_onnx`) runs a GhostNet body in the Ghost layout.
    """

    def __init__(self, det: nn.Module, layout: str | int | None = None):
        super().__init__()
        self.backbone, self.head = det.backbone, det.head
        self.layout_body = body_layout(det, layout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x) if self.layout_body is None else self.backbone.extend(self.layout_body(x))
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
    """The file's metadata: preprocessing, classes, spec, MACs, and the decoding settings with the default boxes."""
    from ..deploy.metadata import entries
    from ..deploy.runtime import META_DETECTOR, Preprocess
    from .model import detector_macs_params

    spec = det.spec
    anchors = default_boxes(det).numpy().astype("<f4")
    settings = {"resolution": spec.resolution, "resize": "stretch", "box_weights": list(det.box_coder.weights),
                "bbox_xform_clip": float(det.box_coder.bbox_xform_clip), "score_thresh": det.score_thresh,
                "nms_thresh": det.nms_thresh, "topk_candidates": det.topk_candidates,
                "detections_per_img": det.detections_per_img, "num_classes": det.num_object_classes,
                "anchors": base64.b64encode(anchors.tobytes()).decode()}
    # crop_pct 1 and bilinear: what deploy's calibration reads; the runtime itself stretches to R x R.
    pre = Preprocess(spec.resolution, 1.0, "bilinear", tuple(spec.mean), tuple(spec.std))
    return entries(det, pre, "fp32", det.classes, macs=detector_macs_params(det)[0],
                   **{META_DETECTOR: json.dumps(settings)})


def detector_graph(det: nn.Module, layout: str | int | None = "fp32") -> Graph:
    """The detector's graph for the export core: `DetectorCore` (raw SSD outputs), the runtime's metadata."""
    from ..deploy.runtime import META_PREPROCESS, Preprocess

    det = det.eval()
    meta = detector_metadata(det)
    return Graph(DetectorCore(det, layout).eval(), Preprocess.from_json(meta[META_PREPROCESS]), meta, OUTPUT_NAMES,
                 det.spec.name)


def export_detector(det: nn.Module, path: str | Path, opset: int = 18, layout: str | int | None = "fp32") -> Path:
    """Write the detector's backbone + head as ONNX (`detector_graph` through `deploy.export.write_onnx`)."""
    from ..deploy.export import write_onnx

    return write_onnx(detector_graph(det, layout), path, opset=opset)


@dataclass
class DetectorVerification:
    images: int
    max_abs_diff: float  # raw outputs, the file vs PyTorch
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


def _pil(image):
    """A PIL image of a PIL image, a file path or an HxWx3 uint8 array."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as f:
            return f.convert("RGB")
    return Image.fromarray(image) if isinstance(image, np.ndarray) else image


def verify_detector(det: nn.Module, path: str | Path, images: list, min_score: float = 0.05,
                    rtol: float = 1e-3, atol: float = 1e-4, threads: int = 1) -> DetectorVerification:
    """Raise unless the file's raw outputs and the runtime's final boxes match PyTorch on `images` (PIL or
    HxWx3 uint8), the file in its runtime (.onnx: ONNX Runtime, .pte: ExecuTorch)."""
    from ..deploy.runtime import Detector

    runtime = Detector(path, threads)
    core = DetectorCore(det.eval())
    worst, tol, total, matched, top_missed = 0.0, 0.0, 0, 0, 0
    for image in map(_pil, images):
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


@dataclass
class BoxCheck:
    """The int8 file against the fp32 file on held-out images: the share of fp32's boxes int8 finds too."""

    n: int
    found: float
    min_score: float
    drop: float = 0.0  # accuracy points: boxes have none, the gate never refuses

    def __str__(self) -> str:
        if math.isnan(self.found):
            return (f"int8 vs fp32 on {self.n} held-out images: the fp32 file finds no box with score >= "
                    f"{self.min_score:g} there, so there is nothing to compare")
        return (f"int8 vs fp32 on {self.n} held-out images: it finds {self.found:.1%} of the fp32 file's boxes "
                f"(score >= {self.min_score:g}, IoU >= 0.5)")


class BoxGate:
    """The held-out check of an int8 detector file, as `deploy.quantize.Int8Gate` for a classifier: the fp32
    detections (score >= `min_score`) the int8 file also finds (same class, IoU >= 0.5, at half the score).
    It reports and never refuses a file: `max_drop` is in top-1 accuracy points, which boxes have none."""

    max_drop = math.inf

    def __init__(self, fp32_path: str | Path, images: list, threads: int = 1, min_score: float = 0.3):
        from ..deploy.runtime import Detector

        self.images, self.threads, self.min_score = images, threads, min_score
        fp32 = Detector(fp32_path, threads)
        self.reference = [fp32.detect(image, min_score) for image in images]
        self.checks: dict[Path, BoxCheck] = {}

    def check(self, path: str | Path) -> BoxCheck:
        from ..deploy.runtime import Detector

        path = Path(path)
        if path not in self.checks:
            int8 = Detector(path, self.threads)
            total = found = 0
            for image, ref in zip(self.images, self.reference, strict=True):
                got = int8.detect(image, self.min_score / 2)
                total += len(ref)
                if ref and got:
                    iou = _iou(np.array([d["box"] for d in ref]), np.array([d["box"] for d in got]))
                    same = np.array([d["label"] for d in ref])[:, None] == np.array([d["label"] for d in got])[None]
                    found += int(((iou >= 0.5) & same).any(1).sum())
            self.checks[path] = BoxCheck(len(self.images), found / total if total else math.nan, self.min_score)
        return self.checks[path]

    def drop(self, path: str | Path) -> float:
        return self.check(path).drop

    def __call__(self, path: str | Path) -> bool:
        return True


class DatasetImages(Sequence):
    """A detection dataset's images as a sequence: the file's path (read where it is used, so a thousand held-out
    images cost no memory), or the generated image of the embedded set."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if self.dataset.embedded is not None:
            return self.dataset.load_image(index)
        return self.dataset.samples[index].image


class DetectorExport:
    """What `deploy.pipeline.export` asks of a detector (its `TaskExport`): the graph, the checks, the images."""

    formats = ("onnx", "executorch")
    selects = False  # top-1 agreement means nothing for boxes: int8's choices go by speed (MinMax calibration)

    def __init__(self, det: nn.Module):
        self.model = det.eval()
        self._data: dict[str, object] = {}

    def graph(self, layout: str | None, resolution: int | None) -> Graph:
        if resolution:
            raise RubikError("a detector exports at the resolution it was trained at; drop --resolution")
        return detector_graph(self.model, layout)

    def verify(self, path: Path, images: list | None, threads: int) -> DetectorVerification:
        if images is None:
            from ..deploy.images import sample_photos

            images = sample_photos(VERIFY_PHOTOS)
        return verify_detector(self.model, path, images, threads=threads)

    def images(self, source: str, split: str) -> LabelledImages:
        from .data import open_detection_data

        if source not in self._data:  # "train" and "test" of one source: read its annotations once
            self._data[source] = open_detection_data(source, classes=self.model.classes)
        data = self._data[source]
        return LabelledImages(DatasetImages(data.train if split == "train" else data.val), None, None)

    def gate(self, fp32_path: Path, held: LabelledImages, max_drop: float, threads: int) -> BoxGate:
        return BoxGate(fp32_path, held.images, threads)
