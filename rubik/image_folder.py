"""The one image-folder convention, shared by training, evaluation, calibration and the int8 check.

ROOT/CLASS/IMAGE (classes sorted by name, images sorted by path within a class), with optional
ROOT/train/ and an evaluation split: the first of EVAL_DIRS that exists. `rubik train` validates on
it, `rubik eval` scores it, and `rubik export --int8` checks int8 against fp32 on it, so all three
see the same images in the same order. A folder without an evaluation split is split by `folder_splits`
(a stratified, seeded fraction held out), and the run records the fraction and seed, so eval and the int8
check score the images training held out. Plain Python, except that split's permutation (torch's, so
existing runs keep their split).
"""

from __future__ import annotations

from dataclasses import dataclass
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


DEFAULT_HOLDOUT = (0.1, 0)  # (fraction, seed): `rubik train`'s val_split and seed defaults


@dataclass
class FolderSplits:
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    classes: list[str]
    how: str  # where the two splits came from, for the log


def holdout_split(samples: list[tuple[str, int]], fraction: float, seed: int):
    """A stratified split: `fraction` of each class (at least one image) goes to validation."""
    import torch  # its generator: the permutation every run so far was split with

    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    train, val = [], []
    for _, items in sorted(by_class.items()):
        order = torch.randperm(len(items), generator=g).tolist()
        n_val = max(1, round(len(items) * fraction)) if len(items) > 1 else 0
        val += [items[i] for i in order[:n_val]]
        train += [items[i] for i in order[n_val:]]
    return train, val


def folder_splits(root: str | Path, fraction: float = DEFAULT_HOLDOUT[0],
                  seed: int = DEFAULT_HOLDOUT[1]) -> FolderSplits:
    """Training and evaluation samples of ROOT: ROOT/train and the first of EVAL_DIRS when both exist;
    otherwise `fraction` of ROOT/train (or of ROOT's class folders) held out by `holdout_split`."""
    root = Path(root)
    eval_dir = next((root / d for d in EVAL_DIRS if (root / d).is_dir()), None)
    if (root / TRAIN_DIR).is_dir():
        train, classes = scan_folder(root / TRAIN_DIR)
        if eval_dir is not None:
            val, val_classes = scan_folder(eval_dir)
            if val_classes != classes:
                missing = sorted(set(classes) ^ set(val_classes))
                raise RubikError(f"{root / TRAIN_DIR} and {eval_dir} have different class folders "
                                 f"(e.g. {missing[:3]}); give both the same classes")
            return FolderSplits(train, val, classes, f"{root / TRAIN_DIR} and {eval_dir}")
        train, val = holdout_split(train, fraction, seed)
        return FolderSplits(train, val, classes, f"{root / TRAIN_DIR}, {fraction:.0%} held out (seed {seed})")
    samples, classes = scan_folder(root)
    train, val = holdout_split(samples, fraction, seed)
    return FolderSplits(train, val, classes, f"{root}, {fraction:.0%} held out (seed {seed})")
