"""Edge deployment: the export core and pipeline (ONNX, ExecuTorch, ncnn; verified), int8 quantization, latency
benchmarks, a torch-free runtime (`Classifier`, `Detector`).

Names load on first use, so `rubik.deploy.runtime` can be used without importing torch here.
"""

from importlib import import_module

_EXPORTS = {
    "export_onnx": "export", "verify_onnx": "export", "fold_batchnorm": "export",
    "quantize_int8": "quantize", "check_int8": "quantize",
    "bench": "bench", "format_table": "bench", "matmul_peak": "bench",
    "Classifier": "runtime", "Detector": "runtime", "Preprocess": "runtime", "export_executorch": "executorch",
    "export_ncnn": "edge",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
