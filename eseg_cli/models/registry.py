"""The model registry: ``@register_model`` on a builder function, lookup by name.

A builder registers itself when its module is imported; ``eseg_cli/models/__init__.py`` imports every model
module (as timm does), so ``import eseg_cli.models`` fills the registry. This module imports none of them.

Names: :func:`model_name` is the one spelling rule (any case, ``_`` or a space for ``-``, the ``eseg-`` prefix
optional). It is applied once, where a name comes in (the config, the public :func:`build_model`); everything
below takes the registered (canonical) name.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING

from eseg_cli.errors import EsegError
from eseg_cli.utils import check_finite

if TYPE_CHECKING:
    from torch import nn

#: the prefix of the ESeg family's names, optional when a name is given (``"S"`` is ``eseg-s``)
FAMILY_PREFIX = "eseg-"

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name, with ``_`` spelled ``-`` (``eseg_s`` -> ``eseg-s``)."""
    name = fn.__name__.replace("_", "-")
    if _MODELS.get(name, fn) is not fn:
        raise ValueError(f"a model named {name!r} is registered already ({_MODELS[name].__module__})")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered model: the ESeg family in Table 3's order, then the others."""
    return sorted(_MODELS, key=lambda name: not name.startswith(FAMILY_PREFIX))


def spelling(name: str) -> str:
    """The one spelling rule for names: any case, ``_`` or a space for ``-`` (``"Lite_S"`` -> ``"lite-s"``)."""
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


def model_name(name: str, field: str | None = None) -> str:
    """The registered name ``name`` stands for: any case, ``_`` or a space for ``-``, and ``eseg-`` optional
    (``"S"``, ``"lite_s"`` -> ``"eseg-s"``, ``"eseg-lite-s"``). Raises :class:`EsegError` listing the
    registered names otherwise (naming the argument ``field`` when given)."""
    key = spelling(name)
    for candidate in (key, FAMILY_PREFIX + key):
        if candidate in _MODELS:
            return candidate
    close = difflib.get_close_matches(key, list(_MODELS), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    where = f"'{field}': " if field else ""
    raise EsegError(f"{where}unknown model {name!r}.{hint} Available: {', '.join(list_models())} (any case; the "
                    "eseg- prefix is optional)", field=field)


def build_model(name: str, num_classes: int = 19, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``build_model("eseg-s", num_classes=19)``.

    The public entry point: ``name`` is read by :func:`model_name` (``"S"`` and ``"lite-s"`` work), then
    :func:`create_model` builds it. Keyword arguments go to the builder (``pretrained=PATH``, ``min_level``,
    ``max_level``, ``fusion``, ``head_fusion``, ``channels``, ``repeats`` ...).
    """
    return create_model(model_name(name), num_classes, **kwargs)


def create_model(name: str, num_classes: int = 19, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` (its canonical name, as a config or checkpoint stores it)."""
    builder = _builder(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise EsegError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_model_options(name, kwargs)
    return builder(num_classes=num_classes, **kwargs)


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        return _MODELS[name]
    except KeyError:
        raise EsegError(f"no model is registered as {name!r} (registered: {', '.join(list_models())}); "
                        "model_name() reads other spellings") from None


def check_model_options(name: str, options: dict) -> None:
    """Refuse keyword arguments that the builder of the registered model ``name`` does not take (before building
    anything)."""
    builder = _builder(name)
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if n != "num_classes" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for k in options:
        if k not in valid:
            close = difflib.get_close_matches(str(k), valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise EsegError(f"unknown model option '{k}' for {name}{hint}; its options: {', '.join(valid)}")
    hints = _type_hints(builder)
    for k, v in options.items():
        want = _simple_types(hints.get(k))
        if want and v is not None and not _is_a(v, want):
            names = " or ".join(t.__name__ for t in want)
            raise EsegError(f"model option '{k}' of {name} must be {names}, got {type(v).__name__} {v!r}")
        check_finite(v, f"model option '{k}' of {name}")


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
