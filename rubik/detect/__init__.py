"""Object detection: SSDLite on any rubik backbone (model.py), COCO/VOC/embedded data (data.py),
COCO mAP (evaluate.py), the trainer hook (task.py) and the ONNX export (export.py)."""

from .model import DETECTORS, DetectorSpec, build_detector, get_detector_spec, is_detector

__all__ = ["DETECTORS", "DetectorSpec", "build_detector", "get_detector_spec", "is_detector"]
