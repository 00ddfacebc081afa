"""Data sources: what a `data` argument is, and the training defaults each kind of source brings.

Every opener (classifier data, calibration images, detection data) resolves its argument here first,
so one place knows the kinds of source and says, in one line, what is wrong with anything else:

    digits          the embedded classification set (rubik.digits), for task "classify" or "images"
    digits[:K[:N]]  the embedded detection set (K digit classes on photos, N training images), task "detect"
    folder          an ImageFolder tree (ROOT/CLASS/*.jpg, optionally ROOT/train and ROOT/val|test);
                    for "images", any tree of images (labelled or not)
    coco            DIR/annotations/instances_<split>.json (or one such JSON file) with images in DIR/<split>/
    voc             DIR/Annotations/*.xml with DIR/JPEGImages/

Tasks here are the uses a source is resolved for: "classify", "detect", and "images" (any real images,
e.g. for calibration). Plain Python: no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digits import DIGITS
from .errors import RubikError
from .image_folder import IMAGE_EXTENSIONS

FOLDER, COCO, VOC, EMBEDDED = "folder", "coco", "voc", "embedded"  # the kinds beside DIGITS
TASKS = ("classify", "detect", "images")
EMBEDDED_CLASSES = 10  # digits:K's default K (all ten digits)

# Training defaults per (task, source), below the recipe's YAML file and the command line
# (recipes.build_config); "files" is any source read from disk.
#
# Digits are 8x8 grey images, upscaled once to the model's input: 64 px is plenty (and 3x faster to
# train than TinyNet-E's own 106), flips change a digit's meaning, in-memory data needs no worker
# processes. Crops keeping 80 % of the image or more and 3 warm-up epochs took the demo's twisted B0
# from 95.0 to 97.2 % in 15 epochs with the official head init, and are at least as good (99.2 -> 99.4 %
# best) with rubik's (benchmarks/digits_recipe.py).
# Detection: SSD has its own losses (no label smoothing); torchvision's SSDLite recipe clips nothing and
# has no dropout. The embedded detection set: no flips (a flipped 2 is no digit), generated in the main process.
_DETECT: dict[str, Any] = {"label_smoothing": 0.0, "drop_rate": 0.0, "crop_pct": 1.0, "crop_scale": [0.3, 1.0],
                           "color_jitter": 0.4, "hflip": 0.5}
TRAIN_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("classify", DIGITS): {"resolution": 64, "hflip": 0.0, "crop_scale": [0.8, 1.0], "crop_pct": 1.0,
                           "warmup_epochs": 3.0, "num_workers": 0},
    ("classify", "files"): {},
    ("detect", EMBEDDED): {**_DETECT, "hflip": 0.0, "num_workers": 0, "resolution": 160},
    ("detect", "files"): _DETECT,
}
MAX_LOADER_WORKERS = 8


class NoImagesError(RubikError):
    """A data folder that does not exist or holds no image files."""


@dataclass(frozen=True)
class Source:
    """A resolved data argument. `name` is the argument as given; `root` the folder of a source on disk;
    `annotation` a COCO JSON file given directly; `num_classes`/`count` the embedded detection set's K and N
    (count 0: its default)."""

    kind: str
    name: str
    root: Path | None = None
    annotation: Path | None = None
    num_classes: int = 0
    count: int = 0

    @property
    def embedded(self) -> bool:
        """Generated in memory (the digits sets): nothing to read from disk, nothing for loader workers to do."""
        return self.kind in (DIGITS, EMBEDDED)


def is_embedded(source: str | Path | Source) -> bool:
    """Whether `source` names an embedded set (`digits` or `digits:...`), from its name alone."""
    if isinstance(source, Source):
        return source.embedded
    name = str(source)
    return name == DIGITS or name.startswith(DIGITS + ":")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise RubikError(f"unknown data use {task!r}; choose one of {', '.join(TASKS)}")


def train_defaults(source: str | Path | Source, task: str = "classify") -> dict[str, Any]:
    """The training settings a source brings for `task` (a copy; the file system is not read)."""
    if task not in ("classify", "detect"):
        raise RubikError(f"rubik trains 'classify' and 'detect' tasks, not {task!r}")
    name = source.name if isinstance(source, Source) else str(source)
    embedded = name == DIGITS if task == "classify" else is_embedded(name)  # digits:K is a detection set only
    key = (task, (DIGITS if task == "classify" else EMBEDDED) if embedded else "files")
    return {k: list(v) if isinstance(v, list) else v for k, v in TRAIN_DEFAULTS[key].items()}


def loader_workers(source: str | Path | Source, num_workers: int = -1) -> int:
    """DataLoader worker processes: `num_workers` when set (>= 0); else none for an embedded set (in memory
    already) and one per spare core, up to 8, for files."""
    if num_workers >= 0:
        return num_workers
    return 0 if is_embedded(source) else min(MAX_LOADER_WORKERS, max(1, (os.cpu_count() or 2) - 1))
