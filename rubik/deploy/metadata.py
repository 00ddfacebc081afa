"""The one metadata writer: what travels with every exported file (preprocessing, class names, spec, precision,
MACs, and a task's own entries such as a detector's default boxes).

ONNX files carry it in their `metadata_props`; formats without a place for it (ExecuTorch's .pte)
carry the same entries in a JSON file beside the model (`sidecar_path`). `runtime.py` reads both.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from .export import save_file
from .runtime import META_CLASSES, META_MACS, META_MODEL, META_PRECISION, META_PREPROCESS, Preprocess, sidecar_path


def entries(model: nn.Module | None, pre: Preprocess, precision: str, classes: list[str] | None = None,
            macs: int | None = None, **extra: str) -> dict[str, str]:
    """The metadata of one exported file: every value a string (ONNX metadata_props are strings). `macs`: of one
    image through the model (what `rubik bench` reports for the file, whatever its task)."""
    meta = {META_PREPROCESS: pre.to_json(), META_PRECISION: precision}
    spec = getattr(model, "spec", None)
    if spec is not None:
        meta[META_MODEL] = json.dumps(spec.to_dict())
    if macs is not None:
        meta[META_MACS] = str(int(macs))
    classes = classes if classes is not None else getattr(model, "classes", None)
    if classes:
        meta[META_CLASSES] = json.dumps(list(classes))
    meta.update(extra)
    return meta


def set_onnx_metadata(onnx_model, meta: dict[str, str]) -> None:
    """Merge `meta` into an ONNX model's metadata_props (a key already there is replaced)."""
    props = {p.key: p.value for p in onnx_model.metadata_props}
    props.update(meta)
    del onnx_model.metadata_props[:]
    for key, value in props.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value


def write_sidecar(model_path: str | Path, meta: dict[str, str]) -> Path:
    """Write `meta` as JSON beside `model_path` (atomically: a reader never sees half a file)."""
    path = sidecar_path(model_path)
    text = json.dumps(meta, indent=1) + "\n"
    save_file(path, lambda p: p.write_text(text))
    return path
