"""The in-memory data path: cache keyed by the files, the file path's batches, exact resume."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader
from torchvision.transforms.v2 import functional as F
from train_helpers import QUICK, make_image_folder, write_spec

from rubik.errors import RubikError
from rubik.train import memory_data
from rubik.train.checkpoint import list_checkpoints, load_checkpoint
from rubik.train.data import EpochSampler, Shard, Transformed, collate, eval_transform, open_data
from rubik.train.memory_data import (
    BatchEval,
    BatchTrain,
    MemoryEvalLoader,
    MemoryTrainLoader,
    choose_data_path,
    decode_cached,
    memory_splits,
)
from rubik.train.recipes import build_config

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU = torch.device("cpu")


def _jpegs(root: Path) -> None:
    """Re-save a third of the PNGs as JPEG: the cache must decode both as the file path does."""
    for i, png in enumerate(sorted(root.rglob("*.png"))):
        if i % 3 == 0:
            from PIL import Image

            with Image.open(png) as img:
                img.convert("RGB").save(png.with_suffix(".jpg"), quality=85)
            png.unlink()


@pytest.fixture
def folder(tmp_path):
    root = make_image_folder(tmp_path / "data", train=8, val=3, size=24)
    _jpegs(root)
    return root


def test_eval_view_batches_are_the_file_paths_batches(folder, tmp_path):
    data = open_data(str(folder), 32)
    train, val = memory_splits(data, str(folder), 32, 0.875, tmp_path / "cache")
    tf = eval_transform(32, MEAN, STD, 0.875, "bicubic")
    for epoch, start in ((0, 0), (1, 4), (2, 12)):  # start part-way, as a resumed run does
        files_sampler, memory_sampler = EpochSampler(len(data.train), 7), EpochSampler(len(train), 7)
        files_sampler.set_epoch(epoch, start)
        memory_sampler.set_epoch(epoch, start)
        files = list(DataLoader(Transformed(data.train, tf), collate_fn=collate,
                                batch_sampler=BatchSampler(files_sampler, 4, drop_last=True)))
        memory = list(MemoryTrainLoader(train, memory_sampler, 4, BatchEval(32, MEAN, STD, 0.875, "bicubic"), 7, CPU))
        assert len(files) == len(memory) > 0
        for (a, ya, _), (b, yb, _) in zip(files, memory, strict=True):
            assert torch.equal(ya, yb)
            assert torch.equal(a, b)
    files = list(DataLoader(Transformed(data.val, tf), batch_size=5, sampler=Shard(len(data.val)), collate_fn=collate))
    memory = list(MemoryEvalLoader(val, 5, BatchEval(32, MEAN, STD, 0.875, "bicubic"), CPU))
    assert [y.tolist() for _, y, _ in files] == [y.tolist() for _, y, _ in memory]
    assert all(torch.equal(a, b) for (a, _, _), (b, _, _) in zip(files, memory, strict=True))


def test_cache_is_reused_and_rebuilt_when_the_files_change(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    data = open_data(str(folder), 32)
    samples = sorted(data.train.samples + data.val.samples)
    rng = torch.get_rng_state()
    first = decode_cached(samples, (24, 24), True, cache)
    assert torch.equal(torch.get_rng_state(), rng)  # decoding leaves dropout's generator alone
    assert [p.name for p in cache.glob("*.npy")] == [first.path.name]

    decodes = []
    real = memory_data._decode_all
    monkeypatch.setattr(memory_data, "_decode_all", lambda *a, **k: decodes.append(1) or real(*a, **k))
    again = decode_cached(samples, (24, 24), True, cache)
    assert again.path == first.path and not decodes  # read back, not decoded again
    assert torch.equal(again.images, first.images)

    # One image rewritten with other pixels: a new cache holding them; the stale one is deleted.
    from PIL import Image

    changed = next(p for p, _ in samples if p.endswith(".png"))
    Image.new("RGB", (24, 24), (1, 2, 3)).save(changed)
    os.utime(changed, ns=(1, 1))  # even a restored mtime: the size changed
    rebuilt = decode_cached(samples, (24, 24), True, cache)
    assert decodes and rebuilt.path != first.path
    assert [p.name for p in cache.glob("*.npy")] == [rebuilt.path.name]
    assert rebuilt.images[rebuilt.rows[changed]].reshape(-1, 3).tolist()[0] == [1, 2, 3]

    # A file removed from the set: another key.
    shorter = decode_cached(samples[1:], (24, 24), True, cache)
    assert shorter.path != rebuilt.path and shorter.images.shape[0] == len(samples) - 1
    # Another stored size: another key.
    assert decode_cached(samples[1:], (20, 20), True, cache).path != shorter.path


def test_auto_takes_memory_only_for_one_size_under_the_limit(folder, tmp_path):
    data = open_data(str(folder), 32)
    assert choose_data_path("auto", data, str(folder), 32, 0.875, 1.0)[0] == "memory"
    path, why = choose_data_path("auto", data, str(folder), 32, 0.875, 1e-6)
    assert path == "files" and "limit" in why
    assert choose_data_path("files", data, str(folder), 32, 0.875, 1.0)[0] == "files"
    with pytest.raises(RubikError, match="data_path"):
        choose_data_path("ram", data, str(folder), 32, 0.875, 1.0)

    # Mixed sizes: auto keeps the file path; forced memory stores the evaluation square.
    from PIL import Image

    for p in list(folder.rglob("*.png"))[::2]:
        Image.new("RGB", (40, 30), (200, 10, 10)).save(p)
    data = open_data(str(folder), 32)
    path, why = choose_data_path("auto", data, str(folder), 32, 0.875, 1.0)
    assert path == "files" and "different sizes" in why
    assert choose_data_path("memory", data, str(folder), 32, 0.875, 1.0)[0] == "memory"
    train, _ = memory_splits(data, str(folder), 32, 0.875, tmp_path / "cache")
    assert train.images.shape[1:] == (36, 36, 3)  # floor(32 / 0.875)


def test_crop_and_flip_are_torchvisions_resized_crop():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    t = BatchTrain(48, MEAN, STD, scale=(0.3, 1.0))
    boxes = t.crop_boxes(16, 32, 32, torch.Generator().manual_seed(1))
    assert ((boxes[:, 2] >= 1) & (boxes[:, 0] + boxes[:, 2] <= 32) & (boxes[:, 1] + boxes[:, 3] <= 32)).all()
    assert len({tuple(b) for b in boxes.tolist()}) == 16  # a box per image
    flip = torch.arange(16) % 2 == 0
    got = t._crop_flip(x, boxes.tolist(), flip)
    ref = torch.stack([F.resized_crop(x[i], *b, [48, 48], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
                       for i, b in enumerate(boxes.tolist())])
    ref[flip] = ref[flip].flip(-1)
    diff = (got.int() - ref.int()).abs()
    assert diff.max() <= 2 and (diff > 0).float().mean() < 0.05  # torch's uint8 path rounds its weights


def test_randaugment_and_jitter_choose_per_image():
    same = torch.randint(0, 256, (1, 3, 24, 24), dtype=torch.uint8).expand(32, 3, 24, 24).contiguous()
    t = BatchTrain(24, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, randaugment=True, color_jitter=0.4)
    out = t(same, torch.Generator().manual_seed(0))
    distinct = {tuple(o.flatten()[:200].tolist()) for o in out}
    assert len(distinct) > 16  # torchvision's RandAugment on a batch would give one result for all 32
    again = t(same, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_a_batch_depends_only_on_seed_epoch_and_position(folder, tmp_path):
    data = open_data(str(folder), 32)
    train, _ = memory_splits(data, str(folder), 32, 0.875, tmp_path / "cache")
    tf = BatchTrain(32, MEAN, STD, scale=(0.35, 1.0), randaugment=True)
    sampler = EpochSampler(len(train), 3)
    sampler.set_epoch(2)
    whole = list(MemoryTrainLoader(train, sampler, 4, tf, 3, CPU))
    sampler.set_epoch(2, 8)
    resumed = list(MemoryTrainLoader(train, sampler, 4, tf, 3, CPU))
    assert len(resumed) == len(whole) - 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[2:], resumed, strict=True))
    sampler.set_epoch(3)
    assert not torch.equal(next(iter(MemoryTrainLoader(train, sampler, 4, tf, 3, CPU)))[0], whole[0][0])


class _Crash(Exception):
    pass


def test_memory_run_resumed_mid_epoch_is_bitwise_identical(tmp_path, monkeypatch):
    from rubik.tasks import make_task
    from rubik.train.trainer import Trainer

    def trainer(run, resume=False):
        c = build_config(cli_values=values)
        return Trainer(c, run, make_task(c), resume=resume, progress=False)

    folder = make_image_folder(tmp_path / "data", train=6, val=2, size=24)  # 18 images: 4 steps of 4 per epoch
    monkeypatch.setenv("RUBIK_CACHE", str(tmp_path / "cache"))
    spec = write_spec(tmp_path)
    values = {**QUICK, "model": str(spec), "data": str(folder), "data_path": "memory", "epochs": 2, "batch_size": 4,
              "checkpoint_every": 2, "randaugment": True, "color_jitter": 0.3, "deterministic": True}
    was = torch.are_deterministic_algorithms_enabled()
    try:
        reference = trainer(tmp_path / "reference")
        assert reference.data_path == "memory"
        reference.fit()  # this run decoded the images; the next ones read the cache

        run = tmp_path / "crashed"
        first = trainer(run)
        update = first.ema.update_parameters
        calls = []

        def crash_in_step_7(model):  # epoch 2, after its checkpoint at step 6
            calls.append(1)
            if len(calls) == 7:
                raise _Crash
            update(model)

        first.ema.update_parameters = crash_in_step_7
        with pytest.raises(_Crash):
            first.fit()
        resumed = trainer(run, resume=True)
        assert (resumed.epoch, resumed.batch_in_epoch, resumed.step) == (1, 2, 6)
        resumed.fit()
    finally:
        torch.use_deterministic_algorithms(was)
    expected, _ = load_checkpoint(list_checkpoints(tmp_path / "reference")[-1])
    got, state = load_checkpoint(list_checkpoints(run)[-1])
    assert state["epoch"] == 2 and set(expected) == {"model", "ema"}
    for name in expected:
        different = [k for k in expected[name] if not torch.equal(expected[name][k], got[name][k])]
        assert not different, f"{name}: {different[:3]}"
