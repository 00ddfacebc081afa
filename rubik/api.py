"""rubik's Python API: what every command does, as functions. The `rubik` command parses its flags and calls
these; every `rubik train` / `rubik export` flag is a keyword argument of the same name here.

    import rubik
    spec = rubik.twist("efficientnet_b0", ratio=0.25)
    run = rubik.train(spec, data="digits", epochs=15, out="runs/d")
    run = rubik.load_run("runs/d")
    run.evaluate()                                  # {"top1": ..., "top5": ..., ...} or {"map": ..., ...}
    run.predict("img.png")                          # classes or boxes
    run.export("m.onnx", int8=True, calib="digits")

A model argument is a name (`rubik.list_models()`, detectors included), a JSON spec file, a spec (dict,
ModelSpec, DetectorSpec, a twist result) or a run directory; the task (classify, detect) follows from it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import nn

from .errors import RubikError
from .run import CONFIG_FILE, RunDir
from .tasks import task_for_model, task_for_weights, task_named


def _model_arg(model: Any) -> Any:
    """A twist result or a Run stands for its spec or its directory; anything else is passed on as it is."""
    if isinstance(model, Run):
        return str(model.path)
    return getattr(model, "spec", model) if hasattr(model, "macs") else model


def _architecture(model: Any) -> Any:
    """The architecture a model argument names: a run directory's spec (its model.json), else the argument."""
    model = _model_arg(model)
    return RunDir(model).record.model if _is_run(model) else model


def _is_run(model: Any) -> bool:
    return isinstance(model, (str, Path)) and RunDir(model).is_run()


# ---- models ---------------------------------------------------------------------------------------


def create_model(model: Any, num_classes: int | None = None, pretrained: bool = False,
                 weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """A classifier or detector by name or spec (official ImageNet weights with `pretrained`, a file with
    `weights`), or the trained model of a run directory. Classifier keywords (features_only, out_indices,
    drop_rate ...) go to `rubik.models.create_model`."""
    model = _model_arg(model)
    if _is_run(model):
        return load_model(model)
    task = task_for_model(model)
    if kwargs:
        if task.name != "classify":
            raise RubikError(f"{', '.join(kwargs)} are classifier options; a {task.name} model takes num_classes, "
                             "pretrained and weights")
        from .models.weights import create_model as create_classifier

        return create_classifier(model, num_classes=1000 if num_classes is None else num_classes,
                                 pretrained=pretrained, weights=weights, **kwargs)
    return task.create(model, num_classes, pretrained, weights)


def load_model(weights: str | Path, model: Any = None) -> nn.Module:
    """The trained model (eval mode) of a run directory, or of a weights file and the model it is for."""
    return task_for_weights(weights, _model_arg(model)).load(weights, _model_arg(model))


def profile(model: Any, resolution: int | None = None, measure_latency: bool = True, threads: int = 1,
            runs: int = 50):
    """Parameters, MACs (multiply-accumulates: the papers' FLOPs), peak activations and CPU latency of a model
    object, name, spec or run; a detector's are also split into backbone, extra layers and head (`.parts`)."""
    net = model if isinstance(model, nn.Module) else create_model(model)
    return task_for_model(net.spec).profile(net, resolution, measure_latency, threads, runs)


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the named classifiers and detectors matching the shell-style `pattern`."""
    import fnmatch

    from .detect.model import DETECTORS
    from .models import list_models as classifiers

    return classifiers(pattern) + sorted(n for n in DETECTORS if fnmatch.fnmatch(n, pattern or "*"))


def model_table(pattern: str | None = None) -> list[dict[str, Any]]:
    """`rubik models`: each named classifier and detector (shell-style `pattern`) with its input size, params and
    MACs as built, and the published figures where there are some."""
    rows = []
    for name in ("classify", "detect"):
        rows += task_named(name).model_table(pattern)
    return rows


# ---- twist ----------------------------------------------------------------------------------------


def latency_function(runtime: str = "torch", int8: bool = False, anchor: Any = None) -> Callable[[Any], float]:
    """Milliseconds of a classifier spec at batch 1 on one thread: PyTorch eager, or the file `rubik export`
    writes (int8 when asked), on ONNX Runtime or ExecuTorch (XNNPACK); `anchor`: each measured against this
    model's time (rubik.deploy.bench.spec_latency)."""
    if runtime == "torch":
        if int8 or anchor is not None:
            raise RubikError(f"{'int8 latency' if int8 else 'a latency measured against another model'} is "
                             "measured on an exported file: add --runtime onnxruntime or executorch")
        from .models import build
        from .profile import deployed, latency

        return lambda spec: latency(deployed(build(spec)), spec.resolution, threads=1, runs=30)  # V3 folded
    from .deploy.bench import spec_latency

    return spec_latency(runtime, int8=int8, anchor=anchor)


def twist(base: Any = "efficientnet_b0", *, flops: str | float | None = None, ratio: float | None = None,
          latency: str | float | None = None, runtime: str = "torch", int8: bool = False, method: str = "tiny",
          formula: str | None = None, name: str | None = None, base_resolution: int = 0,
          num_classes: int | None = None, out: str | Path | None = None, measure_latency: bool = False,
          latency_of: Any = None):
    """The best (resolution, depth, width) of `base` for one budget: `flops` (MACs, "100M"), `ratio` (of the
    base's MACs), `latency` ("4ms", measured on `runtime`, int8 when asked) or `latency_of` (another model's
    latency on `runtime`, at `base_resolution` when given: each candidate is timed against it, so a drift of the
    machine's speed cancels). A detector base (ssdlite_*) twists its backbone so that the whole detector
    (backbone, extra layers, head for `num_classes` classes, at its input size, which follows r) meets the
    budget. Returns the twist result: `.spec` (train it: `rubik.train(result, ...)`), `.macs`, `.error`,
    `.latency_ms`, `.params`; `out` writes its spec JSON (a --model file)."""
    from .cube.twist import Budget, budget_of

    if latency_of is not None and any(b is not None for b in (flops, ratio, latency)):
        raise RubikError("give exactly one budget: flops, ratio, latency or latency_of")
    budget = budget_of(flops, ratio, latency) if latency_of is None else None
    base = _architecture(base)
    detector = task_for_model(base).name == "detect"
    measure = None
    if latency_of is not None:
        anchor = _peer_spec(latency_of, detector, base_resolution)
        measure = (_detector_latency(runtime, int8, num_classes, anchor) if detector else
                   latency_function(runtime, int8, anchor))
        budget = Budget("latency", measure.anchor_ms)
    elif budget.kind == "latency" or measure_latency:
        measure = _detector_latency(runtime, int8, num_classes) if detector else latency_function(runtime, int8)
    twister, result = (_twist_detector if detector else _twist_classifier)(
        base, budget, method, formula, measure, name, base_resolution, num_classes)
    result.twister, result.budget, result.base_latency_ms = twister, budget, None
    if measure_latency:
        result.latency_ms = measure(result.spec) if result.latency_ms is None else result.latency_ms
        result.base_latency_ms = measure(twister.base)
    if out:
        import json

        from .files import atomic_write_text

        atomic_write_text(Path(out), json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _twist_classifier(base, budget, method, formula, measure, name, base_resolution, num_classes):
    import torch

    from .cube.twist import twist as twist_spec
    from .models import build
    from .profile import count_params, deployed

    if num_classes is not None:
        raise RubikError("num_classes is for detector bases (their head's MACs grow with it)")
    twister, result = twist_spec(base, budget, method, formula, measure, name, base_resolution)
    with torch.device("meta"):  # as deployed (GhostNetV3 folded), like MACs
        result.params = count_params(deployed(build(result.spec)))
        result.base_params = count_params(deployed(build(twister.base)))
    return twister, result


def _twist_detector(base, budget, method, formula, measure, name, base_resolution, num_classes):
    import torch

    from .detect.model import build_detector, detector_macs_params
    from .detect.twist import COCO_CLASSES, twist_detector

    classes = COCO_CLASSES if num_classes is None else num_classes
    twister, result = twist_detector(base, budget, method, formula, measure, name, classes, base_resolution or None)
    with torch.device("meta"):
        result.params = detector_macs_params(build_detector(result.spec, classes))[1]
        result.base_params = detector_macs_params(build_detector(twister.base, classes))[1]
    return twister, result


def _detector_latency(runtime: str, int8: bool, num_classes: int | None, anchor: Any = None):
    from .detect.twist import COCO_CLASSES, detector_latency

    if runtime == "torch" and int8:
        raise RubikError("int8 latency is measured on an exported file: add --runtime onnxruntime or executorch")
    return detector_latency(runtime, COCO_CLASSES if num_classes is None else num_classes, int8, anchor=anchor)


def _peer_spec(model: Any, detector: bool, resolution: int):
    """The spec of the model whose latency is a twist's budget, at `resolution` (0: its own)."""
    from dataclasses import replace

    model = _architecture(model)
    if detector:
        from .detect.model import get_detector_spec, is_detector

        if not is_detector(model):
            raise RubikError(f"latency_of {model!r} is no detector; a detector base is timed against a detector")
        return get_detector_spec(model, resolution or None)
    from .models import get_spec

    spec = get_spec(model)
    return replace(spec, resolution=resolution) if resolution else spec


# ---- train ----------------------------------------------------------------------------------------


def _config_values(model: Any, data: Any, set: list[str] | dict | None, options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments -> TrainConfig values, with a suggestion for a misspelt option."""
    from .train.recipes import TrainConfig, parse_overrides

    known = {f.name for f in fields(TrainConfig)}
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise RubikError(f"unknown training option {key!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                                   "; `rubik train --print-config` lists them"))
    values = {k: v for k, v in options.items() if v is not None}
    model = _architecture(model)  # a run directory: its architecture, fresh weights (--init RUN for its weights)
    if model is not None:
        values["model"] = model.to_dict() if hasattr(model, "to_dict") else str(model) if isinstance(model, Path) \
            else model
    if data is not None:
        values["data"] = str(data)
    values.update(parse_overrides(set) if isinstance(set, list) else dict(set or {}))
    return values


def train_config(model: Any = None, data: Any = None, *, config: str | Path | None = None,
                 set: list[str] | dict | None = None, **options: Any):
    """The resolved TrainConfig of a new run (`rubik train --print-config`): the recipe, the defaults the
    model's task brings for its data, the YAML file `config`, then the keywords."""
    from .train.recipes import build_config, load_yaml

    values = _config_values(model, data, set, options)
    yaml_values = load_yaml(config) if config else {}
    source = values.get("data", yaml_values.get("data", "digits"))
    task = task_for_model(values.get("model", yaml_values.get("model", "")))
    return build_config(data_defaults=task.data_defaults(source), yaml_values=yaml_values, cli_values=values)


def _default_out(model: Any, data: str) -> Path:
    name = model.get("name", "model") if isinstance(model, dict) else Path(str(model)).stem
    base = Path("runs") / f"{name}-{Path(data).name or 'data'}"
    out, i = base, 2
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


def train(model: Any = None, data: Any = None, *, out: str | Path | None = None, resume: str | Path | None = None,
          config: str | Path | None = None, set: list[str] | dict | None = None, progress: bool | None = None,
          **options: Any) -> Run:
    """Train a model on `data` (an ImageFolder tree, COCO, VOC or the embedded "digits") into the run directory
    `out` (default runs/MODEL-DATA), or continue the run `resume`; returns the Run. Options are the TrainConfig
    fields (`rubik train --print-config`): epochs=, batch_size=, lr=, resolution=, recipe= ..."""
    from .tasks import make_task
    from .train.recipes import apply, load_yaml, validate
    from .train.trainer import read_config, save_config
    from .train.trainer import train as run_trainer

    main = int(os.environ.get("RANK", "0")) == 0
    if resume is not None:
        run_dir = Path(resume)
        c = read_config(run_dir)
        values = _config_values(model, data, set, options)
        if config or values:
            c = apply(c, {**(load_yaml(config) if config else {}), **values}, "command line")
            validate(c)
            if main:
                save_config(run_dir, c)
        summary = run_trainer(c, run_dir, make_task(c), resume=True, progress=progress)
        return Run(run_dir, summary)
    c = train_config(model, data, config=config, set=set, **options)
    if out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RubikError("with several processes (torchrun), name the run directory with --out")
    run_dir = Path(out) if out is not None else _default_out(c.model, c.data)
    if main and (run_dir / CONFIG_FILE).exists():
        raise RubikError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or choose another --out")
    return Run(run_dir, run_trainer(c, run_dir, make_task(c), progress=progress))


# ---- runs -----------------------------------------------------------------------------------------


class Run:
    """A training run directory: its record, metrics and best result, and its trained model at work."""

    def __init__(self, path: str | Path, summary: dict[str, Any] | None = None):
        self.path = Path(path)
        self.dir = RunDir(self.path)
        self.dir.check()
        self.summary = summary  # what training returned, when this Run comes from rubik.train
        self._model: nn.Module | None = None

    def __repr__(self) -> str:
        best = self.best
        return f"Run({str(self.path)!r}, task={self.task!r}, best {best.get('metric')} {best.get('value', 0):.2f})"

    @property
    def record(self):
        return self.dir.record

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def best(self) -> dict[str, Any]:
        return self.dir.best()

    @property
    def metrics(self) -> list[dict[str, float]]:
        return self.dir.metrics()

    @property
    def model(self) -> nn.Module:
        """The best weights, loaded once (eval mode)."""
        if self._model is None:
            self._model = task_named(self.task).load(self.path)
        return self._model

    def evaluate(self, data: str | Path | None = None, **kw: Any) -> dict[str, Any]:
        """The task's metrics on the images this run did not train on (`data` default: the run's own data)."""
        return evaluate(self.path, data, **kw).as_dict()

    def predict(self, images: str | Path | list, **kw: Any) -> list[dict[str, Any]]:
        """Top classes (top_k=5) or boxes (min_score=0.3; out= names the drawn image) of each image file."""
        return task_named(self.task).predict(self.model, _paths(images), **kw)

    def export(self, output: str | Path, **flags: Any):
        """The verified file(s) and their report: `rubik export --weights RUN` (format=, int8=, calib= ...)."""
        return export(self.path, output, **flags)


def load_run(path: str | Path) -> Run:
    """An existing run directory (written by `rubik train`, this version or an earlier one)."""
    return Run(path)


def _paths(images: str | Path | list) -> list[str | Path]:
    return list(images) if isinstance(images, (list, tuple)) else [images]


def evaluate(weights: str | Path, data: str | Path | None = None, *, model: Any = None, **kw: Any):
    """`rubik eval`: a trained model (run or weights file) scored on `data`'s held-out images; an Evaluation
    (metrics, per-class scores, the classifier's confusion matrix). `kw`: resolution, batch_size, workers,
    strict."""
    if data is None:
        if not _is_run(weights):
            raise RubikError("name the data to evaluate on (--data): a weights file does not say what it learnt")
        from .train.trainer import read_config

        data = read_config(Path(weights)).data
    task = task_for_weights(weights, _model_arg(model))
    return task.evaluate_model(task.load(weights, _model_arg(model)), str(data),
                               **{k: v for k, v in kw.items() if v is not None})


def predict(weights: str | Path, images: str | Path | list, *, model: Any = None, **kw: Any) -> list[dict[str, Any]]:
    """`rubik predict`: what a trained model sees in image files (classes: top_k; boxes: min_score, out)."""
    task = task_for_weights(weights, _model_arg(model))
    return task.predict(task.load(weights, _model_arg(model)), _paths(images), **kw)


def cam(weights: str | Path, image: str | Path, *, model: Any = None, target: str | None = None,
        out: str | Path | None = None) -> dict[str, Any]:
    """`rubik cam`: a classifier's class activation map of `image` saved as an overlay PNG."""
    from .classify.infer import class_activation

    task = task_for_weights(weights, _model_arg(model))
    if task.name != "classify":
        raise RubikError(f"cam explains a classifier's class; {weights} is a {task.name} model")
    return class_activation(task.load(weights, _model_arg(model)), image, target, out)


# ---- export ---------------------------------------------------------------------------------------


def _export_model(model: Any, weights: Any, pretrained: bool, random_init: bool, num_classes: int | None):
    if weights is None and _is_run(model):
        model, weights = None, model
    if weights is not None:
        if not Path(weights).exists():
            raise RubikError(f"weights {weights} do not exist; pass a training run directory "
                             "(with model.json and best.safetensors) or a .safetensors/.pth file")
        return load_model(weights, model)
    if model is None:
        raise RubikError("name the model: --model NAME|SPEC.json, or --weights RUN_DIR")
    if pretrained:
        return create_model(model, pretrained=True).eval()
    if random_init:
        return create_model(model, num_classes).eval()
    raise RubikError("export needs trained weights: --weights RUN_DIR|FILE, or --pretrained for the official "
                     "ImageNet weights (--random-init exports untrained weights, for speed tests only)")


def export(model: Any = None, output: str | Path | None = None, *, weights: str | Path | None = None,
           pretrained: bool = False, random_init: bool = False, num_classes: int | None = None,
           log: Callable[[str], None] | None = None, **flags: Any):
    """`rubik export`: a model (a run directory, a model object, or a name with `weights`, `pretrained` or
    `random_init`) -> the verified file `output` (ONNX, ExecuTorch .pte or ncnn; int8 with `int8=True,
    calib=...`). Returns the ExportResult (`.path`, `.files`, `.verification`, `.int8` with `.drop`, `.report`)."""
    from .deploy.pipeline import export as export_file

    if output is None:
        raise RubikError("name the output file: output='model.onnx' (-o)")
    net = model if isinstance(model, nn.Module) else _export_model(_model_arg(model), weights, pretrained,
                                                                     random_init, num_classes)
    task = task_for_model(net.spec)
    return export_file(task.exporter(net), output, log=log, **flags)


def bench(targets: list[Any], *, weights: str | Path | None = None, log: Callable[[str], None] | None = None,
          **options: Any) -> list:
    """`rubik bench`: latency of models (names, specs, run directories, model objects) and of exported files
    (.onnx, .pte: any task's) on each backend; rows with median ms and GMAC/s. `weights`: for a single model.
    Options: threads, batch, runs, backends, calib, calib_n."""
    from .deploy.bench import bench as bench_targets

    if weights is not None:
        if len(targets) != 1:
            raise RubikError("--weights are for a single model: name one MODEL with them")
        targets = [load_model(weights, targets[0])]
    resolved = [load_model(t) if _is_run(t) else t for t in targets]
    return bench_targets(resolved, log=log or (lambda s: None), **options)


# ---- search ---------------------------------------------------------------------------------------


def search(study: str, *, data: str = "digits", log: Callable[[str], None] | None = None,
           **settings: Any) -> dict[str, Any]:
    """`rubik search run`: join or start the study `study` (resumable: call again to continue) and run its trials
    in this process; returns {"study", "completed": trials this worker finished, "summary": the study's state}.
    Settings are `rubik search run`'s flags: base=, budget=[0.25, 0.5], trials=, epochs=, storage= ..."""
    from .search.run import run_study

    return run_study(study, data=data, log=log, **settings)
