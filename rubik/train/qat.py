"""Quantization-aware fine-tuning: train with the rounding `rubik export --int8` will apply.

What ONNX Runtime's int8 path does to each convolution and the classifier (rubik/deploy/quantize.py:
QDQ, int8 weights per output channel, symmetric; uint8 activations per tensor, min/max ranges) is
simulated in the forward pass with torch's fake-quantize ops, whose gradients pass straight through
(and are zero where an input is clipped), so the weights learn to sit well on the int8 grid:
  weights  per output channel, symmetric, [-127, 127] x max|w| / 127. Symmetric per-channel rounding
           commutes with BatchNorm's per-channel scale, so the unfolded weight can be rounded here and
           is the same grid as the folded weight rounded at export.
  inputs   of every convolution but the stem (which the int8 path keeps in float) and of the classifier,
           uint8 over a fixed [min, max] measured on training images before fine-tuning, as the export's
           MinMax calibration measures it. Fixed ranges keep the run resumable exactly: they are written
           to RUN_DIR/qat.json and read back on resume.

Only the module classes change (an nn.Conv2d becomes a QATConv2d), never the parameter names, so the
run's weights are plain float weights that load into the plain model and export like any other run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..errors import RubikError
from ..files import atomic_write_text

RANGES_FILE = "qat.json"


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    scale = (w.detach().abs().amax(dim=tuple(range(1, w.dim()))) / 127).clamp_min(1e-12).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w.float(), scale, zero, 0, -127, 127).to(w.dtype)


def fake_quant_input(x: torch.Tensor, qrange: torch.Tensor) -> torch.Tensor:
    lo, hi = float(qrange[0]), float(qrange[1])
    if hi <= lo:  # no range measured (the stem), or a constant input: leave it in float
        return x
    scale = (hi - lo) / 255
    zero = min(255, max(0, round(-lo / scale)))
    return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, 0, 255).to(x.dtype)


class QATConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(fake_quant_input(x, self.qat_range), fake_quant_weight(self.weight), self.bias)


class QATLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(fake_quant_input(x, self.qat_range), fake_quant_weight(self.weight), self.bias)


def _quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear, QATConv2d, QATLinear)}


@torch.no_grad()
def measure_ranges(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, list[float]]:
    """[min, max] (zero included) of each convolution's and the classifier's input over `batches`, in eval
    mode; [0, 0] for a layer that reads the model's input (the stem stays float)."""
    layers = _quantized_layers(model)
    if not layers:
        raise RubikError("quantization-aware training found no Conv2d or Linear layer in the model")
    ranges = {name: [0.0, 0.0] for name in layers}
    current: dict[str, torch.Tensor] = {}
    stems: set[str] = set()

    def record(name):
        def hook(_module, args):
            x = args[0]
            if x is current.get("input"):
                ranges[name] = [0.0, 0.0]
                stems.add(name)
            elif name not in stems:
                lo, hi = ranges[name]
                ranges[name] = [min(lo, float(x.min())), max(hi, float(x.max()))]
        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for x in batches:
            current["input"] = x
            model(x)
            seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not seen:
        raise RubikError("no images to measure the int8 ranges on; the training set is empty")
    return ranges


def prepare_qat(model: nn.Module, ranges: dict[str, list[float]]) -> int:
    """Turn every Conv2d and Linear of `model` into its fake-quantized twin (in place); returns how many
    have a quantized input. `ranges` comes from `measure_ranges` or a run's qat.json."""
    layers = _quantized_layers(model)
    missing = sorted(set(layers) - set(ranges))
    if missing:
        raise RubikError(f"the int8 ranges do not match the model (no range for {missing[0]} and "
                         f"{len(missing) - 1} more); delete {RANGES_FILE} from the run directory to measure again")
    for name, m in layers.items():
        m.__class__ = QATConv2d if isinstance(m, nn.Conv2d) else QATLinear
        # Not persistent: the state dict keeps exactly the plain model's keys.
        m.register_buffer("qat_range", torch.tensor(ranges[name], dtype=torch.float32, device=m.weight.device),
                          persistent=False)
    return sum(1 for name in layers if ranges[name][1] > ranges[name][0])


def save_ranges(run_dir: Path, ranges: dict[str, list[float]]) -> None:
    atomic_write_text(Path(run_dir) / RANGES_FILE, json.dumps(ranges, indent=1))


def load_ranges(run_dir: Path) -> dict[str, list[float]] | None:
    path = Path(run_dir) / RANGES_FILE
    if not path.is_file():
        return None
    try:
        ranges = json.loads(path.read_text())
        return {str(k): [float(v[0]), float(v[1])] for k, v in ranges.items()}
    except (ValueError, TypeError, IndexError, AttributeError):
        raise RubikError(f"{path} is not a valid int8 range file; delete it to measure the ranges again") from None
