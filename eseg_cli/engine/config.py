"""Training configuration: YAML recipes give every default, overrides (CLI flags) replace them, the result is
validated.

The recipes ship inside the package as ``eseg_cli.recipes`` (the project's ``recipes/`` folder): ``base.yaml``
holds what every dataset shares and ``<dataset>.yaml`` what is that dataset's; a recipe may add a ``scales:``
mapping of per-scale overrides (``scales: {lite-s: {batch_size: 8}}``). Resolution order: ``base.yaml`` < the
dataset's recipe < a user's recipe file (``--recipe``) < overrides, each recipe followed by its ``scales[scale]``.
:class:`TrainConfig` holds the types and the checks, and no default of its own.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Optional

import yaml

from eseg_cli.errors import EsegError
from eseg_cli.inference.precision import AMP_DTYPES
from eseg_cli.models.registry import check_model_options, model_name
from eseg_cli.utils import check_finite, check_size, path_component

RECIPES_PACKAGE = "eseg_cli.recipes"
BASE_RECIPE = "base"  # recipes/base.yaml: the settings every dataset shares
DEFAULT_DATASET = "synthetic"  # what trains when no dataset is named: the built-in set


@dataclass
class TrainConfig:
    """Every setting of a training run (saved as ``config.yaml`` in the run folder).

    Each field's value comes from the recipes (``recipes/base.yaml`` says what each one means); ``scale`` and
    ``dataset`` are stored as their registered names (``eseg-lite-s``, ``ade20k``).
    """

    # model
    scale: str
    model: dict
    pretrained: Optional[str]
    init_from: Optional[str]
    freeze_encoder_steps: int
    encoder_lr_mult: float
    # data
    dataset: str
    data_root: Optional[str]
    train_split: str
    val_split: str
    extra_data: list
    extra_ratio: float
    num_classes: Optional[int]
    crop_size: list
    scale_range: list
    hflip: bool
    photometric: bool
    val_resize: Optional[list]
    batch_size: int
    val_batch_size: int
    workers: int
    preload_mb: int
    # optimisation
    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    steps: int
    warmup_steps: int
    warmup_factor: float
    min_lr_ratio: float
    loss: str
    ohem_thresh: float
    ohem_min_kept: int
    clip_grad: Optional[float]
    amp: Optional[str]
    ema_decay: Optional[float]
    channels_last: bool
    compile: bool
    # bookkeeping
    seed: int
    deterministic: bool
    device: str
    log_interval: int
    tensorboard: bool
    eval_interval: int
    checkpoint_interval: int
    max_val_images: Optional[int]
    check_data: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "loss": ("ohem", "ce"),
    "amp": (None, *AMP_DTYPES, "auto"),  # auto: resolved when a run starts (inference.precision.resolve_amp)
}
_PAIRS = ("crop_size", "scale_range", "val_resize")
# (key, low, high, low excluded, high excluded): values outside silently change a run's meaning
_RANGES = (
    ("ohem_thresh", 0.0, 1.0, True, False),
    ("ohem_min_kept", 0, float("inf"), False, True),
    ("momentum", 0.0, 1.0, False, True),
    ("weight_decay", 0.0, float("inf"), False, True),
    ("warmup_factor", 0.0, 1.0, True, False),
    ("min_lr_ratio", 0.0, 1.0, False, False),
    ("clip_grad", 0.0, float("inf"), True, True),
    ("extra_ratio", 0.0, 1.0, True, True),
)
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
        check_finite(float(value), f"{where}: '{key}'")
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
    missing = [k for k in types_ if k not in values]
    if missing:
        raise EsegError(f"{where}: no value for {', '.join(repr(k) for k in missing)}; every key needs one "
                        f"(recipes/{BASE_RECIPE}.yaml gives those every dataset shares)")
    cfg = TrainConfig(**values)
    cfg.scale = _canonical(model_name, cfg.scale, "scale", where)  # stored canonical: nothing below resolves it
    cfg.dataset = _canonical(dataset_name_of, cfg.dataset, "dataset", where)
    if cfg.amp in ("none", "fp32"):  # said out loud (--amp none): full precision, stored as null
        cfg.amp = None
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
        for x in v:
            check_finite(x, f"{where}: '{key}'")
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
        try:
            check_model_options(cfg.scale, cfg.model)
        except EsegError as e:
            raise EsegError(f"{where}: 'model': {e}") from None
    if cfg.warmup_steps < 0 or cfg.workers < 0 or cfg.freeze_encoder_steps < 0 or cfg.preload_mb < 0:
        raise EsegError(f"{where}: 'warmup_steps', 'workers', 'freeze_encoder_steps' and 'preload_mb' must be >= 0")
    if cfg.compile and cfg.device == "xla":
        raise EsegError(f"{where}: 'compile' is for CPU and CUDA (torch.compile); torch-xla compiles the training "
                        "step itself, so set compile: false", field="compile")
    if cfg.encoder_lr_mult < 0:
        raise EsegError(f"{where}: 'encoder_lr_mult' must be >= 0, got {cfg.encoder_lr_mult!r}")
    if cfg.ema_decay is not None and not 0.0 < cfg.ema_decay < 1.0:
        raise EsegError(f"{where}: 'ema_decay' must be between 0 and 1 (e.g. 0.9998), got {cfg.ema_decay!r}")
    for key, lo, hi, lo_open, hi_open in _RANGES:
        v = getattr(cfg, key, None)
        if v is None:
            continue
        if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
            lo_b, hi_b = "(" if lo_open else "[", ")" if hi_open else "]"
            raise EsegError(f"{where}: '{key}' must be in {lo_b}{lo}, {hi}{hi_b}, got {v!r}")
    for key in ("train_split", "val_split"):
        path_component(getattr(cfg, key), f"{where}: '{key}'")
    cfg.crop_size = [int(x) for x in cfg.crop_size]
    cfg.extra_data = [_check_source(i, src, where, cfg.extra_ratio) for i, src in enumerate(cfg.extra_data)]
    if cfg.extra_data and sum(s["ratio"] for s in cfg.extra_data) >= 1:
        raise EsegError(f"{where}: the extra_data ratios add up to {sum(s['ratio'] for s in cfg.extra_data):g}; "
                        "they must leave the main training set a share (sum < 1)")
    return cfg


def _check_source(i: int, src: Any, where: str, ratio: float) -> dict:
    """One ``extra_data`` entry, completed with its defaults (dataset folder, split train, ``ratio``: the config's
    ``extra_ratio``)."""
    key = f"extra_data[{i}]"
    if isinstance(src, str):
        src = {"root": src}
    if not isinstance(src, dict) or not src.get("root"):
        raise EsegError(f"{where}: '{key}' must be a mapping with at least 'root' (e.g. "
                        "{dataset: folder, root: DIR, ratio: 0.5}), got {src!r}")
    unknown = set(src) - {"dataset", "root", "ratio", "split"}
    if unknown:
        raise EsegError(f"{where}: '{key}' has unknown keys {sorted(unknown)}; use dataset, root, ratio, split")
    out = {"dataset": src.get("dataset", "folder"), "root": str(src["root"]), "ratio": src.get("ratio", ratio),
           "split": src.get("split", "train")}
    out["dataset"] = _canonical(dataset_name_of, str(out["dataset"]), f"{key}.dataset", where)
    path_component(out["split"], f"{where}: '{key}.split'")
    r = out["ratio"]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
        raise EsegError(f"{where}: '{key}.ratio' must be a number between 0 and 1 (the share of training samples "
                        f"drawn from it), got {r!r}")
    out["ratio"] = float(r)
    return out


def builtin_recipes() -> list[str]:
    """Names of the dataset recipes shipped with the package (``base`` is laid under each of them)."""
    return sorted(p.name[: -len(".yaml")] for p in files(RECIPES_PACKAGE).iterdir()
                  if p.name.endswith(".yaml") and p.name != f"{BASE_RECIPE}.yaml")


def builtin_recipe(name: str) -> Traversable:
    """The shipped recipe ``name`` (e.g. ``"cityscapes"``), read through :mod:`importlib.resources`."""
    path = files(RECIPES_PACKAGE) / f"{name}.yaml"
    if not path.is_file():
        raise EsegError(f"no built-in recipe for {name!r} (there are {', '.join(builtin_recipes())}); give a recipe "
                        "file of your own")
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


def dataset_name_of(name: str) -> str:
    """The registered dataset ``name`` stands for (``"ade"``, ``"ADE20K"`` -> ``"ade20k"``)."""
    from eseg_cli.data.datasets import dataset_class

    return dataset_class(name).name


def _canonical(resolve, value: str, key: str, where: str) -> str:
    try:
        return resolve(value)
    except EsegError as e:
        raise EsegError(f"{where}: '{key}': {e}", field=key) from None


def with_new_keys(saved: dict) -> dict:
    """A run's saved config with the settings added to eseg since it was written, at their base-recipe value
    (e.g. ``tensorboard: false``), so that an older run still resumes."""
    base = read_recipe(builtin_recipe(BASE_RECIPE))
    return {**{k: v for k, v in base.items() if k not in saved and k in _field_types()}, **saved}


def load_config(dataset: str | None = None, scale: str | None = None, overrides: dict | None = None,
                recipe: str | Path | None = None) -> TrainConfig:
    """Resolve the configuration of ``scale`` on ``dataset``, each layer replacing the keys it gives:
    ``base.yaml``, the dataset's recipe, its ``scales`` block for ``scale``, then the file ``recipe`` and its own
    ``scales`` block (a user's recipe may be a whole copy or just the keys it changes), then ``overrides``
    (entries whose value is None are ignored: unset flags).

    ``dataset`` defaults to the ``dataset`` of ``recipe``, else the built-in synthetic set; ``scale`` to the
    recipes' ``scale``. Names may be spelled loosely (``"ade"``, ``"S"``); the config stores the registered ones.
    """
    user = read_recipe(Path(recipe)) if recipe else {}
    dataset = dataset_name_of(dataset or user.get("dataset") or DEFAULT_DATASET)
    layers = [(builtin_recipe(BASE_RECIPE), read_recipe(builtin_recipe(BASE_RECIPE)))]
    if not recipe or dataset in builtin_recipes():
        layers.append((builtin_recipe(dataset), read_recipe(builtin_recipe(dataset))))
    if recipe:
        layers.append((Path(recipe), user))
    merged: dict = {}
    for _path, data in layers:
        merged.update({k: v for k, v in data.items() if k != "scales"})
    merged["dataset"] = dataset
    if scale is not None:
        merged["scale"] = scale
    key = merged["scale"] = _canonical(model_name, merged["scale"], "scale",
                                       "options" if scale is not None else "recipe")
    for path, data in layers:
        per_scale = data.get("scales") or {}
        if not isinstance(per_scale, dict):
            raise EsegError(f"recipe {path}: 'scales' must map scale names to overrides")
        for name, block in per_scale.items():
            if _canonical(model_name, str(name), f"scales.{name}", f"recipe {path}") == key:
                if not isinstance(block, dict):
                    raise EsegError(f"recipe {path}: 'scales.{name}' must be a mapping of config keys")
                merged.update(block)
    cfg = validate(merged, where=f"recipe {layers[-1][0]}")
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    if over:
        # the recipe's extra_data as written: a source without a ratio takes the final extra_ratio
        cfg = validate({**cfg.to_dict(), "extra_data": merged["extra_data"], **over}, where="options")
    return cfg


def as_config(config: dict | TrainConfig) -> TrainConfig:
    """Accept a :class:`TrainConfig`, or a plain dict read as overrides of the recipes for its ``dataset`` and
    ``scale`` (when given): ``{"steps": 100}`` is the synthetic recipe for 100 steps."""
    if isinstance(config, TrainConfig):
        return config
    if not isinstance(config, dict):
        raise EsegError(f"config must be a dict or TrainConfig, got {type(config).__name__}")
    rest = dict(config)
    return load_config(rest.pop("dataset", None), rest.pop("scale", None), rest)
