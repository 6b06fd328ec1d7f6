"""DeepLabV3+ (Table 8's baseline) in the encoder -> decoder -> head layout."""

from __future__ import annotations

import pytest
import torch

from eseg_cli.analysis.profiler import count_flops
from eseg_cli.errors import EsegError
from eseg_cli.models import build_model
from eseg_cli.models.deeplab import ASPP_RATES


@pytest.mark.parametrize("encoder,os_", [("efficientnet_b1", 16), ("test_resnet", 32), ("test_resnet", 16)])
def test_forward_shape_and_output_stride(encoder, os_):
    m = build_model("deeplabv3plus", num_classes=7, encoder=encoder, output_stride=os_, channels=32,
                    low_level_channels=8).eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        feats = m.encoder(x)
        assert feats[-1].shape[-2:] == (64 // os_, 128 // os_)  # OS16: last stage dilated, not strided
        assert feats[0].shape[-2:] == (16, 32)  # the stride-4 skip
        assert m(x).shape == (1, 7, 64, 128)
        assert m.forward_logits(x).shape == (1, 7, 16, 32)
    assert m.decoder.aspp.branches[1][0].dilation == (ASPP_RATES[os_][0],) * 2


def test_config_rebuilds_the_same_model_and_trains():
    m = build_model("deeplabv3plus", num_classes=5, encoder="test_resnet", output_stride=32, channels=16,
                    low_level_channels=8)
    cfg = dict(m.config)
    rebuilt = build_model(cfg.pop("name"), **cfg)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in m.parameters())
    m.train()
    out = m(torch.randn(2, 3, 64, 64))
    out.mean().backward()
    assert m.decoder.aspp.project[0].weight.grad is not None


def test_separable_aspp_is_the_cheaper_variant():
    kw = dict(encoder="test_resnet", output_stride=32, channels=64)
    regular = build_model("deeplabv3plus", **kw)
    separable = build_model("deeplabv3plus", separable_aspp=True, **kw)
    n = lambda m: sum(p.numel() for p in m.decoder.aspp.parameters())  # noqa: E731
    assert n(separable) < n(regular) / 3


def test_bad_options_are_clear_errors():
    with pytest.raises(EsegError, match="output_stride"):
        build_model("deeplabv3plus", output_stride=12)
    with pytest.raises(EsegError, match="timm encoder"):
        build_model("deeplabv3plus", encoder="no_such_net")
    m = build_model("deeplabv3plus", encoder="test_resnet", channels=16, low_level_channels=8).train()
    with pytest.raises(EsegError, match="batch of at least 2"):
        m(torch.randn(1, 3, 64, 64))


# Table 8's FLOPs (B at 1024x2048). Convolution cost is proportional to the pixel count, so 1/64 of the
# pixels times 64 lands within 0.2% of the full-size count (checked) at a fraction of the time.
SLOW = pytest.mark.slow
TABLE8 = [pytest.param("eseg-s", {}, 34.5, marks=SLOW), ("deeplabv3plus", {"output_stride": 16}, 91.8),
          ("deeplabv3plus", {"output_stride": 32}, 49.9),
          pytest.param("eseg-s", {"encoder": "resnet50"}, 188.0, marks=SLOW),
          pytest.param("deeplabv3plus", {"encoder": "resnet50", "output_stride": 32}, 230.3, marks=SLOW)]


def _flops_b(name, kw) -> float:
    return count_flops(build_model(name, **kw), (128, 256))["flops"] * 64 / 1e9


@pytest.mark.parametrize("name,kw,paper_b", TABLE8)
def test_table8_flops_within_5_percent(name, kw, paper_b):
    flops = _flops_b(name, kw)
    assert abs(flops - paper_b) / paper_b < 0.05, (name, kw, flops)


@SLOW
def test_r50_os16_deviation_is_the_documented_one():
    # not tuned for: the one recipe (models/deeplab.py) gives ~405.8B against the paper's 324.3B (+25%)
    flops = _flops_b("deeplabv3plus", {"encoder": "resnet50", "output_stride": 16})
    assert 0.20 < flops / 324.3 - 1 < 0.30
