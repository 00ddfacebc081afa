"""The embedded default data: scikit-learn's handwritten digits (1,797 8x8 grey images, 10 classes).

One split and one upscaling for everything that uses it (training, calibration, held-out checks), so
the test images a deployed model is checked on are the very ones `rubik train` tested on. Torch-free:
numpy, scikit-learn and Pillow only.
"""

from __future__ import annotations

import numpy as np

DIGITS = "digits"
CLASSES = [str(i) for i in range(10)]


def digits_split(split: str) -> tuple[np.ndarray, list[int]]:
    """The 8x8 images of `split` ("train": 1,437, "test": 360) as N x 8 x 8 x 3 uint8, with their labels.

    80/20 stratified with a fixed seed, so every run tests on the same 360 images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"digits has a 'train' and a 'test' split, not {split!r}")
    d = load_digits()
    train, test = train_test_split(range(len(d.target)), test_size=0.2, random_state=0, stratify=d.target)
    idx = train if split == "train" else test
    grey = np.clip(np.round(d.images[idx] * (255 / 16)), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    return np.repeat(grey[..., None], 3, axis=3), [int(t) for t in d.target[idx]]


def upscale(images: np.ndarray, resolution: int) -> np.ndarray:
    """N x 8 x 8 x 3 uint8 -> N x r x r x 3 uint8 with Pillow's bicubic filter.

    The same filter a deployed model's preprocessing applies to an 8x8 digit (rubik.deploy.runtime):
    torch's bicubic differs from Pillow's enough to cost a fragile model a few points.
    """
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((resolution, resolution), Image.Resampling.BICUBIC))
                     for im in images])
