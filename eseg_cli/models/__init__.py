"""Models: encoders, decoders, heads, the ESeg assembly and its scale table."""

from eseg_cli.models.registry import build_model, list_models, model_name, register_model
from eseg_cli.models.scales import SCALES, Scale, resolve_scale
from eseg_cli.models.segmentor import Segmentor

__all__ = [
    "SCALES", "Scale", "Segmentor", "build_model", "list_models", "model_name", "register_model", "resolve_scale",
]
