"""A small model registry: ``@register_model`` on a builder function, lookup by name."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from eseg_cli.errors import EsegError

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


def build_model(name: str, num_classes: int = 19, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``build_model("eseg-s", num_classes=19)``.

    Scale names are accepted in any case and with or without the ``eseg-`` prefix (``"S"``,
    ``"lite-s"``). Keyword arguments go to the builder (``pretrained=PATH``, ``min_level``,
    ``max_level``, ``fusion``, ``head_fusion``, ``channels``, ``repeats`` ...).
    """
    _ensure_loaded()
    key = str(name).strip().lower().replace("_", "-")
    if key not in _MODELS and f"eseg-{key}" in _MODELS:
        key = f"eseg-{key}"
    if key not in _MODELS:
        close = difflib.get_close_matches(key, list(_MODELS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise EsegError(f"unknown model {name!r}.{hint} Available: {', '.join(_MODELS)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise EsegError(f"num_classes must be a positive integer, got {num_classes!r}")
    return _MODELS[key](num_classes=num_classes, **kwargs)
