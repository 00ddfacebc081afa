"""Cost of a model: parameters, multiply-accumulates, peak activation memory, CPU latency.

MACs (what the EfficientNet, TinyNet and GhostNet papers call FLOPs) count every convolution
and linear layer, squeeze-excite included: out_elements x in_channels/groups x kernel area for a
convolution, in x out for a linear layer. Bias adds, BatchNorm, activations, pooling and
residual adds are not counted, as in the papers' PyTorch counters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .models.layers import Residual
from .timing import median_ms


@dataclass
class Part:
    """The cost of one part of a model (a detector's backbone, extra layers, head)."""

    macs: int
    params: int
    latency_ms: float | None = None


@dataclass
class Profile:
    resolution: int
    params: int
    macs: int
    peak_activation_bytes: int
    latency_ms: float | None = None  # median, batch 1, one thread, CPU
    parts: dict[str, Part] | None = None  # parts that add up to the whole (detectors), in order

    def as_dict(self) -> dict:
        return asdict(self)


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def deployed(model: nn.Module) -> nn.Module:
    """The network as deployed: for a model with train-time re-parameterisable branches (GhostNetV3),
    a folded copy (`reparameterize()`, as `rubik export` does); any other model itself."""
    if not callable(getattr(model, "reparameterize", None)) or getattr(model, "is_reparameterized", False):
        return model
    import copy

    folded = copy.deepcopy(model)
    folded.reparameterize()
    return folded


def count(model: nn.Module, resolution: int | tuple[int, int], in_chans: int = 3) -> tuple[int, int]:
    """(MACs, peak activation bytes) of one forward pass at batch 1, of the deployed network (`deployed`).

    Peak activation memory is the largest, over layers in execution order, of that layer's input
    plus output plus any block input held alive for a skip connection or a squeeze-excite gate:
    the working set an inference runtime must keep with perfect buffer reuse.
    """
    model = deployed(model)
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    macs = 0
    held = [0]  # bytes of block inputs that stay alive while the block runs
    peak = [0]

    def leaf_hook(module, inputs, output):
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features
        peak[0] = max(peak[0], held[0] + sum(_nbytes(t) for t in inputs) + _nbytes(output))

    def hold(module, inputs):
        module._held = _nbytes(inputs[0])
        held[0] += module._held

    def release(module, inputs, output):
        held[0] -= module._held

    handles = []
    for m in model.modules():
        if len(list(m.children())) == 0:
            handles.append(m.register_forward_hook(leaf_hook))
        elif (isinstance(m, Residual) and m.has_skip) or type(m).__name__ == "SqueezeExcite":
            handles += [m.register_forward_pre_hook(hold), m.register_forward_hook(release)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            device = next(model.parameters()).device  # "meta" models count shapes only, with no arithmetic
            model(torch.zeros(1, in_chans, h, w, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return macs, peak[0]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def latency(model: nn.Module, resolution: int, threads: int = 1, warmup: int = 10, runs: int = 50,
            batch: int = 1) -> float:
    """Median wall time in ms of one forward pass on the CPU, after warm-up, with `threads` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    x = torch.randn(batch, 3, resolution, resolution)
    try:
        with torch.inference_mode():
            return median_ms({"model": lambda: model(x)}, runs=runs, warmup=warmup)["model"]
    finally:
        torch.set_num_threads(before)


def profile(model: nn.Module, resolution: int | None = None, measure_latency: bool = True,
            threads: int = 1, runs: int = 50) -> Profile:
    """Parameters, MACs, peak activation memory and (optionally) CPU latency at batch 1, deployed (`deployed`)."""
    if resolution is None:
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ValueError("profile needs a resolution for a model that carries no spec")
        resolution = spec.resolution
    model = deployed(model)
    macs, peak = count(model, resolution)
    ms = latency(model, resolution, threads=threads, runs=runs) if measure_latency else None
    return Profile(resolution, count_params(model), macs, peak, ms)
