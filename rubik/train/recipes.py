"""Training configuration: one flat dataclass, named presets (recipes), and overrides.

Every hyper-parameter of a run lives in `TrainConfig` and is written to RUN_DIR/config.yaml, so a
run can be read, compared and repeated. A recipe is a set of values for some of the fields; the
order of precedence is dataclass defaults < recipe < data-set defaults < YAML file < command line.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import RubikError


@dataclass
class TrainConfig:
    # What to train on.
    model: str | dict = "tinynet_e"  # a named model, a spec JSON path, or a spec dict
    data: str = "digits"  # an ImageFolder tree or the embedded "digits"
    recipe: str = "small"
    resolution: int = 0  # input size; 0 = the model spec's own
    val_split: float = 0.1  # fraction held out when the folder has no val/ or test/ split
    strict: bool = False  # a corrupt image stops training instead of being skipped
    # Schedule and optimiser. The learning rate is `lr` per `lr_base_batch` images, scaled linearly
    # to the global batch (batch_size x accum_steps x processes).
    epochs: int = 30
    steps_per_epoch: int = 0  # optimizer steps per epoch; 0 = one pass over the training set
    batch_size: int = 64  # per process
    accum_steps: int = 1
    optimizer: str = "adamw"  # adamw | sgd | rmsprop_tf
    lr: float = 2e-3
    lr_base_batch: int = 64
    momentum: float = 0.9
    nesterov: bool = False
    eps: float = 1e-8  # for rmsprop_tf it sits inside the square root, as in TensorFlow
    rmsprop_alpha: float = 0.9
    weight_decay: float = 0.05
    scheduler: str = "cosine"  # cosine | step
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    decay_epochs: float = 2.4  # step scheduler: multiply by decay_rate every decay_epochs
    decay_rate: float = 0.97
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    # Regularisation.
    label_smoothing: float = 0.1
    drop_rate: float = 0.2
    drop_connect_rate: float = 0.1
    ema_decay: float = 0.998  # 0 = no EMA
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)) over the first updates
    # Augmentation (torchvision transforms v2).
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    interpolation: str = ""  # bicubic | bilinear; "" = the model spec's
    hflip: float = 0.5
    color_jitter: float = 0.0
    randaugment: bool = False
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    crop_pct: float = 0.0  # evaluation centre crop; 0 = the model spec's
    # Fine-tuning.
    pretrained: bool = False
    init: str = ""  # a run directory or weights file to start from (the head is replaced if sizes differ)
    freeze_epochs: int = 0  # train only the classifier for the first epochs
    qat: bool = False  # quantization-aware: simulate the int8 export's rounding (train/qat.py)
    qat_calib_images: int = 256  # training images that fix the int8 input ranges before fine-tuning
    # Machinery.
    seed: int = 0
    deterministic: bool = False
    num_workers: int = -1  # -1 = chosen from the data and the machine
    device: str = "auto"
    amp: str = "auto"  # auto (bf16 on GPU, off on CPU) | bf16 | off
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False
    checkpoint_every: int = 0  # optimizer steps between checkpoints, beside the one each epoch; 0 = epochs only
    keep_last: int = 2  # checkpoints kept
    log_every: int = 50  # steps between log lines
    # Data path (train/memory_data.py): memory = decode once into a uint8 cache, augment batches as tensors;
    # auto = memory when the decoded set has one image size and fits under data_memory_gb.
    data_path: str = "auto"  # auto | memory | files
    data_memory_gb: float = 0.0  # 0 = a quarter of the machine's memory
    data_cache: str = ""  # folder of decoded caches; "" = $RUBIK_CACHE/decoded or ~/.cache/rubik/decoded

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Published recipes. Values not in a recipe keep the dataclass defaults above.
RECIPES: dict[str, dict[str, Any]] = {
    # TinyNet (Han et al., NeurIPS 2020), the official ImageNet recipe (EfficientNet's, in timm terms:
    # rmsproptf, eps 1e-3, lr 0.048 per 1024, warm-up 3 epochs from 1e-6, step decay 0.97 / 2.4 epochs).
    # The paper's "+RA" rows add RandAugment: set randaugment: true.
    "paper": dict(epochs=450, batch_size=128, optimizer="rmsprop_tf", lr=0.048, lr_base_batch=1024, momentum=0.9,
                  eps=1e-3, rmsprop_alpha=0.9, weight_decay=1e-5, scheduler="step", warmup_epochs=3.0,
                  warmup_lr=1e-6, decay_epochs=2.4, decay_rate=0.97, label_smoothing=0.1, drop_rate=0.2,
                  drop_connect_rate=0.2, ema_decay=0.9999, ema_warmup=False, crop_scale=[0.08, 1.0],
                  interpolation="bicubic", hflip=0.5, color_jitter=0.4, randaugment=False),
    # GhostNet (Han et al., CVPR 2020): SGD with momentum 0.9, lr 0.4 per 1024 images, cosine decay,
    # weight decay 4e-5, dropout 0.2 before the classifier. The paper gives no epoch count or warm-up;
    # 300 and 3 are our assumption.
    "ghostnet": dict(epochs=300, batch_size=128, optimizer="sgd", lr=0.4, lr_base_batch=1024, momentum=0.9,
                     nesterov=False, weight_decay=4e-5, scheduler="cosine", warmup_epochs=3.0, warmup_lr=1e-6,
                     min_lr=0.0, label_smoothing=0.1, drop_rate=0.2, drop_connect_rate=0.0, ema_decay=0.9999,
                     ema_warmup=False, crop_scale=[0.08, 1.0], interpolation="bilinear", hflip=0.5,
                     color_jitter=0.4),
    # A fast schedule for small data sets: AdamW with cosine decay, short warm-up, an EMA that warms up.
    # For SGD: optimizer: sgd, lr: 0.1, weight_decay: 5e-5, nesterov: true.
    "small": dict(),
}


def _check_value(name: str, value: Any, default: Any) -> Any:
    """Coerce a YAML/CLI value to the field's type, or raise a one-line error."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, list):
        if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            return [float(v) for v in value]
    elif name == "model":
        if isinstance(value, (str, dict)):
            return value
    elif isinstance(default, str):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise RubikError(f"config value {name}={value!r} should be of type {type(default).__name__}")


def apply(config: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """Return `config` with `values` applied; unknown keys raise, naming close matches."""
    known = {f.name: f for f in fields(TrainConfig)}
    out = dataclasses.replace(config)
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=2)
            hint = f"did you mean {' or '.join(close)}?" if close else "see `rubik train --print-config`"
            raise RubikError(f"{source}: unknown training option {key!r}; {hint}")
        setattr(out, key, _check_value(key, value, getattr(config, key)))
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RubikError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RubikError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RubikError(f"config file {path} should hold a mapping of option: value")
    return data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings from `--set`, with values read as YAML (numbers, booleans, lists)."""
    import yaml

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise RubikError(f"--set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def build_config(recipe: str = "small", data_defaults: dict[str, Any] | None = None,
                 yaml_values: dict[str, Any] | None = None, cli_values: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < recipe < data-set defaults < YAML < command line."""
    yaml_values = dict(yaml_values or {})
    recipe = (cli_values or {}).get("recipe") or yaml_values.get("recipe") or recipe
    if recipe not in RECIPES:
        raise RubikError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    config = apply(TrainConfig(recipe=recipe), RECIPES[recipe], f"recipe {recipe}")
    config = apply(config, data_defaults or {}, "data defaults")
    config = apply(config, yaml_values, "config file")
    config = apply(config, cli_values or {}, "command line")
    validate(config)
    return config


def validate(c: TrainConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise RubikError(message)

    need(c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}")
    need(c.batch_size >= 2, f"batch_size must be >= 2 (BatchNorm needs 2 samples), got {c.batch_size}")
    need(c.accum_steps >= 1, f"accum_steps must be >= 1, got {c.accum_steps}")
    need(c.lr > 0, f"lr must be positive, got {c.lr}")
    need(c.optimizer in ("adamw", "sgd", "rmsprop_tf"),
         f"optimizer must be adamw, sgd or rmsprop_tf, not {c.optimizer!r}")
    need(c.scheduler in ("cosine", "step"), f"scheduler must be cosine or step, not {c.scheduler!r}")
    need(0 <= c.ema_decay < 1, f"ema_decay must be in [0, 1), got {c.ema_decay}")
    need(0 < c.val_split < 1, f"val_split must be between 0 and 1, got {c.val_split}")
    need(c.amp in ("auto", "bf16", "off"), f"amp must be auto, bf16 or off, not {c.amp!r}")
    need(c.interpolation in ("", "bicubic", "bilinear"),
         f"interpolation must be bicubic or bilinear, not {c.interpolation!r}")
    need(len(c.crop_scale) == 2 and 0 < c.crop_scale[0] <= c.crop_scale[1] <= 1,
         f"crop_scale must be [min, max] within (0, 1], got {c.crop_scale}")
    need(c.resolution == 0 or c.resolution >= 16, f"resolution must be >= 16, got {c.resolution}")
    need(c.steps_per_epoch >= 0, f"steps_per_epoch must be >= 0, got {c.steps_per_epoch}")
    need(c.keep_last >= 1, f"keep_last must be >= 1, got {c.keep_last}")
    need(c.data_path in ("auto", "memory", "files"), f"data_path must be auto, memory or files, not {c.data_path!r}")
    need(c.data_memory_gb >= 0, f"data_memory_gb must be >= 0, got {c.data_memory_gb}")
    need(not (c.pretrained and c.init), "give either --pretrained or --init, not both")
