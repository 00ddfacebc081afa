"""The one image-folder convention, shared by training, evaluation, calibration and the int8 check.

ROOT/CLASS/IMAGE (classes sorted by name, images sorted by path within a class), with optional
ROOT/train/ and an evaluation split: the first of EVAL_DIRS that exists. `rubik train` validates on
it, `rubik eval` scores it, and `rubik export --int8` checks int8 against fp32 on it, so all three
see the same images in the same order. Plain Python: no torch.
"""

from __future__ import annotations

from pathlib import Path

from .errors import RubikError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
EVAL_DIRS = ("val", "valid", "validation", "test")  # in this order: the first that exists is the evaluation split
TRAIN_DIR = "train"


def split_folder(root: str | Path, split: str) -> Path:
    """The folder holding a split: ROOT/train (split "train") or the first of EVAL_DIRS (split "eval"),
    else ROOT itself."""
    root = Path(root)
    names = {"train": (TRAIN_DIR,), "eval": EVAL_DIRS}[split]
    return next((root / d for d in names if (root / d).is_dir()), root)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def scan_folder(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """ImageFolder layout: root/<class>/<image>; classes sorted by name, images by path."""
    try:
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except PermissionError:
        raise RubikError(f"data folder {root} is not readable (permission denied); fix its permissions") from None
    classes = [d.name for d in class_dirs]
    samples = []
    for index, d in enumerate(class_dirs):
        try:
            files = sorted(p for p in d.rglob("*") if is_image(p))
        except PermissionError:
            raise RubikError(f"class folder {d} is not readable (permission denied); fix its permissions") from None
        samples += [(str(p), index) for p in files]
    return samples, classes
