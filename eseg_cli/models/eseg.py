"""The ESeg family: EfficientNet (or Lite) encoder + BiFPN over P2..P9 + fusion head (Figure 3)."""

from __future__ import annotations

import inspect

from eseg_cli.errors import EsegError
from eseg_cli.models.bifpn import BiFPNDecoder
from eseg_cli.models.encoders import efficientnet_encoder, timm_encoder
from eseg_cli.models.heads import FusionHead
from eseg_cli.models.layers import check_norm
from eseg_cli.models.pretrained import (
    EncoderWeights,
    load_encoder_weights,
    model_normalization,
    read_encoder_weights,
)
from eseg_cli.models.registry import register_model
from eseg_cli.models.scales import SCALES
from eseg_cli.models.segmentor import Segmentor


def build_eseg(
    scale: str,
    num_classes: int = 19,
    *,
    pretrained: str | EncoderWeights | None = None,
    encoder_variant: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    min_level: int = 2,
    max_level: int = 9,
    fusion: str = "fastattn",
    head_fusion: str = "softmax",
    act: str | None = None,
    encoder: str | None = None,
    width: float | None = None,
    depth: float | None = None,
    channels: int | None = None,
    repeats: int | None = None,
    drop_path_rate: float = 0.0,
    decoder_norm: str = "batch",
) -> Segmentor:
    """Build an ESeg model of a Table 3 ``scale``.

    Args:
        scale: a Table 3 scale by its registered name, ``eseg-s`` ... ``eseg-lite-l`` (the registry's
            :func:`~eseg_cli.models.registry.model_name` reads other spellings).
        pretrained: local backbone weights of the matching EfficientNet: a file or a Hugging Face cache folder,
            in any format :mod:`eseg_cli.models.pretrained` reads (or what its ``read_encoder_weights``
            returned). TF-ported weights get the TF encoder variant; the load report is ``model.load_report``.
        encoder_variant: ``pytorch`` or ``tf`` (SAME padding, BN eps 1e-3); default: what the weights need,
            else ``pytorch``.
        mean, std: the input normalisation; default: the weights', else ImageNet's. Recorded in the config.
        min_level, max_level: the BiFPN's level range (P2..P9 by default; P3..P7 is EfficientDet's).
        fusion: BiFPN node fusion, ``fastattn`` (default), ``softmax`` or ``sum``.
        head_fusion: how the head combines levels, ``softmax`` (default) or ``sum``.
        act: decoder activation; default ``relu`` for Lite, ``silu`` otherwise.
        encoder: a timm backbone name to replace the EfficientNet (e.g. ``resnet50`` for Table 8, or
            ``efficientnet_lite0`` for ImageNet EfficientNet-Lite0 weights).
        width, depth, channels, repeats: override Table 3 (tiny models for tests and experiments).
        decoder_norm: the BiFPN's and the head's normalisation, ``batch`` (the paper's) or ``group`` (GroupNorm,
            for proxies whose top levels are a few pixels; the encoder keeps its batch norm).
    """
    if scale not in SCALES:
        raise EsegError(f"{scale!r} is not an ESeg scale; choose one of {', '.join(SCALES)}", field="scale")
    s = SCALES[scale]
    act = act or ("relu" if s.lite else "silu")
    weights = None
    if pretrained:
        weights = pretrained if isinstance(pretrained, EncoderWeights) else read_encoder_weights(pretrained,
                                                                                                 encoder_variant)
    if encoder and encoder.startswith("tf_"):
        encoder, encoder_variant = encoder[3:], encoder_variant or "tf"
    variant = encoder_variant or (weights.variant if weights else "pytorch")
    if encoder:
        enc = timm_encoder(encoder, drop_path_rate=drop_path_rate, variant=variant)
    else:
        enc = efficientnet_encoder(width or s.width, depth or s.depth, lite=s.lite, drop_path_rate=drop_path_rate,
                                   variant=variant)
    report = load_encoder_weights(enc, weights) if weights is not None else None
    if mean is None or std is None:
        mean, std = (weights.mean, weights.std) if weights is not None else model_normalization(None)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise EsegError(f"mean and std must be three numbers each (std > 0), got {mean!r} and {std!r}")
    ch = channels or s.channels
    reps = repeats if repeats is not None else s.repeats
    if ch < 1 or reps < 0:
        raise EsegError(f"channels must be >= 1 and repeats >= 0, got {ch} and {reps}")
    check_norm(decoder_norm)
    decoder = BiFPNDecoder(enc.feature_info.channels(), enc.feature_info.reduction(), ch, reps,
                           min_level=min_level, max_level=max_level, fusion=fusion, act=act, norm=decoder_norm)
    head = FusionHead(ch, max_level - min_level + 1, num_classes, act=act, fusion=head_fusion, norm=decoder_norm)
    config = dict(name=s.name, num_classes=num_classes, min_level=min_level, max_level=max_level, fusion=fusion,
                  head_fusion=head_fusion, act=act, encoder=encoder, width=width, depth=depth, channels=channels,
                  repeats=repeats, encoder_variant=variant, mean=[float(x) for x in mean], std=[float(x) for x in std],
                  decoder_norm=decoder_norm)
    model = Segmentor(enc, decoder, head, num_classes=num_classes, max_level=max_level, config=config)
    model.load_report = report
    return model


def _make_builder(name: str):
    def builder(num_classes: int = 19, **kwargs) -> Segmentor:
        return build_eseg(name, num_classes, **kwargs)

    builder.__name__ = name.replace("-", "_")
    sig = inspect.signature(build_eseg)  # the options it accepts, so the registry can check them by name
    builder.__signature__ = sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "scale"])
    builder.__wrapped_builder__ = build_eseg  # its annotations give the options' types
    builder.__doc__ = f"{SCALES[name].display_name} (Table 3: {SCALES[name]})."
    return builder


for _name in SCALES:
    register_model(_make_builder(_name))
