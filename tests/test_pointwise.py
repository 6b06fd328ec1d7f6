"""The private oneDNN call of prepared 1x1 convolutions: used, exact, and refused loudly when torch changes it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eseg_cli import build_model
from eseg_cli.inference import prepare, prepare_model

TINY = dict(width=0.25, depth=0.25, channels=16, repeats=1)
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


@needs_onednn
def test_prepared_1x1_convs_call_onednn_and_equal_conv2d(one_thread):
    model = prepare_model(build_model("lite-s", num_classes=5, **TINY))
    convs = [m for m in model.modules() if isinstance(m, prepare.PointwiseConv)]
    assert convs and model.prepared["pointwise_kernels"] == len(convs)
    x = torch.randn(2, convs[0].in_channels, 9, 11).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autograd.profiler.profile() as prof:
        out = convs[0](x)
    assert "aten::mkldnn_convolution" in {e.key for e in prof.key_averages()}  # the fast path, not a fallback
    with torch.inference_mode():
        torch.testing.assert_close(out, F.conv2d(x, convs[0].weight, convs[0].bias), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("change,match", [
    ({"ONEDNN_OP": "mkldnn_convolution_renamed"}, "is gone"),
    ({"ONEDNN_SCHEMA": "aten::mkldnn_convolution(Tensor self, Tensor weight) -> Tensor"}, "changed its signature"),
])
def test_a_changed_private_op_fails_loudly(change, match, monkeypatch):
    model = build_model("lite-s", num_classes=5, **TINY)
    for name, value in change.items():
        monkeypatch.setattr(prepare, name, value)
    prepare.check_onednn_pointwise.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=match):
            prepare_model(model)
        assert prepare_model(model, channels_last=False).prepared["pointwise_kernels"] == 0  # NCHW never uses it
    finally:
        monkeypatch.undo()
        prepare.check_onednn_pointwise.cache_clear()
    prepare.check_onednn_pointwise()  # the real op passes


@needs_onednn
def test_an_op_that_computes_something_else_fails_loudly(monkeypatch):
    class Wrong:  # the op's name and signature, another result
        default = torch.ops.aten.mkldnn_convolution.default

        def __call__(self, *args):
            return self.default(*args) + 1

    monkeypatch.setattr(torch.ops.aten, "mkldnn_convolution", Wrong())
    prepare.check_onednn_pointwise.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="no longer computes conv2d"):
            prepare.check_onednn_pointwise()
    finally:
        monkeypatch.undo()
        prepare.check_onednn_pointwise.cache_clear()
