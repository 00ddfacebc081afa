"""Data: an ImageFolder tree or the embedded `digits`, transforms v2, and a resumable sampler.

Augmentation randomness is seeded per sample from (run seed, epoch, index) rather than drawn from
a stream, so a run resumed in the middle of an epoch sees exactly the crops and flips it would have
seen, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler, get_worker_info
from torchvision.transforms import v2

from ..digits import CLASSES as DIGIT_CLASSES
from ..digits import DIGITS, digits_split, upscale  # noqa: F401 (DIGITS: for train/cli.cmd_eval until it calls open_eval_split)
from ..errors import RubikError
from ..image_folder import DEFAULT_HOLDOUT, IMAGE_EXTENSIONS, folder_splits, scan_folder, split_folder
from ..sources import resolve


class CorruptImageError(RubikError):
    """An image file that cannot be decoded (raised only with --strict)."""


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    classes: list[str]
    description: str


class DigitsImages(Dataset):
    """The embedded digits (rubik.digits) as RGB uint8 tensors at `resolution`, upscaled once with the
    deployed model's own filter."""

    def __init__(self, split: str, resolution: int):
        images, self.targets = digits_split(split)
        self.images = torch.from_numpy(upscale(images, resolution)).permute(0, 3, 1, 2).contiguous()
        self.classes = list(DIGIT_CLASSES)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from torchvision import tv_tensors

        return tv_tensors.Image(self.images[index]), self.targets[index]


class ImageFiles(Dataset):
    """(path, class index) pairs decoded with PIL; an unreadable file yields its path instead of an image."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], strict: bool = False):
        self.samples, self.classes, self.strict = samples, classes, strict
        self.targets = [t for _, t in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        path, target = self.samples[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB"), target
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            if self.strict:
                raise CorruptImageError(f"cannot read image {path} ({type(e).__name__}: {e}); "
                                        "remove or replace the file, or train without --strict to skip it") from None
            return path, target  # the collate function drops it and counts it


def worker_error(e: RubikError) -> RubikError:
    """A RubikError raised in a DataLoader worker arrives wrapped in the worker's traceback: keep its message."""
    text = str(e)
    if "Original Traceback" not in text:
        return e
    last = [line for line in text.splitlines() if line.strip()][-1]
    return type(e)(last.split(": ", 1)[1] if ": " in last else last)


def class_count(source: str) -> int:
    """How many classes `digits` or an ImageFolder tree has, from its folder names alone (no image is read)."""
    src = resolve(source, "classify")
    if src.embedded:
        return len(DIGIT_CLASSES)
    return sum(1 for d in split_folder(src.root, "train").iterdir() if d.is_dir() and not d.name.startswith("."))


def open_data(source: str, resolution: int, val_split: float = 0.1, seed: int = 0, strict: bool = False) -> DataSplits:
    """Training and validation sets from `digits` or an ImageFolder tree.

    A tree with train/ and val/ (or valid/, validation/, test/) uses them; otherwise the classes
    directly under the root are split `val_split` for validation.
    """
    src = resolve(source, "classify")
    if src.embedded:
        train = DigitsImages("train", resolution)
        return DataSplits(train, DigitsImages("test", resolution), train.classes,
                          "digits (scikit-learn, 1437 train / 360 test)")
    root = src.root
    splits = folder_splits(root, val_split, seed)
    train_samples, val_samples, classes, how = splits.train, splits.val, splits.classes, splits.how
    if not classes or not train_samples:
        raise RubikError(f"no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS[:4])}, ...); "
                         "expected ROOT/CLASS/IMAGE or ROOT/train/CLASS/IMAGE")
    if len(classes) < 2:
        raise RubikError(f"{root} has only one class folder ({classes[0]}); a classifier needs at least two")
    if not val_samples:
        raise RubikError(f"no validation images for {root}: add a val/ folder or more images per class")
    desc = f"{how}: {len(classes)} classes, {len(train_samples)} train / {len(val_samples)} val images"
    return DataSplits(ImageFiles(train_samples, classes, strict), ImageFiles(val_samples, classes, strict),
                      classes, desc)


def open_eval_split(source: str, resolution: int, holdout: tuple[float, int] = DEFAULT_HOLDOUT,
                    strict: bool = False) -> DigitsImages | ImageFiles:
    """The images a classifier run validated on, for `rubik eval`: digits' test split, ROOT's evaluation folder
    (val/, valid/, validation/ or test/), else the `holdout` (fraction, seed) the run held out of ROOT."""
    src = resolve(source, "classify")
    if src.embedded:
        return DigitsImages("test", resolution)
    folder = split_folder(src.root, "eval")
    if folder != src.root:
        samples, classes = scan_folder(folder)
    else:
        splits = folder_splits(src.root, *holdout)
        samples, classes = splits.val, splits.classes
    if not samples:
        raise RubikError(f"no images found under {folder}; expected ROOT/val/CLASS/IMAGE or ROOT/CLASS/IMAGE")
    return ImageFiles(samples, classes, strict)


def _interp(name: str) -> v2.InterpolationMode:
    return v2.InterpolationMode.BICUBIC if name == "bicubic" else v2.InterpolationMode.BILINEAR


def train_transform(resolution: int, mean, std, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                    interpolation: str = "bicubic", hflip: float = 0.5, color_jitter: float = 0.0,
                    randaugment: bool = False, ra_ops: int = 2, ra_magnitude: int = 9) -> v2.Compose:
    # Crop, flip and jitter on the decoded PIL image: Pillow's bicubic resize of a crop is ~15 % cheaper
    # than torch's on a uint8 tensor (CIFAR-10 at 64 px: 4,000 against 3,500 images/s per core).
    # In-memory data (digits) arrives as tensors and takes the same ops on tensors.
    ops: list[Any] = [v2.RandomResizedCrop(resolution, scale=tuple(scale), ratio=tuple(ratio),
                                           interpolation=_interp(interpolation), antialias=True)]
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if color_jitter > 0:
        ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    ops.append(v2.ToImage())
    if randaugment:
        # Its rotations and shears run on tensors, where torchvision has no bicubic: bilinear there.
        ops.append(v2.RandAugment(num_ops=ra_ops, magnitude=ra_magnitude,
                                  interpolation=v2.InterpolationMode.BILINEAR))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


def eval_transform(resolution: int, mean, std, crop_pct: float = 0.875, interpolation: str = "bicubic") -> v2.Compose:
    """Resize the short side to resolution / crop_pct, then take the centre: the usual evaluation view."""
    return v2.Compose([v2.ToImage(),
                       v2.Resize(math.floor(resolution / crop_pct), interpolation=_interp(interpolation),
                                 antialias=True),
                       v2.CenterCrop(resolution), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(mean), list(std))])


class Transformed(Dataset):
    """Applies a transform; keys are indices, or (index, seed) pairs that seed the augmentation."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, target = self.base[index]
        if isinstance(image, str):  # an unreadable file: pass its path on to be counted
            return image, target
        if seed is None:
            return self.transform(image), target
        # Transforms draw from the default CPU generator. Seeding only it costs 1 us, where
        # torch.manual_seed (which also visits every accelerator) costs 200 us per image.
        gen = torch.default_generator
        if get_worker_info() is not None:  # a worker process: its generator serves nothing else
            gen.manual_seed(seed)
            return self.transform(image), target
        state = gen.get_state()  # the main process: the same generator drives dropout, so restore it
        try:
            gen.manual_seed(seed)
            return self.transform(image), target
        finally:
            gen.set_state(state)


def collate(batch: list[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack images and targets, dropping unreadable files and returning their paths."""
    good = [(x, y) for x, y in batch if not isinstance(x, str)]
    skipped = [x for x, _ in batch if isinstance(x, str)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), skipped


class EpochSampler(Sampler):
    """A seeded permutation per epoch, sharded across processes, that can start part-way through.

    Yields (index, sample_seed) pairs. `set_epoch(epoch, start)` skips the first `start` samples of
    this process's share, which is how a run resumes in the middle of an epoch.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.per_rank = size // world_size  # every process takes the same number (the few left over wait)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        mine = order[self.rank: self.per_rank * self.world_size: self.world_size][self.start:].tolist()
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        return iter([(i, (base + i) % (2**63 - 1)) for i in mine])


class Shard(Sampler):
    """Every world_size-th index from rank: evaluation splits the whole set with no padding."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)
