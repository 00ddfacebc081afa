"""Detection data: COCO and Pascal VOC folders, and an embedded smoke-scale set that needs no download.

Every source becomes `DetectionImages`: a list of samples (image, boxes in pixels as x1 y1 x2 y2,
labels 1..K where 0 is torchvision's background, image size, image id) plus class names. Images
with no boxes are kept as negatives.

Layouts (rubik.sources resolves which one a source is):
    COCO  DIR/annotations/instances_<split>.json, images in DIR/<split>/ (or DIR/images/<split>/):
          train/val, train2017/val2017, ...; with a single annotation file (or one given as the source
          itself), val_split is held out.
    VOC   DIR/Annotations/*.xml and DIR/JPEGImages/; DIR/ImageSets/Main/{train,val}.txt when present.
    digits[:K[:N]]  the embedded set (EmbeddedDigits): K of scikit-learn's handwritten digit classes
          (default 10) pasted onto crops of scikit-learn's two sample photos, N training images (default
          1200) and N/5 validation images. A smoke-scale set for the
          demo and the tests, not a benchmark: 8x8 digits upscaled are blurry, easy objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import RubikError
from ..image_folder import IMAGE_EXTENSIONS
from ..sources import COCO, EMBEDDED_IMAGES, Source, resolve
from ..train.data import CorruptImageError

EMBEDDED_SIZE = 160  # px, square canvases
EMBEDDED_COUNTS = {"train": EMBEDDED_IMAGES, "val": EMBEDDED_IMAGES // 5}


class AnnotationError(RubikError):
    """An annotation file that is missing, malformed, or inconsistent with its images."""


@dataclass
class Sample:
    image: str  # a file path, or "embedded:<split>:<index>"
    boxes: np.ndarray  # N x 4 float32, x1 y1 x2 y2 in pixels of the original image
    labels: np.ndarray  # N int64, 1..K
    width: int
    height: int
    image_id: int


@dataclass
class DetectionData:
    train: Dataset
    val: Dataset
    classes: list[str]
    description: str
    dropped: int = 0  # boxes dropped while reading (outside the image or non-positive size)


class DetectionImages(Dataset):
    """Samples -> ((PIL image, {"boxes": BoundingBoxes, "labels"}), meta); an unreadable file -> (path, meta).

    The (image, target) pair travels as one value so that rubik's seeded `Transformed` wrapper and
    torchvision's v2 transforms (which take any nesting) apply one random transform to both.
    """

    def __init__(self, samples: list[Sample], classes: list[str], strict: bool = False, embedded: Any = None):
        self.samples, self.classes, self.strict, self.embedded = samples, classes, strict, embedded

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int):
        from PIL import Image

        s = self.samples[index]
        if s.image.startswith("embedded:"):
            return self.embedded.image(index)
        with Image.open(s.image) as img:
            return img.convert("RGB")

    def __getitem__(self, index: int):
        from PIL import Image
        from torchvision import tv_tensors

        s = self.samples[index]
        meta = {"image_id": s.image_id, "size": (s.height, s.width), "index": index}
        try:
            image = self.load_image(index)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            if self.strict:
                raise CorruptImageError(f"cannot read image {s.image} ({type(e).__name__}: {e}); "
                                        "remove or replace the file, or run without --strict to skip it") from None
            return s.image, meta
        if image.size != (s.width, s.height):  # the annotation's size is wrong: boxes are in the file's pixels
            meta["size"] = (image.height, image.width)
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(s.boxes).reshape(-1, 4), format="XYXY",
                                         canvas_size=(image.height, image.width))
        return (image, {"boxes": boxes, "labels": torch.from_numpy(s.labels)}), meta


def collate(batch: list) -> tuple[torch.Tensor, list[dict[str, Any]], list[str]]:
    """Images stacked (all are resized to one size), targets as torchvision's detection API wants them
    (dicts of boxes and labels, plus image_id and original size), and the paths of unreadable files."""
    good = [(x, meta) for x, meta in batch if not isinstance(x, str)]
    skipped = [x for x, _ in batch if isinstance(x, str)]
    if not good:
        return torch.empty(0), [], skipped
    images = torch.stack([img for (img, _), _ in good])
    targets = [{"boxes": t["boxes"].as_subclass(torch.Tensor).float(), "labels": t["labels"].long(), **meta}
               for (_, t), meta in good]
    return images, targets, skipped


# ---- transforms -----------------------------------------------------------------------------------


def train_transform(resolution: int, *, hflip: float = 0.5, photometric: bool = True, zoom_out: bool = True,
                    iou_crop: bool = True, crop_scale: tuple[float, float] = (0.3, 1.0),
                    fill: tuple[int, int, int] = (124, 116, 104)):
    """SSD's box-aware augmentation (torchvision's detection reference), then a resize to the square input."""
    from torchvision.transforms import v2

    ops: list[Any] = []
    if photometric:
        ops.append(v2.RandomPhotometricDistort(p=0.5))
    if zoom_out:
        ops.append(v2.RandomZoomOut(fill=list(fill), side_range=(1.0, 2.0), p=0.5))
    if iou_crop:
        ops.append(v2.RandomIoUCrop(min_scale=crop_scale[0], max_scale=crop_scale[1]))
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    ops += [v2.Resize((resolution, resolution), antialias=True), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.SanitizeBoundingBoxes(min_size=1)]
    return v2.Compose(ops)


def eval_transform(resolution: int):
    """Resize (Pillow bilinear, as the deployed runtime) to the square input; no crop, so boxes map back."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize((resolution, resolution), antialias=True), v2.ToImage(),
                       v2.ToDtype(torch.float32, scale=True)])


# ---- reading and checking boxes -------------------------------------------------------------------


def _clean_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the image; returns (clipped boxes, mask of boxes kept: positive size inside the image)."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4), np.zeros(0, dtype=bool)
    finite = np.isfinite(boxes).all(1)
    b = np.nan_to_num(boxes).copy()
    positive = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b[:, 0::2] = b[:, 0::2].clip(0, width)
    b[:, 1::2] = b[:, 1::2].clip(0, height)
    inside = (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)
    return b, finite & positive & inside


class _BoxCheck:
    """Counts dropped boxes per file; with `strict`, the first one is an error."""

    def __init__(self, strict: bool, source: str):
        self.strict, self.source, self.dropped, self.example = strict, source, 0, ""

    def check(self, boxes: np.ndarray, labels: np.ndarray, width: int, height: int, where: str):
        b, keep = _clean_boxes(boxes, width, height)
        bad = int((~keep).sum())
        if bad:
            first = boxes[~keep][0].round(1).tolist()
            if self.strict:
                raise AnnotationError(f"{where} has a box {first} (x1 y1 x2 y2) outside its {width}x{height} image "
                                      f"or of non-positive size; fix it, or run without --strict to drop such boxes")
            self.dropped += bad
            self.example = self.example or f"{where}: {first}"
        return b[keep].astype(np.float32), labels[keep].astype(np.int64)

    def note(self) -> str:
        if not self.dropped:
            return ""
        return (f"; dropped {self.dropped} boxes outside the image or of non-positive size from {self.source} "
                f"(e.g. {self.example}; --strict fails instead)")


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist; the COCO layout is "
                              "DIR/annotations/instances_<split>.json with images in DIR/<split>/")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AnnotationError(f"annotation file {path} is not valid JSON ({e.msg} at line {e.lineno} column "
                              f"{e.colno}); fix the file or export it again") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"annotation file {path} cannot be read ({type(e).__name__}); check the file") from None


def coco_categories(data: dict, path: Path) -> tuple[dict[int, int], list[str]]:
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise AnnotationError(f"annotation file {path} has no 'categories' list; a COCO file needs "
                              "'images', 'annotations' and 'categories'")
    try:
        cats = sorted(cats, key=lambda c: int(c["id"]))
        return {int(c["id"]): i + 1 for i, c in enumerate(cats)}, [str(c["name"]) for c in cats]
    except (KeyError, TypeError, ValueError):
        raise AnnotationError(f"annotation file {path}: every category needs an integer 'id' and a 'name'") from None


def read_coco(path: Path, image_dir: Path, strict: bool = False,
              categories: tuple[dict[int, int], list[str]] | None = None) -> tuple[list[Sample], list[str], _BoxCheck]:
    """One COCO annotation file -> samples (every listed image, boxed or not), class names, dropped-box count."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"annotation file {path} holds a {type(data).__name__}, not a COCO object with "
                              "'images', 'annotations' and 'categories'")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"annotation file {path} has no '{key}' list; a COCO file needs 'images', "
                                  "'annotations' and 'categories'")
    cat_map, names = categories or coco_categories(data, path)
    images: dict[int, dict] = {}
    for im in data["images"]:
        try:
            images[int(im["id"])] = {"file": str(im["file_name"]), "w": int(im["width"]), "h": int(im["height"]),
                                     "boxes": [], "labels": []}
        except (KeyError, TypeError, ValueError):
            raise AnnotationError(f"annotation file {path}: image entry {str(im)[:80]} needs 'id', 'file_name', "
                                  "'width' and 'height'") from None
    for ann in data["annotations"]:
        try:
            image_id, cat, (x, y, w, h) = int(ann["image_id"]), int(ann["category_id"]), ann["bbox"]
        except (KeyError, TypeError, ValueError):
            raise AnnotationError(f"annotation file {path}: annotation {str(ann)[:80]} needs 'image_id', "
                                  "'category_id' and 'bbox' [x, y, width, height]") from None
        if cat not in cat_map:
            raise AnnotationError(f"annotation file {path}: annotation {ann.get('id', '?')} has category_id {cat}, "
                                  f"which is not in its categories (ids {sorted(cat_map)[:10]}); add the category "
                                  "or remove the annotation")
        if image_id not in images:
            raise AnnotationError(f"annotation file {path}: annotation {ann.get('id', '?')} refers to image_id "
                                  f"{image_id}, which is not in 'images'; add the image or remove the annotation")
        if ann.get("iscrowd", 0):
            continue  # crowd regions are not objects to detect (COCOeval ignores matches to them)
        images[image_id]["boxes"].append([float(x), float(y), float(x) + float(w), float(y) + float(h)])
        images[image_id]["labels"].append(cat_map[cat])
    check = _BoxCheck(strict, str(path))
    samples = []
    for image_id, im in images.items():
        file = image_dir / im["file"]
        if not file.is_file():
            raise AnnotationError(f"image {file} is listed in {path} but does not exist; put the images in "
                                  f"{image_dir}/ or remove the entry")
        boxes = np.asarray(im["boxes"], dtype=np.float64).reshape(-1, 4)
        b, lab = check.check(boxes, np.asarray(im["labels"], dtype=np.int64), im["w"], im["h"],
                             f"{path} image {image_id} ({im['file']})")
        samples.append(Sample(str(file), b, lab, im["w"], im["h"], image_id))
    return samples, names, check


def _coco_image_dir(root: Path, split: str) -> Path:
    for d in (root / split, root / "images" / split, root / "images"):
        if d.is_dir():
            return d
    raise AnnotationError(f"no image folder for split {split!r}: expected {root / split}/ (or "
                          f"{root / 'images' / split}/) beside {root / 'annotations'}/")


def _voc_object(obj, path: Path, classes_seen: list[str]):
    name = (obj.findtext("name") or "").strip()
    box = obj.find("bndbox")
    if not name or box is None:
        raise AnnotationError(f"VOC file {path}: an <object> needs <name> and <bndbox>; fix the file")
    try:
        x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (TypeError, ValueError):
        raise AnnotationError(f"VOC file {path}: object {name!r} needs numeric xmin, ymin, xmax, ymax") from None
    if name not in classes_seen:
        classes_seen.append(name)
    return name, [x1 - 1, y1 - 1, x2, y2]  # VOC pixels are 1-based and inclusive


def read_voc(root: Path, strict: bool = False, classes: list[str] | None = None):
    """A VOC folder -> {image stem: Sample}, class names (sorted; or the given list), box check."""
    import xml.etree.ElementTree as ET

    from PIL import Image

    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    if not img_dir.is_dir():
        raise AnnotationError(f"{root} has Annotations/ but no JPEGImages/; the VOC layout is "
                              "DIR/Annotations/*.xml with the images in DIR/JPEGImages/")
    parsed, seen = [], []
    for path in sorted(ann_dir.glob("*.xml")):
        try:
            tree = ET.parse(path).getroot()
        except ET.ParseError as e:
            raise AnnotationError(f"VOC file {path} is not valid XML ({e}); fix the file or remove it") from None
        file = img_dir / (tree.findtext("filename") or f"{path.stem}.jpg").strip()
        if not file.is_file():
            alt = next((img_dir / f"{path.stem}{ext}" for ext in IMAGE_EXTENSIONS if (img_dir / f"{path.stem}{ext}")
                        .is_file()), None)
            if alt is None:
                raise AnnotationError(f"image {file} is named by {path} but does not exist; add the image or remove "
                                      "the annotation file")
            file = alt
        try:
            w, h = int(float(tree.findtext("size/width"))), int(float(tree.findtext("size/height")))
        except (TypeError, ValueError):
            w = h = 0
        if w <= 0 or h <= 0:
            with Image.open(file) as im:
                w, h = im.size
        objects = [_voc_object(o, path, seen) for o in tree.findall("object")]
        parsed.append((path, file, w, h, objects))
    if not parsed:
        raise AnnotationError(f"no VOC annotation files in {ann_dir}; expected {ann_dir}/NAME.xml")
    names = classes or sorted(seen)
    index = {n: i + 1 for i, n in enumerate(names)}
    unknown = sorted(set(seen) - set(index))
    if unknown:
        raise AnnotationError(f"VOC objects of class {unknown[:3]} under {ann_dir} are not among the model's classes "
                              f"{names[:6]}...; use data with the classes the model was trained on")
    check = _BoxCheck(strict, str(ann_dir))
    samples = {}
    for i, (path, file, w, h, objects) in enumerate(parsed):
        boxes = np.asarray([b for _, b in objects], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray([index[n] for n, _ in objects], dtype=np.int64)
        b, lab = check.check(boxes, labels, w, h, str(path))
        samples[path.stem] = Sample(str(file), b, lab, w, h, i + 1)
    return samples, names, check


def _read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _holdout(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(len(samples) * fraction))
    return [samples[i] for i in sorted(order[n_val:])], [samples[i] for i in sorted(order[:n_val])]


def _coco_splits(source: Source) -> dict[str, Path]:
    """{split name: annotation file}: the one file given, or every annotations/instances_<split>.json."""
    files = [source.annotation] if source.annotation else sorted((source.root / "annotations").glob("instances_*.json"))
    return {f.stem.removeprefix("instances_"): f for f in files}


def open_detection_data(source: str | Source, val_split: float = 0.1, seed: int = 0, strict: bool = False,
                        classes: list[str] | None = None, split: str | None = None) -> DetectionData:
    """Training and validation sets from a COCO folder or annotation file, a VOC folder, or the embedded
    `digits[:K[:N]]` (rubik.sources resolves which).

    `split="val"` (for evaluation) reads only what validation needs. `classes`, when given (a trained model's),
    fixes the class order.
    """
    src = resolve(source, "detect")
    if src.embedded:
        return open_embedded(src)
    if src.kind == COCO:
        return _open_coco(src, val_split, seed, strict, classes, split)
    return _open_voc(src.root, val_split, seed, strict, classes)


def _open_coco(source: Source, val_split, seed, strict, classes, split) -> DetectionData:
    root = source.root
    files = _coco_splits(source)
    if not files:
        raise AnnotationError(f"no annotations/instances_<split>.json in {root}; the COCO layout is "
                              "DIR/annotations/instances_train.json + DIR/train/ (and instances_val.json + DIR/val/)")
    train_name = next((s for s in files if s.startswith("train")), None)
    val_name = next((s for s in files if s.startswith(("val", "valid", "test"))), None)
    if train_name is None and val_name is None:
        train_name = next(iter(files))
    ref = files[train_name or val_name]
    ref_data = _load_json(ref)
    cats = coco_categories(ref_data, ref) if isinstance(ref_data, dict) else None
    if classes is not None and cats is not None and cats[1] != list(classes):
        raise AnnotationError(f"the categories of {ref} ({cats[1][:4]}...) differ from the model's classes "
                              f"({list(classes)[:4]}...); evaluate on data with the classes it was trained on")
    notes, dropped = [], 0

    def read(name):
        nonlocal dropped
        samples, names, check = read_coco(files[name], _coco_image_dir(root, name), strict, cats)
        dropped += check.dropped
        notes.append(check.note())
        return samples, names

    if split == "val" and val_name:
        val, names = read(val_name)
        train = []
        how = f"{files[val_name]}"
    elif train_name and val_name:
        (train, names), (val, _) = read(train_name), read(val_name)
        how = f"{files[train_name]} and {files[val_name]}"
    else:
        train, names = read(train_name or val_name)
        train, val = _holdout(train, val_split, seed)
        how = f"{files[train_name or val_name]}, {val_split:.0%} held out"
    if not val:
        raise AnnotationError(f"no validation images in {root}: add annotations/instances_val.json and val/")
    desc = (f"COCO {how}: {len(names)} classes, {len(train)} train / {len(val)} val images"
            + "".join(n for n in notes if n))
    return DetectionData(DetectionImages(train, names, strict), DetectionImages(val, names, strict), names, desc,
                         dropped)


def _open_voc(root, val_split, seed, strict, classes) -> DetectionData:
    samples, names, check = read_voc(root, strict, classes)
    sets = root / "ImageSets" / "Main"
    if (sets / "train.txt").is_file() and (sets / "val.txt").is_file():
        def pick(f):
            ids = _read_ids(sets / f)
            missing = [i for i in ids if i not in samples]
            if missing:
                raise AnnotationError(f"{sets / f} lists {missing[0]}, which has no Annotations/{missing[0]}.xml; "
                                      "add it or remove the line")
            return [samples[i] for i in ids]
        train, val = pick("train.txt"), pick("val.txt")
        how = f"{root} (ImageSets/Main train/val)"
    else:
        train, val = _holdout(list(samples.values()), val_split, seed)
        how = f"{root}, {val_split:.0%} held out"
    desc = f"VOC {how}: {len(names)} classes, {len(train)} train / {len(val)} val images{check.note()}"
    return DetectionData(DetectionImages(train, names, strict), DetectionImages(val, names, strict), names, desc,
                         check.dropped)


# ---- the embedded set ------------------------------------------------------------------------------


class EmbeddedDigits:
    """Digits from scikit-learn pasted onto crops of its two sample photos, generated from the index alone.

    Deterministic: image i of a split is the same on every machine and in every worker. Training images
    use the digits' train split, validation images the test split (no digit is in both).
    """

    def __init__(self, split: str, num_classes: int = 10, count: int | None = None, size: int = EMBEDDED_SIZE):
        from sklearn.datasets import load_sample_images

        from ..digits import digits_split

        images, labels = digits_split("train" if split == "train" else "test")
        keep = [i for i, t in enumerate(labels) if t < num_classes]
        self.digits = images[keep, :, :, 0]
        self.labels = np.asarray(labels)[keep]
        self.backgrounds = load_sample_images().images
        self.split, self.size = split, size
        self.count = count or EMBEDDED_COUNTS["train" if split == "train" else "val"]
        self.seed = 1 if split == "train" else 2

    def layout(self, index: int) -> tuple[np.random.Generator, list[tuple[int, int, int, int]]]:
        """(generator positioned after the layout, [(digit index, x, y, side)]), non-overlapping."""
        rng = np.random.default_rng([self.seed, index])
        n = 0 if rng.random() < 0.05 else int(rng.integers(1, 4))  # ~5 % negatives
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(n * 10):
            if len(placed) == n:
                break
            side = int(rng.integers(self.size // 6, self.size // 2.5))
            x, y = int(rng.integers(0, self.size - side)), int(rng.integers(0, self.size - side))
            if all(x + side <= px or px + ps <= x or y + side <= py or py + ps <= y for _, px, py, ps in placed):
                placed.append((int(rng.integers(len(self.labels))), x, y, side))
        return rng, placed

    def sample(self, index: int, image_id: int) -> Sample:
        _, placed = self.layout(index)
        boxes, labels = [], []
        for d, x, y, side in placed:
            ys, xs = np.nonzero(self.digits[d] > 40)  # the ink's extent in the 8x8 digit, scaled to the paste
            scale = side / 8
            boxes.append([x + xs.min() * scale, y + ys.min() * scale, x + (xs.max() + 1) * scale,
                          y + (ys.max() + 1) * scale])
            labels.append(int(self.labels[d]) + 1)
        return Sample(f"embedded:{self.split}:{index}", np.asarray(boxes, np.float32).reshape(-1, 4),
                      np.asarray(labels, np.int64), self.size, self.size, image_id)

    def image(self, index: int):
        from PIL import Image

        rng, placed = self.layout(index)
        bg = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        crop = int(rng.integers(self.size, min(bg.shape[:2])))
        top, left = int(rng.integers(0, bg.shape[0] - crop)), int(rng.integers(0, bg.shape[1] - crop))
        canvas = Image.fromarray(bg[top:top + crop, left:left + crop]).resize((self.size, self.size),
                                                                              Image.Resampling.BILINEAR)
        for d, x, y, side in placed:
            alpha = Image.fromarray(self.digits[d]).resize((side, side), Image.Resampling.BICUBIC)
            patch = canvas.crop((x, y, x + side, y + side))
            dark = np.asarray(patch).mean() > 110  # ink that contrasts with what lies under it
            color = tuple(int(c) for c in (rng.integers(0, 50, 3) if dark else rng.integers(205, 256, 3)))
            canvas.paste(Image.new("RGB", (side, side), color), (x, y), alpha)
        return canvas


def open_embedded(source: Source) -> DetectionData:
    """The embedded set of a resolved `digits[:K[:N]]`: K classes, N training and max(20, N/5) validation images."""
    k, n = source.num_classes, source.count
    splits = {}
    for split in ("train", "val"):
        gen = EmbeddedDigits(split, k, n if split == "train" else max(20, n // 5))
        samples = [gen.sample(i, i + 1) for i in range(gen.count)]
        splits[split] = DetectionImages(samples, [str(i) for i in range(k)], embedded=gen)
    names = [str(i) for i in range(k)]
    desc = (f"embedded digits ({k} classes of scikit-learn's digits on its sample photos, {EMBEDDED_SIZE} px; "
            f"{len(splits['train'])} train / {len(splits['val'])} val images; smoke-scale, not a benchmark)")
    return DetectionData(splits["train"], splits["val"], names, desc)


def image_sizes(dataset: DetectionImages) -> list[tuple[int, int]]:
    return [(s.height, s.width) for s in dataset.samples]


__all__ = ["AnnotationError", "DetectionData", "DetectionImages", "EmbeddedDigits", "Sample", "collate",
           "eval_transform", "open_detection_data", "read_coco", "read_voc", "train_transform"]
