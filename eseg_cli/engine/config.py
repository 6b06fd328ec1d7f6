"""Training configuration: YAML recipes give every default, CLI flags override them, the result is validated.

A recipe is ``recipes/<dataset>.yaml`` (shipped inside the package as ``eseg_cli.recipes``): top-level keys
are :class:`TrainConfig` fields, and an optional ``scales:`` mapping holds per-scale overrides
(``scales: {lite-s: {batch_size: 8}}``). Resolution order:
dataclass defaults < recipe < recipe's ``scales[scale]`` < overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Optional

import yaml

from eseg_cli.errors import EsegError
from eseg_cli.utils import check_size

RECIPES_PACKAGE = "eseg_cli.recipes"
DATASETS = ("cityscapes", "ade20k", "synthetic", "folder")


@dataclass
class TrainConfig:
    """Every setting of a training run (saved as ``config.yaml`` in the run folder)."""

    # model
    scale: str = "lite-s"
    model: dict = field(default_factory=dict)  # extra build_model kwargs (width, channels, fusion, ...)
    pretrained: Optional[str] = None  # local path of backbone weights
    # data
    dataset: str = "synthetic"
    data_root: Optional[str] = None  # None with dataset=synthetic: the cached default set
    train_split: str = "train"
    val_split: str = "val"
    num_classes: Optional[int] = None  # None: from the dataset
    crop_size: list = field(default_factory=lambda: [512, 1024])  # [H, W]
    scale_range: list = field(default_factory=lambda: [0.5, 2.0])
    hflip: bool = True
    photometric: bool = True
    val_resize: Optional[list] = None  # [H, W] to resize val images (None: full size, the paper's protocol);
    # labels keep their size and predictions are resized back to it
    batch_size: int = 8  # per process
    val_batch_size: int = 1
    workers: int = 2
    # optimisation
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    steps: int = 40000
    warmup_steps: int = 1000
    warmup_factor: float = 0.001  # lr at step 0 = lr * warmup_factor
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    loss: str = "ohem"  # ohem | ce
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 50000  # per image (so the loss does not depend on the number of processes)
    clip_grad: Optional[float] = None  # max grad norm
    amp: Optional[str] = None  # None | bf16 | fp16
    ema_decay: Optional[float] = None  # e.g. 0.9998; None disables EMA
    channels_last: bool = False
    # bookkeeping
    seed: int = 0
    deterministic: bool = True
    device: str = "auto"  # auto | cpu | cuda[:N] | xla
    log_interval: int = 50
    eval_interval: int = 2000
    checkpoint_interval: int = 1000
    max_val_images: Optional[int] = None  # evaluate on the first N val images during training
    check_data: bool = True  # read every image/label pair before training (cached; see eseg_cli.data.check)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CHOICES = {
    "dataset": DATASETS,
    "optimizer": ("sgd", "adamw"),
    "loss": ("ohem", "ce"),
    "amp": (None, "bf16", "fp16"),
}
_PAIRS = ("crop_size", "scale_range", "val_resize")
_POSITIVE = ("batch_size", "val_batch_size", "steps", "log_interval", "eval_interval", "checkpoint_interval", "lr")


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_type(key: str, value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` (int -> float allowed), or raise naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        tp = args[0]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, (list, tuple)),
        dict: isinstance(value, dict),
    }.get(tp, True)
    if not ok:
        raise EsegError(f"{where}: '{key}' must be {tp.__name__}, got {type(value).__name__} {value!r}")
    if tp is float:
        return float(value)
    if tp is list:
        return list(value)
    return value


def validate(raw: dict, where: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` from a plain dict, with errors naming the offending key."""
    types_ = _field_types()
    values = {}
    for key, value in raw.items():
        if key not in types_:
            close = difflib.get_close_matches(key, list(types_), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise EsegError(f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(types_)}")
        values[key] = _check_type(key, value, types_[key], where)
    cfg = TrainConfig(**values)
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            shown = ", ".join("null" if c is None else c for c in choices)
            raise EsegError(f"{where}: '{key}' must be one of {shown}, got {getattr(cfg, key)!r}")
    for key in _PAIRS:
        v = getattr(cfg, key)
        if v is None:
            continue
        if len(v) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v):
            raise EsegError(f"{where}: '{key}' must be a list of two positive numbers, got {v!r}")
    for key in _POSITIVE:
        if getattr(cfg, key) <= 0:
            raise EsegError(f"{where}: '{key}' must be positive, got {getattr(cfg, key)!r}")
    if cfg.num_classes is not None and cfg.num_classes < 1:
        raise EsegError(f"{where}: 'num_classes' must be a positive integer (or null: from the dataset), "
                        f"got {cfg.num_classes!r}")
    if cfg.max_val_images is not None and cfg.max_val_images < 1:
        raise EsegError(f"{where}: 'max_val_images' must be positive (or null: all), got {cfg.max_val_images!r}")
    for key in ("crop_size", "val_resize"):
        if getattr(cfg, key) is not None:
            check_size(getattr(cfg, key), f"{where}: '{key}'")
    if not all(isinstance(k, str) for k in cfg.model):
        raise EsegError(f"{where}: 'model' must map model option names to values, got {cfg.model!r}")
    if cfg.model:
        from eseg_cli.models.registry import check_model_options

        try:
            check_model_options(cfg.scale, cfg.model)
        except EsegError as e:
            raise EsegError(f"{where}: 'model': {e}") from None
    if cfg.warmup_steps < 0 or cfg.workers < 0:
        raise EsegError(f"{where}: 'warmup_steps' and 'workers' must be >= 0")
    if cfg.ema_decay is not None and not 0.0 < cfg.ema_decay < 1.0:
        raise EsegError(f"{where}: 'ema_decay' must be between 0 and 1 (e.g. 0.9998), got {cfg.ema_decay!r}")
    cfg.crop_size = [int(x) for x in cfg.crop_size]
    return cfg


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with the package (one per dataset)."""
    return sorted(p.name[: -len(".yaml")] for p in files(RECIPES_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def builtin_recipe(name: str) -> Traversable:
    """The shipped recipe ``name`` (e.g. ``"cityscapes"``), read through :mod:`importlib.resources`."""
    path = files(RECIPES_PACKAGE) / f"{name}.yaml"
    if not path.is_file():
        raise EsegError(f"no built-in recipe {name!r}; the built-in recipes are {', '.join(builtin_recipes())}")
    return path


def read_recipe(path: str | Path | Traversable) -> dict:
    """Load a recipe YAML file into a dict (clear errors for missing files and bad YAML)."""
    if isinstance(path, str):
        path = Path(path)
    if path.is_dir():
        raise EsegError(f"recipe {path} is a folder; give a recipe YAML file")
    if not path.is_file():
        raise EsegError(f"recipe {path} not found; give a YAML file of config keys, or copy one of the built-in "
                        f"recipes ({', '.join(builtin_recipes())}) from the recipes/ folder of the project")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise EsegError(f"recipe {path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise EsegError(f"recipe {path} is not valid YAML: {' '.join(str(e).split())}") from None
    except OSError as e:
        raise EsegError(f"recipe {path} cannot be read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise EsegError(f"recipe {path} must be a mapping of config keys, got {type(data).__name__}")
    return data


def _scale_key(scale: str) -> str:
    from eseg_cli.models import resolve_scale

    try:
        return resolve_scale(scale).name.split("eseg-", 1)[1]
    except EsegError:
        return str(scale).lower()  # another registered model name (e.g. deeplab); no per-scale block


def load_config(dataset: str | None = "synthetic", scale: str = "lite-s", overrides: dict | None = None,
                recipe: str | Path | None = None) -> TrainConfig:
    """Resolve the configuration for ``scale`` on ``dataset``: recipe, its per-scale block, then ``overrides``.

    ``recipe`` replaces ``recipes/<dataset>.yaml``. ``overrides`` with value None are ignored (unset CLI flags).
    """
    dataset = dataset or "synthetic"
    if dataset not in DATASETS:
        raise EsegError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    path = Path(recipe) if recipe else builtin_recipe(dataset)
    data = read_recipe(path)
    per_scale = data.pop("scales", {}) or {}
    if not isinstance(per_scale, dict):
        raise EsegError(f"recipe {path}: 'scales' must map scale names to overrides")
    merged = {"dataset": dataset, **data, "scale": scale}
    key = _scale_key(scale)
    for name, block in per_scale.items():
        if _scale_key(str(name)) == key:
            if not isinstance(block, dict):
                raise EsegError(f"recipe {path}: 'scales.{name}' must be a mapping of config keys")
            merged.update(block)
    cfg = validate(merged, where=f"recipe {path}")
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    if over:
        cfg = validate({**cfg.to_dict(), **over}, where="options")
    return cfg


def as_config(config: dict | TrainConfig) -> TrainConfig:
    """Accept a :class:`TrainConfig`, or a plain dict read as overrides of the recipe of its ``dataset``
    (default synthetic) and ``scale`` (default lite-s): ``{"steps": 100}`` is the synthetic recipe for 100 steps."""
    if isinstance(config, TrainConfig):
        return config
    if not isinstance(config, dict):
        raise EsegError(f"config must be a dict or TrainConfig, got {type(config).__name__}")
    rest = dict(config)
    dataset = rest.pop("dataset", None) or "synthetic"
    scale = rest.pop("scale", None) or "lite-s"
    return load_config(dataset, scale, rest)
