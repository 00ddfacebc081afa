"""Training: configuration, data, a short run and its run directory, fine-tuning, and bad input."""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import QUICK, TINY_SPEC, make_image_folder, rubik_cli, write_spec

from rubik.classify.task import ClassificationTask
from rubik.classify.trained import load_classifier
from rubik.errors import RubikError
from rubik.files import DiskFullError, atomic_write
from rubik.models.weights import read_state_dict
from rubik.tasks import make_task
from rubik.train import build_config, checkpoint
from rubik.train import train as train_task
from rubik.train.data import EpochSampler, open_data
from rubik.train.recipes import RECIPES, load_yaml, parse_overrides

DIGITS_DEFAULTS = ClassificationTask.data_defaults("digits")


def train(c, run_dir, **kw):
    """Train as `rubik train` does: with the task of the config's model."""
    return train_task(c, run_dir, make_task(c), **kw)


def quick(**values) -> dict:
    return {"model": TINY_SPEC, **QUICK, **values}


# ---- configuration ------------------------------------------------------------------------------


def test_paper_recipe_holds_the_published_hyper_parameters():
    c = build_config(cli_values={"recipe": "paper"})
    assert (c.optimizer, c.eps, c.lr, c.lr_base_batch) == ("rmsprop_tf", 1e-3, 0.048, 1024)
    assert (c.warmup_epochs, c.warmup_lr, c.decay_epochs, c.decay_rate, c.epochs) == (3.0, 1e-6, 2.4, 0.97, 450)
    assert (c.weight_decay, c.ema_decay, c.drop_rate, c.label_smoothing, c.color_jitter) == (1e-5, 0.9999, 0.2,
                                                                                             0.1, 0.4)
    assert c.interpolation == "bicubic" and c.scheduler == "step"
    assert set(RECIPES) >= {"paper", "ghostnet", "small"}


def test_overrides_apply_in_order_and_unknown_keys_are_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.01\nepochs: 7\ncrop_scale: [0.2, 1]\n")
    c = build_config(data_defaults=DIGITS_DEFAULTS, yaml_values=load_yaml(cfg),
                     cli_values={"epochs": 9, **parse_overrides(["ema_decay=0.5", "randaugment=true"])})
    assert (c.lr, c.epochs, c.crop_scale, c.ema_decay, c.randaugment, c.hflip) == (0.01, 9, [0.2, 1.0], 0.5, True,
                                                                                   0.0)
    with pytest.raises(RubikError, match="ema_decay"):
        build_config(cli_values={"ema_decy": 0.5})
    with pytest.raises(RubikError, match="type int"):
        build_config(cli_values={"epochs": "many"})


def test_sampler_resumes_mid_epoch_with_the_same_samples_and_seeds():
    full = list(EpochSampler(50, seed=3))
    s = EpochSampler(50, seed=3)
    s.set_epoch(0, start=20)
    assert list(s) == full[20:]
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in full]  # a new order each epoch
    shards = [list(EpochSampler(50, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert not {i for i, _ in shards[0]} & {i for i, _ in shards[1]}


def test_digits_are_served_at_the_model_input_size():
    data = open_data("digits", 40)
    image, target = data.train[0]
    assert tuple(image.shape) == (3, 40, 40) and image.dtype == torch.uint8 and 0 <= target < 10
    assert (len(data.train), len(data.val), data.classes) == (1437, 360, [str(i) for i in range(10)])


def test_digits_trained_on_are_the_digits_a_deployed_model_sees():
    # The deployed model's preprocessing (Pillow bicubic) applied to the raw 8x8 test digits gives exactly
    # the images training evaluated on: a torch-bicubic upscale cost a fragile model 2.5 points in ONNX.
    from rubik.deploy.images import open_images
    from rubik.deploy.runtime import Preprocess

    served, raw = open_data("digits", 52).val, open_images("digits", "test")
    pre = Preprocess(52, crop_pct=1.0, interpolation="bicubic")
    assert raw.labels == served.targets
    for i in range(0, len(raw), 7):
        assert np.array_equal(served.images[i].permute(1, 2, 0).numpy(), pre.crop(raw.images[i])), i


# ---- a short run --------------------------------------------------------------------------------


def test_short_run_writes_the_run_directory(tmp_path):
    data = make_image_folder(tmp_path / "data")
    run = tmp_path / "run"
    c = build_config(cli_values=quick(data=str(data), epochs=3, lr=0.01, checkpoint_every=2, keep_last=2,
                                      batch_size=8, accum_steps=2))
    summary = train(c, run)
    for name in ("config.yaml", "model.json", "best.safetensors", "best.json", "metrics.csv", "train.log"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["step"]) for r in rows] == [3, 6, 9]  # 48 images, 8 per batch, 2 batches per step
    assert all(r["ema_val_top1"] != "" for r in rows)
    assert len(checkpoint.list_checkpoints(run)) == 2  # only the newest kept
    best = json.loads((run / "best.json").read_text())
    assert best["top1"] == pytest.approx(max(max(float(r["val_top1"]), float(r["ema_val_top1"])) for r in rows),
                                         abs=1e-3)
    assert best == summary["best"] and best["metric"] == "top1" and best["value"] == best["top1"]
    assert json.loads((run / "model.json").read_text())["task"] == "classify"
    # The deploy contract: load_classifier rebuilds the model with its class names.
    model = load_classifier(run)
    assert model.classes == ["blue", "green", "red"] and model.classifier.out_features == 3
    assert all(float(r["images_per_s"]) > 0 and float(r["lr"]) > 0 for r in rows)


def test_digits_short_run_is_well_above_chance(tmp_path):
    c = build_config(data_defaults=DIGITS_DEFAULTS,
                     cli_values={"model": {**TINY_SPEC, "width": 0.5}, "epochs": 3, "batch_size": 32, "lr": 4e-3,
                                 "resolution": 32, "warmup_epochs": 0.0, "log_every": 0})
    summary = train(c, tmp_path / "run")
    assert summary["best"]["top1"] > 50  # ten classes: chance is 10 % (this run measured 86 %)


def test_the_task_table_finds_a_models_task_and_builds_old_runs():
    from rubik.detect.task import DetectionTask
    from rubik.models.weights import load_weights
    from rubik.run import RunDir
    from rubik.tasks import task_for_model, task_named

    fixtures = Path(__file__).parent / "fixtures" / "runs"
    assert task_for_model("tinynet_e") is task_for_model(TINY_SPEC) is ClassificationTask
    assert task_for_model("ssdlite:tinynet_e") is task_for_model({"detector": "ssdlite", "name": "d",
                                                                  "backbone": "tinynet_e"}) is DetectionTask
    assert task_for_model("tinynet_q") is ClassificationTask  # whose lookup says "unknown model ..., did you mean"
    assert make_task(build_config(cli_values={"model": "ssdlite:tinynet_e"})).metric_keys == ("map", "map50")
    with pytest.raises(RubikError, match="unknown task 'segment'"):
        task_named("segment")
    # Runs written before the task record (2026-12-04): each task rebuilds its model from the record, and the
    # run's weights load into it with nothing left over or missing.
    for run, task in (("cls-2026-12-04", ClassificationTask), ("det-2026-12-04", DetectionTask)):
        record = RunDir(fixtures / run).record
        assert task_for_model(fixtures / run) is task and task.name == record.task
        net = task.build_from_record(record)
        assert load_weights(net, read_state_dict(fixtures / run / "best.safetensors")) == []
        assert net.classes == record.classes and len(record.classes) == record.num_classes
    expected = json.loads((fixtures / "cls-2026-12-04" / "expected.json").read_text())
    classifier = ClassificationTask.build_from_record(RunDir(fixtures / "cls-2026-12-04").record)
    load_weights(classifier, read_state_dict(fixtures / "cls-2026-12-04" / "best.safetensors"))
    with torch.no_grad():
        logits = classifier.eval()(torch.linspace(-2, 2, 3 * 32 * 32).reshape(1, 3, 32, 32))
    assert torch.allclose(logits[0], torch.tensor(expected["logits"]), atol=1e-5)


# ---- fine-tuning --------------------------------------------------------------------------------


def test_init_replaces_the_head_and_freezing_keeps_the_body(tmp_path):
    source = tmp_path / "source"
    train(build_config(cli_values=quick(data=str(make_image_folder(tmp_path / "d3")), epochs=1)), source)
    four = make_image_folder(tmp_path / "d4", classes=("a", "b", "c", "d"))
    run = tmp_path / "ft"
    train(build_config(cli_values=quick(data=str(four), epochs=1, init=str(source), freeze_epochs=1,
                                        ema_decay=0.0)), run)
    before, after = read_state_dict(source / "best.safetensors"), read_state_dict(run / "best.safetensors")
    assert after["classifier.weight"].shape[0] == 4
    assert torch.equal(before["conv_stem.weight"], after["conv_stem.weight"])  # frozen: the body did not move
    assert torch.equal(before["blocks.1.0.conv_pw.weight"], after["blocks.1.0.conv_pw.weight"])


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "empty", "one_class", "unreadable"])
def test_bad_data_folders_give_one_line_errors(tmp_path, case):
    if case == "unreadable" and os.geteuid() == 0:
        pytest.skip("running as root: permissions do not stop reading")
    root = tmp_path / "data"
    if case != "missing":
        root.mkdir()
    if case == "one_class":
        make_image_folder(root, classes=("only",))
        root = root / "train"
    if case == "unreadable":
        make_image_folder(root)
        (root / "train").chmod(0)
    try:
        with pytest.raises(RubikError) as err:
            open_data(str(root), 32)
    finally:
        if case == "unreadable":
            (root / "train").chmod(0o755)
    assert str(root) in str(err.value) and "\n" not in str(err.value)


def _corrupt(folder):
    bad = folder / "train" / "red" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return bad


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    data = make_image_folder(tmp_path / "data")
    bad = _corrupt(data)
    run = tmp_path / "run"
    summary = train(build_config(cli_values=quick(data=str(data), epochs=1, batch_size=8)), run)
    assert summary["skipped_images"] == 1
    assert str(bad) in (run / "train.log").read_text()
    assert list(csv.DictReader(open(run / "metrics.csv")))[-1]["skipped_images"] == "1"


def test_corrupt_image_with_strict_fails_naming_the_file(tmp_path):
    data = make_image_folder(tmp_path / "data")
    bad = _corrupt(data)
    spec = write_spec(tmp_path)
    result = rubik_cli("train", "--model", str(spec), "--data", str(data), "--out", str(tmp_path / "run"),
                       "--strict", "--epochs", "1", "--batch-size", "8", "--workers", "1")
    assert result.returncode == 2, result.stderr
    assert str(bad) in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from rubik.train import trainer as trainer_module

    data = make_image_folder(tmp_path / "data")
    run = tmp_path / "run"
    calls = {"n": 0}
    real = torch.nn.CrossEntropyLoss.forward

    def poisoned(self, logits, targets):
        calls["n"] += 1
        loss = real(self, logits, targets)
        return loss * float("nan") if calls["n"] == 6 else loss  # step 6 of 3 per epoch: epoch 2

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    c = build_config(cli_values=quick(data=str(data), epochs=3, checkpoint_every=1))
    with pytest.raises(trainer_module.NonFiniteLossError, match="last good checkpoint") as err:
        train(c, run)
    assert "\n" not in str(err.value)
    saved = checkpoint.list_checkpoints(run)
    assert saved and int(saved[-1].name.split("-")[1]) == 5  # nothing saved from step 6 on
    weights, state = checkpoint.load_checkpoint(saved[-1])
    assert all(torch.isfinite(t).all() for t in weights["model"].values() if t.is_floating_point())
    best = read_state_dict(run / "best.safetensors")
    assert all(torch.isfinite(t).all() for t in best.values() if t.is_floating_point())


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    weights = {"model": {"w": torch.ones(3)}}
    first = checkpoint.save_checkpoint(run, 1, weights, {"step": 1})
    real_save = checkpoint.save_tensors

    def full_disk(path, tensors):
        real_save(path, tensors)  # a partial file exists when the error comes
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_tensors", full_disk)
    with pytest.raises(DiskFullError, match="previous checkpoint"):
        checkpoint.save_checkpoint(run, 2, {"model": {"w": torch.zeros(3)}}, {"step": 2})
    with pytest.raises(DiskFullError):
        atomic_write(run / "best.safetensors", lambda p: full_disk(p, {"w": torch.zeros(1)}))
    assert [p.name for p in (run / "checkpoints").iterdir()] == [first.name]  # no half-written folder left
    assert not (run / "best.safetensors").exists()
    path, loaded, state = checkpoint.latest_checkpoint(run)
    assert path == first and state == {"step": 1} and torch.equal(loaded["model"]["w"], torch.ones(3))


def test_resume_requires_a_run_and_out_refuses_to_overwrite(tmp_path):
    spec = write_spec(tmp_path)
    result = rubik_cli("train", "--resume", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "nothing to resume" in result.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("epochs: 1\n")
    result = rubik_cli("train", "--model", str(spec), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "--resume" in result.stderr
    assert (tmp_path / "run" / "config.yaml").read_text() == "epochs: 1\n"


# ---- eval, predict, cam, plot -------------------------------------------------------------------


def test_eval_predict_cam_and_plot_on_a_trained_run(tmp_path):
    from PIL import Image

    data = make_image_folder(tmp_path / "data")
    run = tmp_path / "run"
    train(build_config(cli_values=quick(data=str(data), epochs=2, lr=0.01)), run)
    result = rubik_cli("eval", "--weights", str(run), "--data", str(data), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 12 and set(report["per_class"]) == {"red", "green", "blue"}
    assert (run / "confusion.png").is_file()
    image = tmp_path / "x.png"
    Image.open(next((data / "val" / "red").iterdir())).save(image)
    result = rubik_cli("predict", str(image), "--weights", str(run), "--top-k", "2", "--json")
    assert result.returncode == 0, result.stderr
    top = json.loads(result.stdout)[0]["top"]
    assert len(top) == 2 and {t["class"] for t in top} <= {"red", "green", "blue"}
    assert top[0]["prob"] >= top[1]["prob"]
    out = tmp_path / "cam.png"
    result = rubik_cli("cam", str(image), "--weights", str(run), "--out", str(out))
    assert result.returncode == 0 and out.stat().st_size > 1000, result.stderr
    result = rubik_cli("plot", str(run))
    assert result.returncode == 0 and (run / "curves.png").stat().st_size > 1000, result.stderr


def test_eval_and_export_score_the_images_training_held_out(tmp_path):
    # A folder without val/: training holds out a seeded fraction; eval and the int8 check must score
    # exactly those images (they used to score the whole folder, training images included).
    import shutil

    from rubik.deploy.images import open_images
    from rubik.train.data import open_data

    data = make_image_folder(tmp_path / "data")
    shutil.rmtree(data / "val")
    run = tmp_path / "run"
    train(build_config(cli_values=quick(data=str(data), epochs=1, val_split=0.25, seed=5)), run)
    assert json.loads((run / "model.json").read_text())["holdout"] == [0.25, 5]
    split = open_data(str(data), 24, val_split=0.25, seed=5)
    held = [p for p, _ in split.val.samples]
    result = rubik_cli("eval", "--weights", str(run), "--data", str(data), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] == len(held) == 12
    assert open_images(data, "test", (0.25, 5)).images == held
    assert open_images(data, "train", (0.25, 5)).images == [p for p, _ in split.train.samples]
    assert not set(held) & set(open_images(data, "train", (0.25, 5)).images)
    assert open_images(data, "test").images != held  # the default (0.1, seed 0) split is another one


def test_cam_weights_are_the_classifier_rows_for_a_pooled_linear_head(randomize_bn):
    from rubik.models import build, get_spec
    from rubik.train.cam import class_activation_map

    torch.manual_seed(0)
    model = build(get_spec(TINY_SPEC), num_classes=4).eval()
    randomize_bn(model)
    image = torch.randn(3, 128, 128)  # a 4x4 final feature map
    cam, cls, prob = class_activation_map(model, image)  # the predicted class: its map has positive evidence
    with torch.no_grad():
        logits = model(image[None])[0]
        feats = model.forward_features(image[None])
        direct = torch.relu(torch.einsum("c,nchw->nhw", model.classifier.weight[cls], feats))[None]
    direct = torch.nn.functional.interpolate(direct, size=(128, 128), mode="bilinear", align_corners=False)[0, 0]
    direct = (direct - direct.min()) / (direct.max() - direct.min())
    assert cam.std() > 0.05  # a map, not a constant
    assert cls == int(logits.argmax()) and prob == pytest.approx(float(logits.softmax(0)[cls]))
    assert torch.allclose(cam, direct, atol=1e-4)


def test_paper_schedule_warms_up_then_decays_by_0_97_every_2_4_epochs():
    from rubik.train.optim import build_optimizer, build_scheduler, effective_lr

    c = build_config(cli_values={"recipe": "paper", "batch_size": 256})
    lr = effective_lr(c, world_size=4)  # 1024 images per step: the recipe's own 0.048
    assert lr == pytest.approx(0.048)
    model = torch.nn.Linear(4, 2)
    opt = build_optimizer(model, c, lr)
    steps_per_epoch = 10
    sched = build_scheduler(opt, c, lr, steps_per_epoch)
    lrs = []
    for _ in range(int(8.4 * steps_per_epoch)):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[15] == pytest.approx(1e-6 + (0.048 - 1e-6) * 15 / 30)  # linear warm-up over 3 epochs
    assert lrs[30] == pytest.approx(0.048)
    assert lrs[30 + 24] == pytest.approx(0.048 * 0.97)  # 2.4 epochs after warm-up
    assert lrs[30 + 48] == pytest.approx(0.048 * 0.97**2)


def test_rmsprop_tf_puts_eps_inside_the_root_and_starts_the_average_at_one():
    from rubik.train.optim import RMSpropTF

    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RMSpropTF([p], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    p.grad = torch.tensor([0.5, 4.0])
    opt.step()
    square_avg = 0.9 * 1.0 + 0.1 * p.grad**2
    expected = torch.tensor([1.0, -2.0]) - 0.1 * p.grad / torch.sqrt(square_avg + 1e-3)
    assert torch.allclose(p.detach(), expected)


def test_resume_with_more_epochs_follows_the_longer_schedule(tmp_path):
    from rubik.run import RunDir
    from rubik.train.recipes import apply

    data = make_image_folder(tmp_path / "data")
    run = tmp_path / "run"
    c = build_config(cli_values=quick(data=str(data), epochs=1, min_lr=0.0, ema_decay=0.0))
    train(c, run)
    # A run stopped short of its epochs already has its deploy weights; epochs_done tells it from a finished one.
    assert (run / "best.safetensors").is_file() and RunDir(run).epochs_done() == 1
    assert RunDir(tmp_path / "none").epochs_done() == 0
    # A checkpoint written before best states named their metric ({"top1", "top5", ...}) resumes: its best is
    # read in today's format and, at 100 %, never beaten.
    last = checkpoint.list_checkpoints(run)[-1]
    _, state = checkpoint.load_checkpoint(last)
    old = {"top1": 100.0, "top5": 100.0, "loss": 0.5, "weights": "raw", "epoch": 1, "step": state["step"]}
    torch.save({**state, "best": old}, last / checkpoint.STATE_FILE)
    summary = train(apply(c, {"epochs": 3}, "test"), run, resume=True)
    assert summary["best"] == {"metric": "top1", "value": 100.0, **old}
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and RunDir(run).epochs_done() == 3
    lr = c.lr * c.batch_size / c.lr_base_batch
    # Cosine over 3 epochs, read at the end of epoch 2: (1 + cos(2 pi / 3)) / 2 = 1/4 of the peak.
    assert float(rows[1]["lr"]) == pytest.approx(lr / 4, rel=1e-4)
