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
EMBEDDED_CLASSES, EMBEDDED_IMAGES = 10, 1200  # digits:K:N's defaults: all ten digits, 1,200 training images

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
    `annotation` a COCO JSON file given directly; `num_classes`/`count` the embedded detection set's K and N."""

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


_HINTS = {
    "classify": "pass an ImageFolder tree (ROOT/train/CLASS/*.jpg and ROOT/val/CLASS/*.jpg, or ROOT/CLASS/*.jpg) "
                "or 'digits'",
    "detect": "pass a COCO folder (DIR/annotations/instances_<split>.json), a VOC folder (DIR/Annotations/), "
              "or 'digits'",
    "images": "pass a folder of images (ROOT/CLASS/*.jpg) or 'digits'",
}


def resolve(source: str | Path | Source, task: str = "classify") -> Source:
    """What `source` is, for `task` ("classify", "detect" or "images"); a one-line RubikError naming the
    problem and the fix when it is missing, empty or of a layout the task cannot use."""
    if task not in TASKS:
        raise RubikError(f"unknown data use {task!r}; choose one of {', '.join(TASKS)}")
    if isinstance(source, Source):
        return source
    name = str(source)
    if is_embedded(name):
        return _embedded(name, task)
    path = Path(name).expanduser()
    try:
        exists = path.exists()
    except OSError as e:  # e.g. a folder on the way that we may not enter
        raise RubikError(f"data folder {path} is not readable ({_reason(e)}); fix its permissions") from None
    if not exists:
        raise NoImagesError(f"data folder {path} does not exist; {_HINTS[task]}")
    if path.is_file():
        if path.suffix.lower() == ".json" and task == "detect":
            root = path.parent.parent if path.parent.name == "annotations" else path.parent
            return Source(COCO, name, root, annotation=path)
        raise RubikError(f"data path {path} is a file; {_HINTS[task]}")
    kind = COCO if (path / "annotations").is_dir() else VOC if (path / "Annotations").is_dir() else FOLDER
    if task == "detect" and kind == FOLDER:
        raise RubikError(f"{path} is neither a COCO folder (annotations/instances_<split>.json) nor a VOC folder "
                         "(Annotations/*.xml + JPEGImages/); rearrange it, or pass 'digits' for the embedded set")
    if task == "classify" and kind != FOLDER:
        raise RubikError(f"{path} is a {kind.upper()} detection folder; train a detector on it, or pass a classifier "
                         "an ImageFolder tree (ROOT/CLASS/*.jpg) or 'digits'")
    if kind == FOLDER:
        _require_images(path, task)
    return Source(kind, name, path)


def _embedded(name: str, task: str) -> Source:
    if task != "detect":
        if name != DIGITS:
            raise RubikError(f"{name!r} is the embedded detection set; {_HINTS[task]}")
        return Source(DIGITS, name)
    parts = name.split(":")
    try:
        k = int(parts[1]) if len(parts) > 1 else EMBEDDED_CLASSES
        n = int(parts[2]) if len(parts) > 2 else EMBEDDED_IMAGES
    except ValueError:
        k = n = 0
    if len(parts) > 3 or not 1 <= k <= EMBEDDED_CLASSES or n < 10:
        raise RubikError(f"embedded data {name!r}: write digits, digits:K or digits:K:N with K in 1..10 (the "
                         "classes 0..K-1) and N >= 10 training images")
    return Source(EMBEDDED, name, num_classes=k, count=n)


def _require_images(root: Path, task: str) -> None:
    """Stops at the first image file under `root` (cheap on a large tree); none, or an unreadable folder: an error."""
    def unreadable(e: OSError):
        raise RubikError(f"data folder {e.filename} is not readable ({_reason(e)}); fix its permissions")

    for _, _, files in os.walk(root, onerror=unreadable, followlinks=True):
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            return
    layout = {"classify": "expected ROOT/CLASS/IMAGE or ROOT/train/CLASS/IMAGE",
              "images": "pass a folder that holds the calibration images, e.g. ROOT/CLASS/*.jpg"}[task]
    raise NoImagesError(f"no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS[:4])}, ...); {layout}")


def _reason(e: OSError) -> str:
    return (e.strerror or type(e).__name__).lower()
