"""The classifier's part of the export pipeline (`deploy.pipeline.TaskExport`): its graph is the network
itself (a GhostNet v1 in the Ghost layout), its check compares logits and top-1 with PyTorch, its images
are a class-folder tree or 'digits' split as the run split them, and its int8 gate is the held-out top-1
check with `max_drop`."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..deploy.export import Graph, Verification, network_graph, verify_file
from ..deploy.images import LabelledImages, open_images
from ..deploy.quantize import Int8Gate
from ..image_folder import DEFAULT_HOLDOUT


class ClassifierExport:
    """What `deploy.pipeline.export` asks of a classifier."""

    formats = ("onnx", "executorch", "ncnn")
    selects = True  # int8's calibration method, boundary and precision plan go by top-1 agreement with fp32

    def __init__(self, model: nn.Module):
        self.model = model.eval()

    def graph(self, layout: str | None, resolution: int | None) -> Graph:
        return network_graph(self.model, resolution=resolution, layout=layout)

    def verify(self, path: Path, images: list | None, threads: int) -> Verification:
        return verify_file(self.model, path, images=images, threads=threads)

    def images(self, source: str, split: str) -> LabelledImages:
        # a run's split of a folder without val/: calibration never sees the images the check scores
        return open_images(source, split, getattr(self.model, "holdout", DEFAULT_HOLDOUT))

    def gate(self, fp32_path: Path, held: LabelledImages, max_drop: float, threads: int) -> Int8Gate:
        return Int8Gate(fp32_path, held, getattr(self.model, "classes", None), max_drop, threads)
