"""Inference: the prepared (folded, channels_last) model, exact fast post-processing and ``Predictor``."""

from eseg_cli.inference.fold import fold_batchnorm, freeze_fusion_weights
from eseg_cli.inference.postprocess import upsample_argmax, upsample_logits, upsample_softmax
from eseg_cli.inference.predictor import Predictor, read_image
from eseg_cli.inference.prepare import amp_dtype, prepare_model

__all__ = ["Predictor", "amp_dtype", "fold_batchnorm", "freeze_fusion_weights", "prepare_model", "read_image",
           "upsample_argmax", "upsample_logits", "upsample_softmax"]
