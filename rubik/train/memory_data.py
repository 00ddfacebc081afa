"""In-memory data: decode an image set once into a uint8 cache on disk, then augment whole batches on tensors.

For data sets that fit in memory (CIFAR-10 is 184 MB as uint8) most of a small model's training time on
a CPU goes to the file path: reading and decoding JPEGs, per-image Pillow work and worker processes that
compete with the training threads for the cores. Here the images are decoded once into a `.npy` file
(N, H, W, 3) uint8 under the cache folder, memory-mapped on later runs, and each batch is gathered,
cropped, flipped, jittered and RandAugment-ed as tensors in the training process, on the training device.

The cache is keyed by the image files (path, size, mtime, label) and the stored image size: a changed,
added or removed file makes a new cache, and the stale one is deleted. Images of one common size (CIFAR,
MNIST, most benchmark sets) are stored as they are; sets of mixed sizes are stored with the short side
resized to resolution / crop_pct and centre-cropped to a square, so `auto` keeps them on the file path.

Randomness: batch b of epoch e takes its crops, flips and RandAugment choices from a generator seeded with
(seed, epoch, b, rank), and the batch order comes from the same EpochSampler as the file path, so a run
resumed part-way through an epoch sees exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import RubikError
from ..sources import is_embedded
from .data import CorruptImageError, DataSplits, EpochSampler, Shard, _interp

log = logging.getLogger("rubik.train")

CACHE_VERSION = 1
DATA_PATHS = ("auto", "memory", "files")
SIZE_PROBES = 32  # images whose header is read to tell whether a set has one common size
DENSE_RESIZE_PIXELS = 96 * 96  # stored images up to this size are cropped and resized by matrix products


def default_cache_dir() -> Path:
    env = os.environ.get("RUBIK_CACHE")
    if env:
        return Path(env).expanduser() / "decoded"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "rubik" / "decoded"


def memory_limit_bytes(gb: float) -> int:
    """`gb` GiB, or (0) a quarter of the machine's physical memory."""
    if gb > 0:
        return int(gb * 2**30)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


# ---- the decoded cache --------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """A decoded image set: images[i] is samples[i] as (H, W, 3) uint8; bad[i] marks a file that could not
    be read (its row is zeros)."""

    images: torch.Tensor  # (N, H, W, 3) uint8, memory-mapped from the cache file
    rows: dict[str, int]  # sample path -> row
    bad: list[str]
    path: Path | None  # the cache file (None for data that was never on disk, e.g. digits)


def common_size(paths: list[str]) -> tuple[int, int] | None:
    """(height, width) if the probed images share one size, else None. Reads headers only."""
    from PIL import Image

    if not paths:
        return None
    step = max(1, len(paths) // SIZE_PROBES)
    sizes = set()
    for p in paths[::step][:SIZE_PROBES]:
        try:
            with Image.open(p) as img:
                sizes.add((img.height, img.width))
        except (OSError, ValueError, SyntaxError):
            continue  # a corrupt file says nothing about the others
    return next(iter(sizes)) if len(sizes) == 1 else None


def store_size(paths: list[str], resolution: int, crop_pct: float) -> tuple[tuple[int, int], bool]:
    """The stored (H, W) and whether it is every image's own size."""
    size = common_size(paths)
    if size is not None:
        return size, True
    side = math.floor(resolution / (crop_pct or 1.0))
    return (side, side), False


def _cache_key(samples: list[tuple[str, int]], size: tuple[int, int]) -> str:
    h = hashlib.sha256(f"rubik-decoded-v{CACHE_VERSION} {size[0]}x{size[1]}\n".encode())
    for path, target in samples:
        try:
            st = os.stat(path)
            h.update(f"{path}\t{target}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\t{target}\tmissing\n".encode())
    return h.hexdigest()


def _common_root(samples: list[tuple[str, int]]) -> str:
    return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p, _ in samples]) if samples else ""


def _decode_one(path: str, size: tuple[int, int], exact: bool) -> np.ndarray | str:
    """(H, W, 3) uint8, or an error text for an unreadable file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size[1], size[0]):
                if exact:  # a set of one size with an odd one out: bring it to the common size
                    img = img.resize((size[1], size[0]), Image.BICUBIC)
                else:  # mixed sizes: short side to the stored size, centre square (the evaluation view)
                    scale = size[0] / min(img.size)
                    w, h = max(size[1], round(img.width * scale)), max(size[0], round(img.height * scale))
                    img = img.resize((w, h), Image.BICUBIC)
                    left, top = (w - size[1]) // 2, (h - size[0]) // 2
                    img = img.crop((left, top, left + size[1], top + size[0]))
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"


class _DecodeSet(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], size: tuple[int, int], exact: bool):
        self.paths, self.size, self.exact = paths, size, exact

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return i, _decode_one(self.paths[i], self.size, self.exact)


def _decode_all(paths: list[str], size: tuple[int, int], exact: bool, out: np.ndarray, strict: bool,
                workers: int) -> list[str]:
    bad = []
    # A private generator: iterating a DataLoader draws a seed, and the global RNG (dropout) must not move,
    # or a run that decodes would differ from one that reads the cache.
    loader = torch.utils.data.DataLoader(_DecodeSet(paths, size, exact), batch_size=256, num_workers=workers,
                                         collate_fn=list, generator=torch.Generator())
    for chunk in loader:
        for i, image in chunk:
            if isinstance(image, str):
                if strict:
                    raise CorruptImageError(f"cannot read image {paths[i]} ({image}); remove or replace the file, "
                                            "or train without --strict to skip it")
                bad.append(paths[i])
                continue
            out[i] = image
    return bad


def _prune(cache_dir: Path, root: str, keep: str) -> None:
    """Delete caches of the same source with another key (stale) and caches whose source folder is gone."""
    for meta_path in cache_dir.glob("*.json"):
        if meta_path.stem == keep:
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("root") == root or not Path(meta.get("root", "/")).exists():
            for p in (meta_path.with_suffix(".npy"), meta_path):
                p.unlink(missing_ok=True)


def decode_cached(samples: list[tuple[str, int]], size: tuple[int, int], exact: bool, cache_dir: Path,
                  strict: bool = False, workers: int | None = None, build: bool = True) -> Decoded:
    """The decoded images of `samples`, from the cache when its key matches, else decoded now and cached.

    `build=False` (other processes under torchrun) only opens a cache that rank 0 has written.
    """
    key = _cache_key(samples, size)
    root = _common_root(samples)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(root).name or "data")[:40] + "-" + key[:16]
    cache_dir = Path(cache_dir)
    npy, meta_path = cache_dir / f"{name}.npy", cache_dir / f"{name}.json"
    paths = [p for p, _ in samples]
    meta = None
    if meta_path.is_file() and npy.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = None
        if meta is not None and (meta.get("key") != key or meta.get("shape") != [len(paths), size[0], size[1], 3]):
            meta = None
    if meta is None:
        if not build:
            raise RubikError(f"the decoded-image cache {npy} was not written by rank 0; check that {cache_dir} is "
                             "a folder every process shares, or use --data-path files")
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RubikError(f"cannot create the decoded-image cache folder {cache_dir} ({e.strerror}); set "
                             "data_cache (--set data_cache=DIR) or RUBIK_CACHE to a writable folder, or use "
                             "--data-path files") from None
        if workers is None:
            workers = 0 if len(paths) < 2000 else min(8, os.cpu_count() or 1)
        tmp = cache_dir / f".{name}.{os.getpid()}.npy"
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size[0], size[1], 3))
            bad = _decode_all(paths, size, exact, out, strict, workers)
            out.flush()
            del out
            os.replace(tmp, npy)
        except OSError as e:
            raise RubikError(f"cannot write the decoded-image cache {npy} ({e.strerror}); free disk space, set "
                             "data_cache to another folder, or use --data-path files") from None
        finally:
            tmp.unlink(missing_ok=True)
        meta = {"version": CACHE_VERSION, "key": key, "root": root, "shape": [len(paths), size[0], size[1], 3],
                "exact_size": exact, "bad": bad}
        tmp_meta = meta_path.with_name(f".{meta_path.name}.{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_path)  # the metadata last: a cache without it is never read
        _prune(cache_dir, root, name)
    # Copy-on-write mapping: writable for torch (no warning), pages shared with every other reader.
    images = torch.from_numpy(np.load(npy, mmap_mode="c"))
    return Decoded(images, {p: i for i, p in enumerate(paths)}, list(meta["bad"]), npy)


# ---- data sets over the cache --------------------------------------------------------------------------------


class MemoryImages(torch.utils.data.Dataset):
    """A split as rows of a decoded tensor. Item access returns (CHW uint8 image, target), like the file sets,
    so the per-sample transforms still apply; the loaders below gather whole batches instead."""

    def __init__(self, images: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, classes: list[str],
                 skipped: list[str]):
        self.images, self.rows, self.targets, self.classes, self.skipped = images, rows, targets, classes, skipped

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        return tv_tensors.Image(self.images[self.rows[index]].permute(2, 0, 1)), int(self.targets[index])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) uint8 (a contiguous copy) and (B,) targets."""
        return self.images[self.rows[indices]].permute(0, 3, 1, 2).contiguous(), self.targets[indices]

    def to(self, device: torch.device) -> MemoryImages:
        return MemoryImages(self.images.to(device), self.rows.to(device), self.targets.to(device), self.classes,
                            self.skipped)


def _split_rows(files, decoded: Decoded) -> MemoryImages:
    bad = set(decoded.bad)
    good = [(decoded.rows[p], t) for p, t in files.samples if p not in bad]
    skipped = [p for p, _ in files.samples if p in bad]
    rows = torch.tensor([r for r, _ in good], dtype=torch.long)
    targets = torch.tensor([t for _, t in good], dtype=torch.long)
    return MemoryImages(decoded.images, rows, targets, files.classes, skipped)


def choose_data_path(mode: str, data: DataSplits, source: str, resolution: int, crop_pct: float,
                     limit_gb: float) -> tuple[str, str]:
    """("memory" | "files", why) for a `data_path` setting of auto, memory or files."""
    if mode not in DATA_PATHS:
        raise RubikError(f"data_path must be auto, memory or files, not {mode!r}")
    if mode == "files":
        return "files", "--data-path files"
    if is_embedded(source):
        return ("memory", "--data-path memory") if mode == "memory" else \
            ("files", "digits are decoded in memory already")
    paths = [p for p, _ in data.train.samples] + [p for p, _ in data.val.samples]
    size, exact = store_size(paths, resolution, crop_pct)
    need = len(paths) * size[0] * size[1] * 3
    limit = memory_limit_bytes(limit_gb)
    if mode == "memory":
        how = "" if exact else f", mixed sizes stored at {size[1]}x{size[0]} (short side, centre square)"
        return "memory", f"--data-path memory, {need / 2**20:.0f} MiB decoded{how}"
    if not exact:
        return "files", "images of different sizes (--data-path memory stores them resized)"
    if need > limit:
        return "files", (f"decoded set {need / 2**30:.2f} GiB > limit {limit / 2**30:.2f} GiB "
                         "(--set data_memory_gb=N raises it)")
    return "memory", f"{need / 2**20:.0f} MiB decoded, under the {limit / 2**30:.1f} GiB limit"


def memory_splits(data: DataSplits, source: str, resolution: int, crop_pct: float, cache_dir: Path,
                  strict: bool = False, build: bool = True) -> tuple[MemoryImages, MemoryImages]:
    """Train and validation splits of `data` over one decoded cache (both splits' files together)."""
    if is_embedded(source):  # DigitsImages: decoded at the resolution already
        def rows(ds):
            n = len(ds)
            return MemoryImages(ds.images.permute(0, 2, 3, 1).contiguous(), torch.arange(n),
                                torch.as_tensor(ds.targets, dtype=torch.long), ds.classes, [])
        return rows(data.train), rows(data.val)
    samples = sorted(set(data.train.samples) | set(data.val.samples))
    size, exact = store_size([p for p, _ in samples], resolution, crop_pct)
    decoded = decode_cached(samples, size, exact, cache_dir, strict=strict, build=build)
    for p in decoded.bad:
        log.info(f"skipped unreadable image {p}", extra={"file_only": True})
    return _split_rows(data.train, decoded), _split_rows(data.val, decoded)


# ---- batch transforms ---------------------------------------------------------------------------------------


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, batch, rank, 0x72756269]).generate_state(1, np.uint64)[0] >> 1)


class BatchEval:
    """The evaluation view (rubik.train.data.eval_transform) on a uint8 batch: resize the short side to
    resolution / crop_pct, centre crop, scale to [0, 1], normalize. Same ops, so the same numbers per image."""

    def __init__(self, resolution: int, mean, std, crop_pct: float = 0.875, interpolation: str = "bicubic"):
        self.size = math.floor(resolution / crop_pct)
        self.resolution, self.mean, self.std, self.interp = resolution, list(mean), list(std), _interp(interpolation)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        x = F.resize(x, self.size, interpolation=self.interp, antialias=True)
        x = F.center_crop(x, [self.resolution, self.resolution])
        return F.normalize(F.to_dtype(x, torch.float32, scale=True), self.mean, self.std)


class BatchTrain:
    """rubik.train.data.train_transform on a uint8 batch, every random choice drawn per image.

    RandomResizedCrop: every image has its own box (torchvision's sampling); for small stored images the
    crop, the resize (torch's antialiased bicubic or bilinear weights) and the flip are two batched matrix
    products, for large ones torchvision's resized_crop per image. Colour jitter takes a factor per image
    and applies brightness, contrast and saturation in a random order per image, rounding to uint8 after
    each as Pillow does. RandAugment draws an op and a sign per image and applies each op once to the
    images that drew it (torchvision's RandAugment, given a batch, applies one op to all of it). Parameters
    are drawn on the CPU from
    `gen`, so the result does not depend on the device.
    """

    def __init__(self, resolution: int, mean, std, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 interpolation: str = "bicubic", hflip: float = 0.5, color_jitter: float = 0.0,
                 randaugment: bool = False, ra_ops: int = 2, ra_magnitude: int = 9):
        self.resolution, self.mean, self.std = resolution, list(mean), list(std)
        self.scale, self.ratio, self.interp = tuple(scale), tuple(ratio), _interp(interpolation)
        self.hflip, self.jitter = hflip, color_jitter
        self.ra = v2.RandAugment(num_ops=ra_ops, magnitude=ra_magnitude,
                                 interpolation=v2.InterpolationMode.BILINEAR) if randaugment else None
        self._weights: dict[tuple[int, str], torch.Tensor] = {}

    def crop_boxes(self, n: int, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
        """(n, 4) top, left, h, w: torchvision's RandomResizedCrop.get_params, ten tries per image at once."""
        area = height * width
        s = torch.empty(n, 10).uniform_(self.scale[0], self.scale[1], generator=gen) * area
        log_r = torch.empty(n, 10).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]), generator=gen).exp()
        w = torch.sqrt(s * log_r).round().long()
        h = torch.sqrt(s / log_r).round().long()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.float().argmax(1)
        w, h = w.gather(1, first[:, None])[:, 0], h.gather(1, first[:, None])[:, 0]
        u = torch.rand(n, 2, generator=gen)
        top = (u[:, 0] * (height - h + 1)).floor().long()
        left = (u[:, 1] * (width - w + 1)).floor().long()
        # No try fitted: the centre crop with the ratio clamped, as torchvision falls back.
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            fw, fh = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            fw, fh = int(round(height * max(self.ratio))), height
        else:
            fw, fh = width, height
        miss = ~ok.any(1)
        h, w = torch.where(miss, fh, h), torch.where(miss, fw, w)
        top, left = torch.where(miss, (height - fh) // 2, top), torch.where(miss, (width - fw) // 2, left)
        return torch.stack([top, left, h, w], 1)

    def _jitter(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """uint8 in, uint8 out; brightness blends with black, contrast with the mean grey, saturation with the
        grey image (torchvision's formulas), each with its own factor per image, in a random order per image."""
        n, j = x.shape[0], self.jitter
        factors = torch.empty(n, 3).uniform_(max(0.0, 1 - j), 1 + j, generator=gen)
        order = torch.rand(n, 3, generator=gen).argsort(1)
        factors, order = factors.to(x.device), order.to(x.device)
        x = x.float()
        for k in range(3):
            op = order[:, k]
            f = factors.gather(1, op[:, None]).view(n, 1, 1, 1)
            grey = 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
            target = torch.where((op == 2).view(n, 1, 1, 1), grey, grey.mean((1, 2, 3), keepdim=True))
            target = target * (op != 0).view(n, 1, 1, 1)
            x = x.mul_(f).add_((1 - f) * target).clamp_(0, 255).round_()
        return x.to(torch.uint8)

    def _randaugment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        ra = self.ra
        names = list(ra._AUGMENTATION_SPACE)
        height, width = x.shape[-2:]
        x = x.clone()
        for _ in range(ra.num_ops):
            op = torch.randint(len(names), (x.shape[0],), generator=gen)
            negative = torch.rand(x.shape[0], generator=gen) <= 0.5
            for k in op.unique().tolist():
                magnitudes_fn, signed = ra._AUGMENTATION_SPACE[names[k]]
                magnitudes = magnitudes_fn(ra.num_magnitude_bins, height, width)
                for sign in ((True, False) if signed and magnitudes is not None else (False,)):
                    chosen = (op == k) & (negative == sign) if signed and magnitudes is not None else op == k
                    idx = chosen.nonzero()[:, 0]
                    if idx.numel() == 0:
                        continue
                    magnitude = 0.0 if magnitudes is None else float(magnitudes[ra.magnitude]) * (-1 if sign else 1)
                    idx = idx.to(x.device)
                    x[idx] = ra._apply_image_or_video_transform(x[idx], names[k], magnitude,
                                                                interpolation=ra.interpolation, fill=ra._fill)
        return x

    def _axis_weights(self, length: int, device: torch.device) -> torch.Tensor:
        """(resolution, length): torch's (antialiased) resize of `length` pixels to `resolution` as a matrix,
        read off by resizing the identity."""
        key = (length, str(device))
        w = self._weights.get(key)
        if w is None:
            # Column c of the identity is pixel c alone; resizing only the height gives its weights.
            eye = torch.eye(length, dtype=torch.float32).view(1, 1, length, length)
            mode = "bicubic" if self.interp == v2.InterpolationMode.BICUBIC else "bilinear"
            w = torch.nn.functional.interpolate(eye, size=(self.resolution, length), mode=mode, antialias=True,
                                                align_corners=False)[0, 0].contiguous().to(device)
            self._weights[key] = w
        return w

    def _crop_flip(self, x: torch.Tensor, boxes: list, flip: torch.Tensor) -> torch.Tensor:
        """Every image's crop resized and (where `flip`) mirrored: two batched matmuls with per-image
        interpolation matrices (the crop box and the flip live in the matrices). uint8 in and out."""
        n, _, height, width = x.shape
        rows = torch.zeros(n, self.resolution, height, device=x.device)
        cols = torch.zeros(n, self.resolution, width, device=x.device)
        for i, (top, left, h, w) in enumerate(boxes):
            rows[i, :, top:top + h] = self._axis_weights(h, x.device)
            cols[i, :, left:left + w] = self._axis_weights(w, x.device)
        cols[flip] = cols[flip].flip(1)
        # Horizontal pass, then vertical, rounding to 8 bits between them, as Pillow and torch's uint8 resize do.
        out = (x.float() @ cols[:, None].transpose(-1, -2)).clamp_(0, 255).round_()
        return (rows[:, None] @ out).clamp_(0, 255).round_().to(torch.uint8)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, height, width = x.shape
        boxes = self.crop_boxes(n, height, width, gen).tolist()
        flip = torch.rand(n, generator=gen) < self.hflip
        if height * width <= DENSE_RESIZE_PIXELS:
            x = self._crop_flip(x, boxes, flip.to(x.device))
        else:  # large images: the matrices would cost more than torch's separable resize, image by image
            size = [self.resolution, self.resolution]
            x = torch.stack([F.resized_crop(x[i], t, le, h, w, size, interpolation=self.interp, antialias=True)
                             for i, (t, le, h, w) in enumerate(boxes)])
            idx = flip.nonzero()[:, 0].to(x.device)
            x[idx] = x[idx].flip(-1)
        if self.jitter > 0:
            x = self._jitter(x, gen)
        if self.ra is not None:
            x = self._randaugment(x, gen)
        return F.normalize(F.to_dtype(x, torch.float32, scale=True), self.mean, self.std)


# ---- loaders ------------------------------------------------------------------------------------------------


class MemoryTrainLoader:
    """Batches of the EpochSampler's order (its epoch and start), augmented as whole batches.

    Yields (images, targets, skipped) like the file loader; the unreadable files found when decoding come
    with the first batch of every pass, so the trainer counts them as it counts the file loader's.
    """

    def __init__(self, data: MemoryImages, sampler: EpochSampler, batch_size: int, transform, seed: int,
                 device: torch.device):
        self.data, self.sampler, self.batch_size, self.transform = data, sampler, batch_size, transform
        self.seed, self.device = seed, device

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        s = self.sampler
        order = torch.tensor([i for i, _ in s], dtype=torch.long)
        first = s.start // self.batch_size
        for b in range(len(order) // self.batch_size):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x, y = self.data.batch(idx.to(self.data.rows.device))
            gen = torch.Generator().manual_seed(batch_seed(self.seed, s.epoch, first + b, s.rank))
            x = self.transform(x.to(self.device, non_blocking=True), gen)
            yield x, y.to(self.device), (self.data.skipped if b == 0 else [])


class MemoryEvalLoader:
    """The validation split in order (every world_size-th image from rank, as Shard), evaluation view."""

    def __init__(self, data: MemoryImages, batch_size: int, transform, device: torch.device, rank: int = 0,
                 world_size: int = 1):
        self.data, self.batch_size, self.transform, self.device = data, batch_size, transform, device
        self.indices = torch.tensor(Shard(len(data), rank, world_size).indices, dtype=torch.long)

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.indices), self.batch_size):
            idx = self.indices[start:start + self.batch_size]
            x, y = self.data.batch(idx.to(self.data.rows.device))
            yield self.transform(x.to(self.device, non_blocking=True)), y.to(self.device), []


def memory_loaders(c: Any, resolution: int, mean, std, crop_pct: float, interpolation: str, data: DataSplits,
                   sampler_factory, device: torch.device, dist_info, barrier
                   ) -> tuple[EpochSampler, MemoryTrainLoader, MemoryEvalLoader]:
    """Decode (rank 0; the others wait at `barrier`), then the train sampler and both loaders for config `c`."""
    cache_dir = Path(c.data_cache).expanduser() if c.data_cache else default_cache_dir()
    args = (data, c.data, resolution, crop_pct, cache_dir, c.strict)
    if dist_info.main:
        train, val = memory_splits(*args)
        barrier()
    else:
        barrier()
        train, val = memory_splits(*args, build=False)
    if device.type == "cuda":  # the whole uint8 set on the GPU: a batch is one gather there
        train, val = train.to(device), val.to(device)
    sampler = sampler_factory(len(train))
    train_tf = BatchTrain(resolution, mean, std, scale=c.crop_scale, ratio=c.crop_ratio, interpolation=interpolation,
                          hflip=c.hflip, color_jitter=c.color_jitter, randaugment=c.randaugment,
                          ra_ops=c.randaugment_ops, ra_magnitude=c.randaugment_magnitude)
    val_tf = BatchEval(resolution, mean, std, crop_pct, interpolation)
    return (sampler, MemoryTrainLoader(train, sampler, c.batch_size, train_tf, c.seed, device),
            MemoryEvalLoader(val, c.batch_size * 2, val_tf, device, dist_info.rank, dist_info.world_size))
