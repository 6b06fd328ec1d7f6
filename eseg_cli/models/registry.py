"""A small model registry: ``@register_model`` on a builder function, lookup by name."""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable

from torch import nn

from eseg_cli.errors import EsegError
from eseg_cli.models.scales import normalize_name
from eseg_cli.utils import check_finite

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name, with ``_`` spelled ``-`` (``eseg_s`` -> ``eseg-s``)."""
    _MODELS[fn.__name__.replace("_", "-")] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered model: the ESeg family in Table 3's order, then the others."""
    _ensure_loaded()
    return sorted(_MODELS, key=lambda name: not name.startswith("eseg-"))


def _ensure_loaded() -> None:
    # builders register themselves on import
    from eseg_cli.models import deeplab, eseg  # noqa: F401


def model_name(name: str) -> str:
    """The registered name ``name`` stands for: any case, ``_`` for ``-``, and ``eseg-`` optional for the ESeg
    scales (``"S"``, ``"lite_s"`` -> ``"eseg-s"``, ``"eseg-lite-s"``). Raises :class:`EsegError` listing the
    registered names otherwise."""
    _ensure_loaded()
    key = normalize_name(name)
    if key not in _MODELS and f"eseg-{key}" in _MODELS:
        key = f"eseg-{key}"
    if key not in _MODELS:
        close = difflib.get_close_matches(key, list(_MODELS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise EsegError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")
    return key


def build_model(name: str, num_classes: int = 19, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``build_model("eseg-s", num_classes=19)``.

    ``name`` is read by :func:`model_name` (``"S"`` and ``"lite-s"`` work). Keyword arguments go to the builder
    (``pretrained=PATH``, ``min_level``, ``max_level``, ``fusion``, ``head_fusion``, ``channels``, ``repeats`` ...).
    """
    key = model_name(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise EsegError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_model_options(key, kwargs)
    return _MODELS[key](num_classes=num_classes, **kwargs)


def check_model_options(name: str, options: dict) -> None:
    """Refuse keyword arguments that the builder of model ``name`` does not take (before building anything)."""
    key = model_name(name)
    params = inspect.signature(_MODELS[key]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if n != "num_classes" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for k in options:
        if k not in valid:
            close = difflib.get_close_matches(str(k), valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise EsegError(f"unknown model option '{k}' for {key}{hint}; its options: {', '.join(valid)}")
    hints = _type_hints(_MODELS[key])
    for k, v in options.items():
        want = _simple_types(hints.get(k))
        if want and v is not None and not _is_a(v, want):
            names = " or ".join(t.__name__ for t in want)
            raise EsegError(f"model option '{k}' of {key} must be {names}, got {type(v).__name__} {v!r}")
        check_finite(v, f"model option '{k}' of {key}")


def _type_hints(fn) -> dict:
    target = getattr(fn, "__wrapped_builder__", fn)
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no type check, the builder still validates
        return {}


def _simple_types(tp) -> tuple[type, ...]:
    """The plain types (int, float, str, bool) an annotation allows, or () when it is anything richer."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    args = tuple(a for a in args if a is not type(None))
    return args if args and all(a in (int, float, str, bool) for a in args) else ()


def _is_a(v, want: tuple[type, ...]) -> bool:
    if isinstance(v, bool):
        return bool in want
    if isinstance(v, int) and float in want:
        return True
    return isinstance(v, want)
