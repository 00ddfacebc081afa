"""Class activation maps: where in the image the evidence for a class lies (TinyNet paper, Fig. 4).

For a network that ends in global average pooling and a linear classifier, the map is the
classifier's row for the class applied at every position of the last feature map (Zhou et al.,
2016). Taking the gradient of the class score with respect to that feature map and averaging it
over positions gives exactly those weights (Grad-CAM), and also works when layers follow the
pooling (GhostNet's 1x1 head conv), so one method serves every family.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def class_activation_map(model: nn.Module, image: torch.Tensor, target: int | None = None
                         ) -> tuple[torch.Tensor, int, float]:
    """(map in [0, 1] at the image's size, class index, class probability) for one normalised image."""
    model.eval()
    x = image[None]
    with torch.enable_grad():
        features = model.forward_features(x).detach().requires_grad_(True)
        logits = model.forward_head(features)
        probs = logits.softmax(1)[0]
        cls = int(probs.argmax()) if target is None else target
        (grad,) = torch.autograd.grad(logits[0, cls], features)
    weights = grad.mean((2, 3), keepdim=True)
    cam = torch.relu((weights * features).sum(1, keepdim=True)).detach()
    cam = nn.functional.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = (cam - cam.min()) / (cam.max() - cam.min()).clamp_min(1e-12)
    return cam, cls, float(probs[cls].detach())


def save_overlay(image: torch.Tensor, cam: torch.Tensor, mean, std, out: Path, title: str = "") -> Path:
    """The image (un-normalised) beside the same image with the map blended over it in the jet colours."""
    from .plot import pyplot, save_figure

    rgb = (image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(0, 1)
    rgb = rgb.permute(1, 2, 0).numpy()
    fig, axes = pyplot().subplots(1, 2, figsize=(6, 3.2))
    axes[0].imshow(rgb)
    axes[1].imshow(rgb)
    axes[1].imshow(cam.numpy(), cmap="jet", alpha=0.5)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out, dpi=120)
