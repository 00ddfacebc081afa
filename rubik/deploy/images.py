"""Real images for verification, calibration and held-out checks: a folder, `digits`, or two sample photos.

Everything here returns HxWx3 uint8 arrays (or file paths) that go through the exported model's own
`Preprocess`, so calibration sees exactly what the deployed model will see.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..digits import CLASSES as DIGIT_CLASSES
from ..digits import digits_split
from ..image_folder import DEFAULT_HOLDOUT, IMAGE_EXTENSIONS, folder_splits, is_image, scan_folder, split_folder
from ..sources import NoImagesError, resolve

__all__ = ["LabelledImages", "NoImagesError", "open_images", "sample", "sample_photos"]


@dataclass
class LabelledImages:
    """Images (paths or arrays) with class indices into `classes` (labels are None for an unlabelled folder)."""

    images: list
    labels: list[int] | None
    classes: list[str] | None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: list[int]) -> LabelledImages:
        return LabelledImages([self.images[i] for i in indices],
                              None if self.labels is None else [self.labels[i] for i in indices], self.classes)


def _digits(split: str) -> LabelledImages:
    images, labels = digits_split(split)
    return LabelledImages(list(images), labels, list(DIGIT_CLASSES))


def open_images(source: str | Path, split: str = "train",
                holdout: tuple[float, int] = DEFAULT_HOLDOUT) -> LabelledImages:
    """`digits` (its train or test split), or a folder in rubik's one convention (`rubik.image_folder`):
    ROOT/CLASS/*.jpg (labelled), ROOT/train/CLASS and an evaluation split (val/, valid/, validation/ or
    test/: the folder `rubik train` validates on and `rubik eval` scores), or any tree of images (unlabelled).
    `split`: "train", or "test"/"eval" for the evaluation split. A labelled folder without an evaluation
    split is split as training split it: `holdout` (fraction, seed) of each class held out (the run's
    `.holdout`), so the int8 check scores the images `rubik eval` scores and calibration never sees them."""
    src = resolve(source, "images")
    if src.embedded:
        return _digits(split)
    root = src.root
    eval_folder = split_folder(root, "eval")
    if eval_folder == root:
        # no evaluation split: hold out what training held out (a labelled tree only; see below)
        folder = split_folder(root, "train")
        samples, classes = scan_folder(folder)
        if samples and not any(is_image(p) for p in folder.iterdir()):
            splits = folder_splits(root, *holdout)
            chosen = splits.train if split == "train" else splits.val
            return LabelledImages([p for p, _ in chosen], [c for _, c in chosen], classes)
        root = folder
    else:
        root = split_folder(root, "train" if split == "train" else "eval")
    samples, classes = scan_folder(root)
    if samples and not any(is_image(p) for p in root.iterdir()):
        return LabelledImages([p for p, _ in samples], [c for _, c in samples], classes)
    files = sorted(str(p) for p in root.rglob("*") if is_image(p))
    if not files:
        raise NoImagesError(f"no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS[:4])}, ...); "
                            "pass a folder that holds the calibration images, e.g. ROOT/CLASS/*.jpg")
    return LabelledImages(files, None, None)


def sample(images: LabelledImages, n: int, seed: int = 0, exclude: set[int] | None = None) -> list[int]:
    """`n` indices spread over the classes (a seeded shuffle), skipping `exclude`."""
    order = [i for i in range(len(images)) if not exclude or i not in exclude]
    random.Random(seed).shuffle(order)
    return order[:n]


def sample_photos(n: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Real photographs when the user gave none: crops of the two photos scikit-learn ships."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        size = int(rng.integers(min(h, w) // 4, min(h, w)))
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = photo[top:top + size, left:left + size]
        out.append(np.ascontiguousarray(crop[:, ::-1] if i % 2 else crop))
    return out
