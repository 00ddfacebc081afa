"""The one metadata writer: what travels with every exported file (preprocessing, class names, spec, precision).

ONNX files carry it in their `metadata_props`; formats without a place for it (ExecuTorch's .pte)
carry the same entries in a JSON file beside the model (`sidecar_path`). `runtime.py` reads both.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from torch import nn

from .runtime import META_CLASSES, META_MODEL, META_PRECISION, META_PREPROCESS, Preprocess, sidecar_path


def entries(model: nn.Module | None, pre: Preprocess, precision: str, classes: list[str] | None = None,
            **extra: str) -> dict[str, str]:
    """The metadata of one exported file: every value a string (ONNX metadata_props are strings)."""
    meta = {META_PREPROCESS: pre.to_json(), META_PRECISION: precision}
    spec = getattr(model, "spec", None)
    if spec is not None:
        meta[META_MODEL] = json.dumps(spec.to_dict())
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
