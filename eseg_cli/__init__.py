"""eseg: the ESeg semantic-segmentation family (Meng et al., 2022) in PyTorch.

>>> from eseg_cli import build_model
>>> model = build_model("eseg-s", num_classes=19)

The public names are imported on first use (PEP 562), so ``import eseg_cli`` — and the ``eseg`` command's
start-up — does not pay for torch.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# No network at run time: albumentations asks the package index for a newer version on import (a DNS lookup
# and a connection on every command, long stalls where DNS does not answer). Off before it is ever imported.
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"

from eseg_cli.errors import EsegError  # noqa: E402

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "SCALES": "eseg_cli.models",
    "build_model": "eseg_cli.models",
    "list_models": "eseg_cli.models",
    "Predictor": "eseg_cli.inference",
}

__all__ = ["EsegError", "__version__", *_LAZY]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__
    from eseg_cli.inference import Predictor  # noqa: F401
    from eseg_cli.models import SCALES, build_model, list_models  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'eseg_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
