"""Run an exported model with only onnxruntime and numpy (Pillow to decode image files).

This file never imports torch nor the rest of rubik: copy it beside `model.onnx` onto a device and
`from runtime import Classifier`. The preprocessing (input size, resize, crop, mean/std) and the
class names travel in the ONNX file's metadata, written by `rubik export`:

    clf = Classifier("model.int8.onnx")
    clf.topk("cat.jpg", k=3)   # [("cat", 0.91), ("dog", 0.05), ("deer", 0.01)]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Keys of the ONNX metadata_props that `rubik export` writes.
META_PREPROCESS = "rubik.preprocess"  # JSON: resolution, crop_pct, interpolation, mean, std, layout
META_CLASSES = "rubik.classes"  # JSON list of class names (absent when unknown)
META_MODEL = "rubik.model"  # JSON model spec, for the record
META_PRECISION = "rubik.precision"  # "fp32" or "int8"


class RuntimeModelError(ValueError):
    """A model file that cannot be loaded or lacks rubik's metadata (a one-line, user-facing message)."""


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input: resize the short side to resolution / crop_pct, centre-crop,
    scale to [0, 1], subtract mean and divide by std, channels first."""

    resolution: int
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_json(self) -> str:
        return json.dumps({"resolution": self.resolution, "crop_pct": self.crop_pct,
                           "interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std),
                           "layout": "NCHW", "scale": "1/255"})

    @classmethod
    def from_json(cls, text: str) -> Preprocess:
        d = json.loads(text)
        return cls(int(d["resolution"]), float(d["crop_pct"]), d["interpolation"], tuple(d["mean"]), tuple(d["std"]))

    def crop(self, image: Any) -> np.ndarray:
        """A PIL image, a file path or an HxWx3 uint8 array -> the resized, centre-cropped HxWx3 uint8 array."""
        from PIL import Image

        if isinstance(image, (str, Path)):
            with Image.open(image) as f:
                image = f.convert("RGB")
        elif isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected an HxWx3 uint8 image array, got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        else:
            image = image.convert("RGB")
        # Same arithmetic as torchvision's Resize(floor(r / crop_pct)) + CenterCrop(r) used in evaluation.
        short = math.floor(self.resolution / self.crop_pct)
        w, h = image.size
        if w <= h:
            size = (short, int(short * h / w))
        else:
            size = (int(short * w / h), short)
        resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
        image = image.resize(size, resample)
        left = int(round((size[0] - self.resolution) / 2.0))
        top = int(round((size[1] - self.resolution) / 2.0))
        return np.asarray(image.crop((left, top, left + self.resolution, top + self.resolution)))

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """NxHxWx3 (or HxWx3) uint8 -> Nx3xHxW float32, normalised."""
        x = pixels.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3) if x.ndim == 4 else np.moveaxis(x, -1, 0)[None])

    def __call__(self, images: Any) -> np.ndarray:
        """One image or a list of them -> a batch Nx3xRxR float32."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return self.normalise(np.stack([self.crop(im) for im in images]))


def session_options(threads: int = 1, optimized_path: str | None = None):
    """ORT settings for small-model CPU latency: every graph optimisation (BN folding, Conv+activation
    fusion, NCHWc / NHWC int8 layouts), `threads` intra-op threads, sequential execution."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # ORT's own warnings (unused initialisers, ...) are not the user's business
    if threads == 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return so


def open_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session, or a one-line error naming the file and what is wrong with it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise RuntimeModelError(f"model file {path} does not exist; export one with `rubik export`")
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...) for a bad file
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise RuntimeModelError(f"model file {path} is not a valid ONNX model ({first}); it may be truncated or "
                                "corrupt: export it again") from None


class Classifier:
    """An exported image classifier: preprocessing from the file's metadata, logits, top-k."""

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        self.session = open_session(self.path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_PREPROCESS not in meta:
            raise RuntimeModelError(f"model file {self.path} has no rubik preprocessing metadata; export it with "
                                    "`rubik export` (or pass preprocess=Preprocess(...) yourself)")
        self.preprocess = Preprocess.from_json(meta[META_PREPROCESS])
        self.classes: list[str] | None = json.loads(meta[META_CLASSES]) if META_CLASSES in meta else None
        self.precision = meta.get(META_PRECISION, "fp32")
        self.input_name = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Nx3xRxR float32 (already preprocessed) -> NxK logits; runs one image at a time on a static-batch file."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            return np.concatenate([self.logits(batch[i:i + self.fixed_batch])
                                   for i in range(0, batch.shape[0], self.fixed_batch)])
        return self.session.run(None, {self.input_name: batch})[0]

    def probabilities(self, images: Any) -> np.ndarray:
        z = self.logits(self.preprocess(images))
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def topk(self, image: Any, k: int = 5) -> list[tuple[str, float]]:
        """The k most likely classes of one image (a path, a PIL image or an HxWx3 uint8 array)."""
        p = self.probabilities(image)[0]
        order = np.argsort(-p)[:k]
        names = self.classes or [str(i) for i in range(len(p))]
        return [(names[i], float(p[i])) for i in order]
