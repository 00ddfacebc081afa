"""Loading weights: official checkpoints from the hub, or a local .safetensors / .pth file.

State-dict keys are timm's, so official checkpoints load unchanged. The only generic rename
(`KEY_RENAMES`) undoes a DistributedDataParallel `module.` prefix, and counters left by the `thop`
FLOP counter (`total_ops`, `total_params`) are dropped; a family's own old spellings (the official
GhostNet file's `bn.`) are its `Family.key_filter`.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RubikError
from .registry import FAMILIES, MODELS, ModelSpec, build, features, get_spec, published

KEY_RENAMES = ((re.compile(r"^module\."), ""),)
DROPPED_KEYS = re.compile(r"(total_ops|total_params)$")


class WeightsError(RubikError):
    """A weights file that cannot be read, is unsafe, or does not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a tensor-only PyTorch file; never runs pickled code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"weights file {path} is not a readable safetensors file ({e}); "
                               "it may be truncated or corrupt: re-download or re-export it") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            raise WeightsError(f"refused to load {path}: it holds pickled objects other than tensors, which could "
                               f"run code ({first[:160]}); convert it to .safetensors from a trusted source") from None
        raise WeightsError(f"weights file {path} is corrupt or truncated ({first[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"weights file {path} is corrupt or truncated ({first[:160]})") from None
    return _unwrap(data, path)


def _unwrap(data: Any, path: Path) -> dict[str, torch.Tensor]:
    # Training scripts nest the weights; prefer EMA weights, which are the ones evaluated.
    if isinstance(data, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"weights file {path} holds no state_dict (a mapping of names to tensors)")
    return data


def normalise_keys(state: dict[str, torch.Tensor], family: str | None = None) -> dict[str, torch.Tensor]:
    """Generic renames for every checkpoint, then the family's own key filter."""
    out = {}
    for key, value in state.items():
        if DROPPED_KEYS.search(key):
            continue
        for pattern, repl in KEY_RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    key_filter = FAMILIES[family].key_filter if family in FAMILIES else None
    return key_filter(out) if key_filter else out


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> list[str]:
    """Load a state_dict strictly, except a classifier of another size, which is skipped.

    Returns the keys that were skipped (the classifier, when num_classes differs).
    """
    spec = getattr(model, "spec", None)
    family = FAMILIES.get(getattr(spec, "family", None))
    state = normalise_keys(state, family.name if family else None)
    own = model.state_dict()
    heads = tuple(f"{name}." for name in family.classifier) if family else ("classifier.", "fc.")
    skipped = [k for k in state if k.startswith(heads) and k in own and state[k].shape != own[k].shape]
    for k in skipped:
        del state[k]
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {wrong[0]})")
        raise WeightsError(f"{source} does not fit model {name}: " + ", ".join(parts) +
                           "; check that the weights were made for this architecture")
    model.load_state_dict(state, strict=False)
    return skipped


def download(spec: ModelSpec) -> Path:
    """Fetch the official ImageNet-1k weights for a named model from the Hugging Face hub."""
    hub_id = published(spec).hub_id
    if not hub_id:
        have = ", ".join(n for n, s in MODELS.items() if published(s).hub_id)
        raise WeightsError(f"no official pretrained weights for {spec.name}; they exist for: {have}")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(hub_id, "model.safetensors"))
    except Exception as e:  # offline, DNS failure, hub error: all mean the same thing to the user
        raise WeightsError(f"could not download {hub_id} from the Hugging Face hub ({type(e).__name__}); with "
                           "no network, pass a local file: weights='FILE.safetensors' (CLI: --weights FILE)") from None


def create_model(model: str | dict | Path | ModelSpec, num_classes: int = 1000, pretrained: bool = False,
                 weights: str | Path | None = None, features_only: bool = False,
                 out_indices: tuple[int, ...] | None = None, **kwargs: Any) -> nn.Module:
    """Build a named model (or a spec dict / JSON file) and optionally load weights.

    `pretrained=True` loads the official ImageNet-1k weights; `weights=PATH` a local file. With a
    `num_classes` other than the file's, everything but the classifier is loaded.
    The model's `spec` attribute carries its input resolution and preprocessing.
    `features_only=True` returns the backbone cut to its feature maps at strides 2, 4, 8, 16, 32
    (timm's tap points and channels; `out_indices` selects maps, `.feature_info` describes them);
    the weights' head and classifier are ignored.
    """
    spec = get_spec(model)
    net = build(spec, num_classes=num_classes, **kwargs)
    if pretrained and weights is None:
        weights = download(spec)
    if weights is not None:
        load_weights(net, read_state_dict(weights), source=f"weights file {weights}")
    if features_only:
        return features(net, out_indices)
    if out_indices is not None:
        raise WeightsError("out_indices selects feature maps: it needs features_only=True")
    return net
