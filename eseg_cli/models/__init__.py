"""Models: encoders, decoders, heads, the ESeg assembly and its scale table.

Registration is explicit, as in timm: importing a model module registers its builders (``@register_model``),
and this file imports every model module. A new model is one module in this folder plus its name in the
import line below.
"""

from eseg_cli.models import deeplab, eseg  # noqa: F401  (the model modules: importing one registers its builders)
from eseg_cli.models.registry import (
    build_model,
    check_model_options,
    create_model,
    list_models,
    model_name,
    register_model,
)
from eseg_cli.models.scales import SCALES, Scale
from eseg_cli.models.segmentor import Segmentor

__all__ = [
    "SCALES", "Scale", "Segmentor", "build_model", "check_model_options", "create_model", "list_models",
    "model_name", "register_model",
]
