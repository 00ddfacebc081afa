"""Edge deployment: verified ONNX export, int8, the torch-free runtime, bench, ncnn, and bad input."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import rubik
import rubik.cli
from rubik.deploy.export import ExportMismatchError, ModelFileError, export_onnx, verify_onnx
from rubik.deploy.images import NoImagesError, open_images, sample_photos
from rubik.deploy.runtime import META_PREPROCESS, Classifier, Preprocess, RuntimeModelError

TINY = {"name": "tiny", "width": 0.25, "depth": 0.3, "resolution": 32, "crop_pct": 1.0}
TINY_GHOST = {"name": "tiny_ghost", "family": "ghostnet", "width": 0.25, "depth": 0.3, "resolution": 32}
RUNTIME_FILE = Path(rubik.__file__).parent / "deploy" / "runtime.py"


def run_cli(argv, capsys, monkeypatch):
    code = rubik.cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def tiny(randomize_bn):
    torch.manual_seed(0)
    model = rubik.create_model(TINY, num_classes=3).eval()
    randomize_bn(model)
    with torch.no_grad():  # logits of a useful size, so a wrong output cannot hide under the tolerance
        model.classifier.weight.mul_(50)
    model.classes = ["cat", "dog", "owl"]
    return model


@pytest.fixture
def image_folder(tmp_path):
    """ROOT/CLASS/*.png with 8 random pictures per class."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c in ("cat", "dog", "owl"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def every_image(root):
    """All 24 labelled images (open_images gives a split: a folder without val/ holds some out)."""
    from rubik.deploy.images import LabelledImages
    from rubik.image_folder import scan_folder

    samples, classes = scan_folder(root)
    return LabelledImages([p for p, _ in samples], [c for _, c in samples], classes)


@pytest.fixture
def run_dir(tmp_path, tiny):
    """A training run directory as `rubik train` writes it."""
    run = tmp_path / "run"
    run.mkdir()
    save_file(tiny.state_dict(), str(run / "best.safetensors"))
    (run / "model.json").write_text(json.dumps({"model": tiny.spec.to_dict(), "num_classes": 3,
                                                "classes": tiny.classes}))
    return run


@pytest.mark.parametrize("dynamic", [False, True])
def test_export_matches_pytorch_and_carries_preprocessing(tmp_path, tiny, dynamic):
    path = export_onnx(tiny, tmp_path / "m.onnx", dynamic_batch=dynamic)
    check = verify_onnx(tiny, path)
    assert check.n == 16 and check.max_abs_diff <= check.tolerance and check.top1_agreement == 1.0

    import onnx

    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops  # folded into the convolutions
    assert "ReduceMean" not in ops and "GlobalAveragePool" in ops
    meta = {p.key: p.value for p in model.metadata_props}
    pre = json.loads(meta[META_PREPROCESS])
    assert pre["resolution"] == 32 and pre["crop_pct"] == 1.0 and pre["mean"] == list(tiny.spec.preprocess.mean)
    assert json.loads(meta["rubik.classes"]) == ["cat", "dog", "owl"]

    clf = Classifier(path)
    x = clf.preprocess(sample_photos(3))
    with torch.no_grad():
        ref = tiny(torch.from_numpy(x)).numpy()
    # A static batch-1 file runs a batch of 3 one image at a time; a dynamic one in one call.
    assert np.allclose(clf.logits(x), ref, atol=1e-3 * np.abs(ref).max())
    assert (clf.session.get_inputs()[0].shape[0] == 1) != dynamic


def test_ghostnet_exports_too(tmp_path, randomize_bn):
    model = rubik.create_model(TINY_GHOST, num_classes=5).eval()
    randomize_bn(model)
    path = export_onnx(model, tmp_path / "g.onnx")
    assert verify_onnx(model, path).top1_agreement == 1.0


def test_verification_catches_a_wrong_export(tmp_path, tiny):
    path = export_onnx(tiny, tmp_path / "m.onnx")
    with torch.no_grad():
        tiny.classifier.bias[1] += 5.0  # the file no longer computes what the model does
    with pytest.raises(ExportMismatchError, match="does not match PyTorch"):
        verify_onnx(tiny, path)


def test_export_is_atomic_and_a_full_disk_says_to_export_again(tmp_path, tiny, monkeypatch):
    import errno

    import onnx

    from rubik.files import DiskFullError

    path = export_onnx(tiny, tmp_path / "m.onnx")
    before = path.read_bytes()
    real = onnx.save

    def full_disk(model, f, *args, **kwargs):  # the disk fills while the file is written beside its final name
        real(model, f, *args, **kwargs)
        if Path(f).parent == tmp_path:  # a partial file exists when the error comes
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full_disk)
    with pytest.raises(DiskFullError, match="export again"):
        export_onnx(tiny, path, batch=2)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_runtime_preprocessing_matches_training_evaluation():
    from rubik.train.data import eval_transform

    for res, crop, interp in [(64, 0.875, "bicubic"), (32, 1.0, "bilinear")]:
        pre = Preprocess(res, crop, interp)
        ref = eval_transform(res, pre.mean, pre.std, crop, interp)
        for image in sample_photos(2) + [np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)]:
            ours, theirs = pre(image)[0], ref(Image.fromarray(image)).numpy()
            assert ours.shape == theirs.shape == (3, res, res)
            # resamplers round differently: at most one grey level apart, almost everywhere equal
            assert np.abs(ours - theirs).max() < 2.5 / 255 / min(pre.std)
            assert np.abs(ours - theirs).mean() < 1e-3


def test_runtime_needs_no_torch(tmp_path, tiny):
    """runtime.py, loaded on its own with `import torch` made to fail, classifies like PyTorch."""
    path = export_onnx(tiny, tmp_path / "m.onnx")
    image = sample_photos(1, seed=3)[0]
    np.save(tmp_path / "image.npy", image)
    with torch.no_grad():
        logits = tiny(torch.from_numpy(Preprocess(32, 1.0, "bicubic")(image)))[0]
    expected = torch.softmax(logits, 0).topk(3)
    script = textwrap.dedent(f"""
        import importlib.abc, importlib.util, json, sys
        import numpy as np

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith(("torch.", "rubik")):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, NoTorch())
        spec = importlib.util.spec_from_file_location("runtime", {str(RUNTIME_FILE)!r})
        runtime = sys.modules["runtime"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(runtime)
        clf = runtime.Classifier({str(path)!r})
        top = clf.topk(np.load({str(tmp_path / "image.npy")!r}), k=3)
        assert not any(m == "torch" or m.startswith(("torch.", "rubik")) for m in sys.modules)
        print(json.dumps(top))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout)
    assert [name for name, _ in top] == [tiny.classes[i] for i in expected.indices]
    assert np.allclose([p for _, p in top], expected.values.numpy(), atol=1e-4)


def test_int8_quantizes_and_checks_against_fp32(tmp_path, tiny, image_folder):
    from rubik.deploy.quantize import check_int8, quantize_int8

    fp32 = export_onnx(tiny, tmp_path / "m.fp32.onnx")
    data = every_image(image_folder)
    config = quantize_int8(fp32, data.images, tmp_path / "m.onnx", calib_n=12, boundary="all")
    assert config.calib_images == 12 and config.float_nodes >= 1  # the stem stays float

    import onnx

    model = onnx.load(str(tmp_path / "m.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 5 and "DequantizeLinear" in ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["rubik.precision"] == "int8" and META_PREPROCESS in meta

    check = check_int8(fp32, tmp_path / "m.onnx", data, tiny.classes)
    # Recount one image at a time through the runtime's top-k (not the batched runner check_int8 uses).
    def top1(path):
        clf = Classifier(path)
        return np.array([tiny.classes.index(clf.topk(image, k=1)[0][0]) for image in data.images])

    a, b = top1(fp32), top1(tmp_path / "m.onnx")
    labels = np.asarray([tiny.classes.index(data.classes[t]) for t in data.labels])
    assert check.n == 24 and check.top1_agreement == pytest.approx(float((a == b).mean()))
    assert check.accuracy_delta == pytest.approx(float((b == labels).mean() - (a == labels).mean()))
    assert Classifier(tmp_path / "m.onnx").precision == "int8"
    # "auto" without selection images: timing alone decides among the candidates
    lines = []
    config = quantize_int8(fp32, data.images, tmp_path / "auto.onnx", calib_n=12, log=lines.append)
    assert len(config.tuned) >= 2 and not config.agreement and str(config.boundary) in config.tuned
    assert "int8 precision boundary" in lines[0] and "agree" not in lines[0]


def test_auto_boundary_drops_candidates_that_agree_worse(tmp_path, tiny, image_folder, monkeypatch):
    # Accuracy before speed: the earliest boundary is made to disagree with fp32 on half the selection
    # images, so "auto" must not pick it however fast it is.
    import rubik.deploy.quantize as q

    fp32 = export_onnx(tiny, tmp_path / "m.fp32.onnx")
    data = every_image(image_folder)
    real = q.predictions
    earliest = {}

    def predictions(path, images, threads=1):
        real(path, images, threads)  # every file still runs
        p = real(fp32, images, threads)  # the later boundaries agree with fp32, the earliest on half the images
        if Path(path).name == earliest.get("name"):
            p = p.copy()
            p[::2] = (p[::2] + 1) % 3
        return p

    def time_files(paths, x, threads, rounds=30):
        return {k: 1.0 + int(k) for k in paths}  # earlier boundaries would be faster

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32), str(tmp_path / "pre.onnx"), skip_symbolic_shape=False)
    first = q.candidate_boundaries(onnx.load(str(tmp_path / "pre.onnx")).graph)[0]
    earliest["name"] = f"int8_minmax_{first}.onnx"
    monkeypatch.setattr(q, "predictions", predictions)
    monkeypatch.setattr(q, "time_files", time_files)
    config = q.quantize_int8(fp32, data.images[:12], tmp_path / "m.onnx", calib_n=12, select_images=data.images[12:],
                             method="minmax", log=lambda s: None)
    assert len(config.agreement) >= 2 and config.selection_images == 12
    assert config.agreement[str(first)] <= 0.5 < min(v for k, v in config.agreement.items() if k != str(first))
    assert str(first) not in config.tuned and config.boundary != first
    assert config.boundary == min(int(k) for k in config.tuned)  # the fastest of the ones left


def test_auto_calibration_takes_the_method_that_agrees_better(tmp_path, tiny, image_folder, monkeypatch):
    import rubik.deploy.quantize as q

    fp32 = export_onnx(tiny, tmp_path / "m.fp32.onnx")
    data = every_image(image_folder)
    real = q.predictions

    def predictions(path, images, threads=1):  # MinMax made to flip every image's class, Percentile to agree
        real(path, images, threads)
        p = real(fp32, images, threads)
        return (p + 1) % 3 if Path(path).name.startswith("int8_minmax_") else p

    monkeypatch.setattr(q, "predictions", predictions)
    lines = []
    config = q.quantize_int8(fp32, data.images[:12], tmp_path / "m.onnx", calib_n=12, boundary="all",
                             select_images=data.images[12:], log=lines.append)
    assert config.calibration == "percentile" and config.calibration_agreement["minmax"] == 0.0
    assert "-> percentile" in lines[0]
    assert q.quantize_int8(fp32, data.images[:12], tmp_path / "m2.onnx", calib_n=12, boundary="all").calibration \
        == "minmax"  # nothing to measure on: MinMax


def test_cli_export_run_dir_to_int8(tmp_path, run_dir, image_folder, capsys, monkeypatch):
    out = tmp_path / "out" / "m.onnx"
    code, stdout, err = run_cli(["export", "--weights", str(run_dir), "-o", str(out), "--int8", "--calib",
                                 str(image_folder), "--calib-n", "12", "--eval-n", "12", "--boundary", "all",
                                 "--max-drop", "100"], capsys, monkeypatch)
    assert code == 0, err
    assert "ONNX Runtime vs PyTorch: verified on 16 real images" in stdout
    assert "top-1 agreement" in stdout and "on 3 held-out images" in stdout  # the run's split: 1 per class
    assert out.is_file() and (tmp_path / "out" / "m.fp32.onnx").is_file()
    assert Classifier(out).classes == ["cat", "dog", "owl"]


def test_export_pipeline_returns_the_files_and_the_report(tmp_path, tiny, image_folder):
    """The Python function under `rubik export`: the files it wrote, both checks, and the report it would print."""
    from rubik.classify.export import ClassifierExport
    from rubik.deploy.pipeline import export

    lines = []
    result = export(ClassifierExport(tiny), tmp_path / "m.onnx", int8=True, calib=str(image_folder), calib_n=12,
                    eval_n=12, boundary="all", max_drop=100, log=lines.append)
    assert result.path == tmp_path / "m.onnx" and result.files == [tmp_path / "m.fp32.onnx", tmp_path / "m.onnx"]
    assert result.verification.n == 16 and result.int8.n == 3 and result.report == lines
    assert lines[0].startswith(f"wrote {tmp_path / 'm.fp32.onnx'}") and str(result.int8) in lines
    assert Classifier(result.path).precision == "int8"


def test_cli_missing_weights_is_one_line(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["export", "--model", "tinynet_e", "--weights", str(tmp_path / "nope"), "-o",
                            str(tmp_path / "m.onnx")], capsys, monkeypatch)
    assert code == 2 and "do not exist" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["export", "--model", "tinynet_e", "-o", str(tmp_path / "m.onnx")], capsys, monkeypatch)
    assert code == 2 and "needs trained weights" in err


def test_cli_mismatched_architecture_and_weights(tmp_path, tiny, capsys, monkeypatch):
    weights = tmp_path / "w.safetensors"
    save_file(tiny.state_dict(), str(weights))
    code, _, err = run_cli(["export", "--model", "tinynet_e", "--weights", str(weights), "-o",
                            str(tmp_path / "m.onnx")], capsys, monkeypatch)
    assert code == 2 and "does not fit model tinynet_e" in err and len(err.strip().splitlines()) == 1


def test_corrupt_onnx_file(tmp_path, tiny, capsys, monkeypatch):
    path = export_onnx(tiny, tmp_path / "m.onnx")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(RuntimeModelError, match="not a valid ONNX model"):
        Classifier(path)
    with pytest.raises(ModelFileError, match="corrupt"):
        verify_onnx(tiny, path)
    code, _, err = run_cli(["bench", str(path), "--runs", "2"], capsys, monkeypatch)
    assert code == 2 and "not a valid ONNX model" in err and "Traceback" not in err


def test_calibration_folder_without_images(tmp_path, run_dir, capsys, monkeypatch):
    empty = tmp_path / "empty" / "cat"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("no pictures here")
    with pytest.raises(NoImagesError, match="no images found"):
        open_images(tmp_path / "empty")
    code, _, err = run_cli(["export", "--weights", str(run_dir), "-o", str(tmp_path / "m.onnx"), "--int8",
                            "--calib", str(tmp_path / "empty")], capsys, monkeypatch)
    assert code == 2 and "no images found" in err and len(err.strip().splitlines()) == 1


def test_bench_rows_and_plot(tmp_path, tiny, monkeypatch):
    import statistics

    import rubik.deploy.bench as bench_module
    from rubik.deploy.bench import bench, format_table, plot

    timed, loops, real = {}, [], bench_module.time_interleaved

    def recording(fns, **kwargs):  # the real timing loop; the test keeps each path's samples
        times = real(fns, **kwargs)
        loops.append(sorted(times))
        timed.update({backend: ts for (_, backend), ts in times.items()})
        return times

    monkeypatch.setattr(bench_module, "time_interleaved", recording)
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    rows = bench([str(spec)], backends=("eager", "ort-fp32", "ort-int8"), runs=5, warmup=1, calib_n=4,
                 log=lambda s: None)
    assert [r.backend for r in rows] == ["eager", "ort-fp32", "ort-int8"]
    # Each row summarises its own backend's samples: the median, and numpy's 90th percentile.
    assert all(len(timed[r.backend]) == 5 for r in rows)
    assert [r.median_ms for r in rows] == [statistics.median(timed[r.backend]) for r in rows]
    assert [r.p90_ms for r in rows] == [float(np.percentile(timed[r.backend], 90)) for r in rows]
    assert len({r.macs for r in rows}) == 1 and rows[0].macs > 0
    table = format_table(rows, peak_gmacs=10.0)
    assert table.count("tiny") == 3
    assert plot(rows, tmp_path / "p.png").stat().st_size > 1000

    # together: every target's paths in one interleaved loop (by default, one loop per target)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**TINY, "name": "other"}))
    loops.clear()
    rows = bench([str(spec), str(other)], backends=("eager",), runs=3, warmup=1, log=lambda s: None)
    assert loops == [[(0, "eager")], [(0, "eager")]] and [r.model for r in rows] == ["tiny", "other"]
    loops.clear()
    rows = bench([str(spec), str(other)], backends=("eager",), runs=3, warmup=1, together=True, log=lambda s: None)
    assert loops == [[(0, "eager"), (1, "eager")]] and [r.model for r in rows] == ["tiny", "other"]


def test_ncnn_export_is_verified(tmp_path, tiny):
    pytest.importorskip("pnnx")
    pytest.importorskip("ncnn")
    from rubik.deploy.edge import export_ncnn

    result = export_ncnn(tiny, tmp_path / "m")
    assert result.param.is_file() and result.bin.is_file()
    assert result.verification.max_abs_diff <= result.verification.tolerance
    assert result.verification.top1_agreement >= 0.9


def test_digits_and_split_folders(tmp_path, image_folder):
    train, test = open_images("digits", "train"), open_images("digits", "test")
    assert (len(train), len(test)) == (1437, 360) and train.classes == [str(i) for i in range(10)]
    assert train.images[0].shape == (8, 8, 3) and train.images[0].dtype == np.uint8
    assert set(test.labels) == set(range(10))
    # ROOT/train and ROOT/test are used for their splits; a flat tree of images is unlabelled
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "train").symlink_to(image_folder)
    assert open_images(tmp_path / "split", "train").classes == ["cat", "dog", "owl"]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (9, 9)).save(flat / "a.png")
    assert open_images(flat).labels is None


def test_calibration_survives_a_tensor_with_a_degenerate_range(tmp_path, image_folder):
    """Untrained weights leave BatchNorm the identity: activations shrink layer after layer to subnormal
    floats, whose range no 2048-bin float32 histogram can split (ORT's Percentile calibrator raised
    "Too many bins for data range"). Such a tensor must calibrate like any other."""
    from rubik.deploy.quantize import check_int8, quantize_int8

    torch.manual_seed(0)
    model = rubik.create_model(TINY, num_classes=3).eval()
    fp32 = export_onnx(model, tmp_path / "m.fp32.onnx")
    data = every_image(image_folder)
    for method in ("percentile", "minmax", "auto"):
        out = tmp_path / f"{method}.onnx"
        config = quantize_int8(fp32, data.images[:12], out, calib_n=12, boundary="all", method=method,
                               select_images=data.images[12:], log=lambda s: None)
        assert config.calibration in ("percentile", "minmax")
        assert check_int8(fp32, out, data.subset(list(range(12, 24)))).n == 12


def test_cli_int8_gate_failure_names_the_plan_in_one_line(tmp_path, run_dir, image_folder, capsys, monkeypatch):
    # --max-drop 0 on 12 held-out images: the plan runs where int8 flips a labelled answer; the gate is the
    # test's to set, so a stand-in gate fails every int8 file but passes fp32: the plan probes, cannot save
    # the file, and the one-line error names what it tried
    import onnx

    import rubik.deploy.precision_plan as pp
    import rubik.deploy.quantize as q

    monkeypatch.setattr(pp, "MAX_PROBES", 6)  # six leave-one-out files, spread over the layers: enough here
    monkeypatch.setattr(q.Int8Gate, "drop", lambda self, path: 0.0 if Path(path).name.endswith("fp32.onnx") else 2.0)
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli(["export", "--weights", str(run_dir), "-o", str(out), "--int8", "--calib",
                                 str(image_folder), "--calib-n", "12", "--eval-n", "12", "--boundary", "all",
                                 "--calib-method", "minmax"], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "int8 loses 2.00 accuracy points (> --max-drop 1.0)" in err
    assert "the precision plan could not save it" in err and "cap 1 of 6 probed" in err
    assert "precision plan failed" in stdout
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["rubik.int8"])
    assert meta["plan"]["passed"] is False and meta["plan"]["probed"] == 6 and meta["plan"]["keep_float"] == []
    # a gate no file can pass (int8 asked to gain 5 points): nothing is probed, and the error says why
    code, stdout, err = run_cli(["export", "--weights", str(run_dir), "-o", str(out), "--int8", "--calib",
                                 str(image_folder), "--calib-n", "12", "--eval-n", "12", "--boundary", "all",
                                 "--max-drop", "-5"], capsys, monkeypatch)
    assert code == 2 and "no precision plan can pass it: the fp32 file itself does not" in err
    assert "not searched" in stdout and len(err.strip().splitlines()) == 1


def test_ort_int8_note_only_for_silu_and_sigmoid_models():
    from rubik.deploy.quantize import ort_activation_note

    assert "efficientnet_lite0" in ort_activation_note(rubik.create_model("tinynet_e"))
    assert ort_activation_note(rubik.create_model("efficientnet_lite0")) is None
    assert ort_activation_note(rubik.create_model("ghostnet_050")) is None  # ReLU and a hard-sigmoid gate
