"""Inference: running a trained model (the runtime: device, checkpoint loading, precision), the prepared
(folded, channels_last) model, the inference modes, exact fast post-processing, ``Predictor`` and export."""

from eseg_cli.inference.fold import fold_batchnorm, freeze_fusion_weights
from eseg_cli.inference.postprocess import upsample_argmax, upsample_logits, upsample_softmax
from eseg_cli.inference.precision import amp_dtype
from eseg_cli.inference.predictor import Predictor
from eseg_cli.inference.prepare import prepare_model

__all__ = ["Predictor", "amp_dtype", "fold_batchnorm", "freeze_fusion_weights", "prepare_model", "upsample_argmax",
           "upsample_logits", "upsample_softmax"]
