"""Encoders: EfficientNet (ESeg-S/M/L), the Fused-MBConv "Lite" EfficientNet (ESeg-Lite) and any timm
feature backbone (ResNet-50 for Table 8).

Every encoder returns the features P2..P5 (strides 4, 8, 16, 32) as a list and exposes timm's
``feature_info`` contract (``.channels()``, ``.reduction()``), which is all a decoder may rely on.
"""

from __future__ import annotations

from functools import partial

import timm
from timm.layers import get_act_layer
from timm.models._efficientnet_builder import BN_EPS_TF_DEFAULT, decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNetFeatures
from torch import nn

from eseg_cli.errors import EsegError
from eseg_cli.models.fast_backward import SqueezeExcite, with_fast_backward

# EfficientNet-B0's stages as timm architecture strings; width/depth multipliers scale them (Table 3).
EFFICIENTNET_ARCH: list[list[str]] = [
    ["ds_r1_k3_s1_e1_c16_se0.25"],
    ["ir_r2_k3_s2_e6_c24_se0.25"],
    ["ir_r2_k5_s2_e6_c40_se0.25"],
    ["ir_r3_k3_s2_e6_c80_se0.25"],
    ["ir_r3_k5_s1_e6_c112_se0.25"],
    ["ir_r4_k5_s2_e6_c192_se0.25"],
    ["ir_r1_k3_s1_e6_c320_se0.25"],
]

# ESeg-Lite: the same stages, but every block is a Fused-MBConv ("er", timm's EdgeResidual) and none
# has squeeze-and-excitation. The paper does not give kernel sizes or expansion ratios for it; we keep
# 3x3 kernels everywhere (a 5x5 full conv on wide stages costs 2.8x the multiply-adds of a 3x3 for no
# reported gain) and EfficientNetV2's expansion ratio for fused blocks (4; 1 for the first stage):
# with EfficientNet's 6, a full 3x3 conv on the wide stages makes ESeg-Lite-L (69B multiply-adds at
# 1024x2048) costlier than ESeg-S (35B), which contradicts its real-time role; with 4 it is 51B.
# Override with ``arch=`` when experimenting.
LITE_ARCH: list[list[str]] = [
    ["er_r1_k3_s1_e1_c16"],
    ["er_r2_k3_s2_e4_c24"],
    ["er_r2_k3_s2_e4_c40"],
    ["er_r3_k3_s2_e4_c80"],
    ["er_r3_k3_s1_e4_c112"],
    ["er_r4_k3_s2_e4_c192"],
    ["er_r1_k3_s1_e4_c320"],
]

# Indices of timm's EfficientNet feature stages with strides 4, 8, 16, 32 (index 0 is stride 2).
_P2_TO_P5 = (1, 2, 3, 4)


def efficientnet_encoder(
    width: float,
    depth: float,
    *,
    lite: bool = False,
    arch: list[list[str]] | None = None,
    act_layer: str | None = None,
    output_stride: int = 32,
    drop_path_rate: float = 0.0,
    variant: str = "pytorch",
) -> nn.Module:
    """Build an EfficientNet feature extractor (P2..P5) from architecture strings through timm's builder.

    ``width``/``depth`` are Table 3's multipliers. ``lite=True`` switches to :data:`LITE_ARCH` with ReLU
    (the ESeg-Lite encoder); otherwise EfficientNet with SiLU ("swish"), the same network as timm's
    ``efficientnet_bX`` without its 1280-channel head. ``variant="tf"`` builds timm's TensorFlow-compatible
    variant (``tf_efficientnet_bX``: SAME padding, BatchNorm eps 1e-3), the one TF-ported weights need.
    """
    tf = _check_variant(variant) == "tf"
    arch = arch or (LITE_ARCH if lite else EFFICIENTNET_ARCH)
    act = get_act_layer(act_layer or ("relu" if lite else "swish"))
    return with_fast_backward(EfficientNetFeatures(
        block_args=decode_arch_def(arch, depth),
        out_indices=_P2_TO_P5,
        stem_size=32,
        round_chs_fn=partial(round_channels, multiplier=width, divisor=8),
        act_layer=act,
        norm_layer=partial(nn.BatchNorm2d, eps=BN_EPS_TF_DEFAULT) if tf else nn.BatchNorm2d,
        pad_type="same" if tf else "",
        output_stride=output_stride,
        drop_path_rate=drop_path_rate,
        se_layer=SqueezeExcite,
    ))


def _check_variant(variant: str) -> str:
    if variant not in ("pytorch", "tf"):
        raise EsegError(f"encoder_variant must be 'pytorch' or 'tf', got {variant!r}")
    return variant


def timm_encoder(name: str, *, output_stride: int = 32, variant: str = "pytorch", **kwargs) -> nn.Module:
    """Any timm backbone as a P2..P5 feature extractor (e.g. ``resnet50`` for Table 8, ``efficientnet_lite0``).

    ``variant="tf"`` takes timm's TensorFlow-compatible twin of an EfficientNet (``efficientnet_lite0`` ->
    ``tf_efficientnet_lite0``: SAME padding, BN eps 1e-3). Nothing is downloaded: weights come from
    :func:`eseg_cli.models.pretrained.load_encoder_weights`.
    """
    name = timm_name(name, variant)
    try:
        model = timm.create_model(name, pretrained=False, features_only=True, output_stride=output_stride, **kwargs)
    except RuntimeError as e:  # timm's "Unknown model"
        raise EsegError(f"unknown timm encoder {name!r}: {e}") from None
    reductions = model.feature_info.reduction()
    # keep the stages of stride 4..32 (dilated stages keep the stride of the stage before them)
    wanted = [i for i, r in enumerate(reductions) if r >= 4][:4]
    if len(wanted) != 4:
        raise EsegError(f"timm encoder {name!r} does not give four feature levels from stride 4 up")
    return timm.create_model(
        name, pretrained=False, features_only=True, out_indices=tuple(wanted), output_stride=output_stride, **kwargs
    )


def timm_name(name: str, variant: str = "pytorch") -> str:
    """The timm model name of encoder ``name`` in ``variant`` (``tf`` adds timm's ``tf_`` prefix)."""
    _check_variant(variant)
    if name.startswith("tf_"):
        if variant != "tf":
            raise EsegError(f"encoder {name!r} is timm's TensorFlow variant; set encoder_variant to 'tf' or "
                            f"use {name[3:]!r}")
        return name
    if variant == "tf":
        if not timm.is_model("tf_" + name):
            raise EsegError(f"timm has no TensorFlow variant of encoder {name!r} (no 'tf_{name}')")
        return "tf_" + name
    return name
