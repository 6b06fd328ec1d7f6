"""The ESeg family: structure, shapes, switches and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from typer.testing import CliRunner

from eseg_cli import EsegError, build_model, list_models
from eseg_cli.cli import app
from eseg_cli.models import SCALES
from eseg_cli.models.bifpn import BiFPNDecoder, WeightedFusion, bifpn_nodes

TINY = dict(width=0.25, depth=0.25, channels=16, repeats=1)
runner = CliRunner()


def tiny(name="eseg-lite-s", **kw):
    return build_model(name, num_classes=5, **{**TINY, **kw})


def test_registry_has_the_six_scales():
    assert list_models()[:6] == ["eseg-lite-s", "eseg-lite-m", "eseg-lite-l", "eseg-s", "eseg-m", "eseg-l"]
    for alias, name in [("S", "eseg-s"), ("lite-m", "eseg-lite-m"), ("ESeg-Lite-L", "eseg-lite-l"), ("l", "eseg-l")]:
        assert build_model(alias, **TINY).config["name"] == name


@pytest.mark.parametrize("name,width,depth,channels,repeats", [
    (s.name, s.width, s.depth, s.channels, s.repeats) for s in SCALES.values()])
def test_full_size_models_follow_table3(name, width, depth, channels, repeats):
    model = build_model(name)
    assert len(model.decoder.layers) == repeats
    assert model.decoder.out_channels == channels
    # timm's EfficientNet-BX has the same encoder parameters as our builder at B1/B4/B7's width/depth
    if name in ("eseg-s", "eseg-m", "eseg-l"):
        import timm

        variant = {"eseg-s": "efficientnet_b1", "eseg-m": "efficientnet_b4", "eseg-l": "efficientnet_b7"}[name]
        ref = timm.create_model(variant, features_only=True, out_indices=(1, 2, 3, 4))
        assert sum(p.numel() for p in model.encoder.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("paper_name,params_m", [("eseg-s", 6.9), ("eseg-m", 20.0), ("eseg-l", 70.5)])
def test_params_match_table4(paper_name, params_m):
    params = sum(p.numel() for p in build_model(paper_name).parameters())
    assert abs(params / 1e6 / params_m - 1) < 0.05


def test_level_range_is_one_argument():
    for lo, hi in [(3, 7), (2, 7), (3, 9), (2, 9)]:
        model = tiny(min_level=lo, max_level=hi)
        n = hi - lo + 1
        assert len(model.decoder.layers[0].nodes) == 2 * (n - 1)
        assert model.head.level_weight.numel() == n
        feats = model.decoder(model.encoder(torch.randn(2, 3, 128, 128)))
        assert [f.shape[-1] for f in feats] == [-(-128 // 2 ** lv) for lv in range(lo, hi + 1)]
        assert model(torch.randn(2, 3, 128, 128)).shape == (2, 5, 128, 128)


def test_bifpn_graph_is_generated_from_levels():
    nodes = bifpn_nodes(3, 7)
    # top-down P6..P3, then bottom-up P4..P7 (EfficientDet's P3-P7 graph)
    assert [n.level for n in nodes] == [6, 5, 4, 3, 4, 5, 6, 7]
    assert nodes[0].inputs == (3, 4)  # P6_in and P7_in
    assert nodes[4].inputs == (1, 7, 8)  # P4_in, P4_td, P3_out
    assert nodes[-1].inputs == (4, 11)  # P7_in and P6_out


@pytest.mark.parametrize("mode", ["fastattn", "softmax", "sum"])
def test_fusion_modes(mode):
    fuse = WeightedFusion(3, mode)
    xs = [torch.full((1, 1, 2, 2), float(v)) for v in (1, 2, 3)]
    with torch.no_grad():
        if fuse.weight is not None:
            fuse.weight.copy_(torch.tensor([1.0, 2.0, -1.0]))
    out = fuse(xs)[0, 0, 0, 0].item()
    expected = {"sum": 6.0,
                "fastattn": (1 * 1 + 2 * 2 + 0 * 3) / (3 + 1e-4),
                "softmax": float((torch.softmax(torch.tensor([1.0, 2.0, -1.0]), 0) * torch.tensor([1.0, 2, 3])).sum())}
    assert out == pytest.approx(expected[mode], rel=1e-5)
    model = tiny(fusion=mode, head_fusion="sum" if mode == "sum" else "softmax")
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5, 64, 64)
    if mode == "sum":
        assert model.head.level_weight is None


@pytest.mark.parametrize("fusion", ["softmax", "sum"])
@pytest.mark.parametrize("frozen", [False, True])
def test_coarse_to_fine_head_sums_the_levels_from_the_top_down(fusion, frozen):
    """``FusionHead.coarse_to_fine`` (int8's head): s = w_L P_L, then s = up(s) + w_i P_i level by level, against
    that recurrence written out; close to the exact sum but not equal to it; training ignores it."""
    import torch.nn.functional as F

    from eseg_cli.models.heads import FusionHead

    torch.manual_seed(0)
    head = FusionHead(4, 4, 3, fusion=fusion).eval()
    if head.level_weight is not None:
        with torch.no_grad():
            head.level_weight.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
    w = [1.0] * 4 if head.level_weight is None else head.level_weights().tolist()
    if frozen:
        head.freeze_weights()
    feats = [torch.randn(2, 4, 40 // 2 ** i, 52 // 2 ** i) for i in range(4)]  # 40x52, 20x26, 10x13, 5x7
    feats[3] = torch.randn(2, 4, 5, 7)
    with torch.no_grad():
        exact = head(feats)
        head.coarse_to_fine = True
        got = head(feats)
        s = feats[3] * w[3]
        for i in (2, 1, 0):
            s = F.interpolate(s, size=feats[i].shape[-2:], mode="bilinear", align_corners=False) + feats[i] * w[i]
        torch.testing.assert_close(got, head.classifier(head.conv(s)), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, exact, atol=1e-4)  # not exact ...
        assert (got - exact).abs().mean() < 0.1 * exact.abs().mean()  # ... but close
    if not frozen:  # training computes the exact sum whatever the switch says
        head.train()
        head.coarse_to_fine = True
        out = head(feats)
        head.coarse_to_fine = False
        torch.testing.assert_close(out, head(feats))


def test_bad_fusion_and_levels_are_clear_errors():
    with pytest.raises(EsegError, match="fusion"):
        tiny(fusion="mean")
    with pytest.raises(EsegError, match="min_level"):
        tiny(min_level=1)
    with pytest.raises(EsegError, match="max_level"):
        tiny(min_level=4, max_level=4)


def test_lite_encoder_is_fused_mbconv_relu_without_se():
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, EdgeResidual, InvertedResidual, SqueezeExcite

    lite = build_model("eseg-lite-s").encoder
    blocks = [m for stage in lite.blocks for m in stage]
    assert blocks and all(isinstance(b, EdgeResidual) for b in blocks)
    mods = list(lite.modules())
    assert not any(isinstance(m, (SqueezeExcite, InvertedResidual, DepthwiseSeparableConv)) for m in mods)
    acts = {type(m.act).__name__ for m in mods if hasattr(m, "act")}
    assert acts == {"ReLU", "Identity"}  # Identity: the linear projection after each block, as in MBConv
    # and the full ESeg encoder is the opposite: MBConv with SE and SiLU
    full = build_model("eseg-s").encoder
    assert any(isinstance(m, SqueezeExcite) for m in full.modules())
    assert any(isinstance(getattr(m, "act", None), torch.nn.SiLU) for m in full.modules())


def test_flops_scale_with_pixels():
    from eseg_cli.analysis.profiler import count_flops

    model = tiny()
    small, large = count_flops(model, (64, 128))["flops"], count_flops(model, (128, 256))["flops"]
    assert large / small == pytest.approx(4.0, rel=0.03)


def test_wrong_channels_is_a_clear_error():
    with pytest.raises(EsegError, match="shape"):
        tiny().eval()(torch.randn(1, 4, 64, 64))


def test_cli_profile_json_and_errors():
    res = runner.invoke(app, ["profile", "--scale", "lite-s", "--resolution", "128x256", "--runs", "1",
                              "--warmup", "0", "--json"])
    assert res.exit_code == 0, res.output
    import json

    data = json.loads(res.stdout)
    assert data["model"] == "eseg-lite-s" and data["resolution"] == "128x256"
    assert data["params"] > 1e6 and data["flops"] > data["flops_conv"] > 0 and data["latency_ms"] > 0
    bad = runner.invoke(app, ["profile", "--scale", "XL", "--no-latency"])
    assert bad.exit_code == 2 and "--scale: unknown model 'XL'" in bad.output  # names come from the registry
    bad = runner.invoke(app, ["profile", "--scale", "s", "--resolution", "1024by2048"])
    assert bad.exit_code == 2 and "--resolution" in bad.output
    assert runner.invoke(app, ["profile", "--no-latency"]).exit_code == 2


def test_cli_profile_all_lists_every_scale():
    res = runner.invoke(app, ["profile", "--all", "--resolution", "64x64", "--no-latency", "--json"])
    assert res.exit_code == 0, res.output
    import json

    rows = json.loads(res.stdout)
    assert [r["model"] for r in rows] == list(SCALES)
    assert rows[-1]["flops"] > rows[3]["flops"] > rows[0]["flops"]


def test_decoder_rejects_levels_outside_the_encoder():
    with pytest.raises(EsegError):
        BiFPNDecoder([8, 16, 32, 64], [4, 8, 16, 32], 16, 1, min_level=6, max_level=9)


@pytest.mark.parametrize("size", [(1, 1), (1, 3), (5, 4), (7, 9), (8, 8)])
def test_extra_level_pooling_matches_ceil_mode(size):
    import torch.nn.functional as F

    from eseg_cli.models.bifpn import avg_pool2x

    x = torch.randn(2, 3, *size)
    # the reference: replicate-pad to even sizes, then a plain 2x pool (the form torch-xla runs)
    padded = F.pad(x, (0, size[1] % 2, 0, size[0] % 2), mode="replicate")
    torch.testing.assert_close(avg_pool2x(x), F.avg_pool2d(padded, 2, 2))


@pytest.mark.parametrize("shape,size", [((2, 5, 16, 16), (64, 64)), ((2, 3, 5, 7), (20, 28)), ((1, 2, 5, 7), (10, 21)),
                                        ((2, 2, 1, 1), (4, 4)), ((2, 2, 13, 3), (39, 9)), ((1, 3, 17, 32), (68, 128))])
def test_upsample_bilinear_is_torchs_forward_and_its_gradient(shape, size):
    import torch.nn.functional as F

    from eseg_cli.models.layers import upsample_bilinear

    x = torch.randn(*shape, dtype=torch.float64).float().requires_grad_()
    grad = torch.randn(shape[0], shape[1], *size)
    ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    out = upsample_bilinear(x, size)
    assert out.grad_fn is not None and "BilinearUpsampleGrad" in type(out.grad_fn).__name__  # the banded gradient
    assert torch.equal(out, ref)  # the forward is torch's own, bit for bit
    (want,) = torch.autograd.grad(ref, x, grad)
    (got,) = torch.autograd.grad(out, x, grad)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # the same sums in another order


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_squeeze_excite_gives_timms_outputs_and_gradients_bit_for_bit(dtype):
    """The encoder's squeeze-and-excitation (a broadcast view for the mean's gradient) against timm's own."""
    from timm.models._efficientnet_blocks import SqueezeExcite as TimmSE

    from eseg_cli.models.fast_backward import SqueezeExcite, spatial_mean

    torch.manual_seed(0)
    ours, ref = SqueezeExcite(24, rd_ratio=0.25, act_layer=torch.nn.SiLU), TimmSE(24, rd_ratio=0.25,
                                                                                 act_layer=torch.nn.SiLU)
    ref.load_state_dict(ours.state_dict())  # the same parameter names: pretrained weights load unchanged
    x0 = torch.randn(2, 24, 9, 7).to(dtype).contiguous(memory_format=torch.channels_last)
    grads = []
    for m in (ours, ref):
        x = x0.clone().requires_grad_()
        m.to(dtype)
        y = m(x) * x  # x used twice, as in a block: the mean's gradient is added to another one
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype))
        grads.append((y.detach(), x.grad, m.conv_reduce.weight.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    assert "SpatialMean" in type(spatial_mean(x0.requires_grad_()).grad_fn).__name__  # the path tested above
    assert any(isinstance(m, SqueezeExcite) for m in build_model("eseg-s", **TINY).encoder.modules())


@pytest.mark.parametrize("kernel,stride", [(5, 1), (3, 2), (5, 2)])
def test_depthwise_conv_backward_in_float32_under_bf16_autocast(kernel, stride):
    """The encoder's slow-in-bf16 depthwise convs: autocast's forward bit for bit, gradients of the same bf16
    convolution computed in float32 (closer to the exact ones than bf16 autocast's own), and nn.Conv2d elsewhere."""
    from eseg_cli.models.fast_backward import DepthwiseConv2d, with_fast_backward

    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(16, 16, kernel, stride, kernel // 2, groups=16, bias=True))
    ours = with_fast_backward(copy.deepcopy(ref))
    assert isinstance(ours[0], DepthwiseConv2d) and ours.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))
    x0 = torch.randn(2, 16, 13, 11).contiguous(memory_format=torch.channels_last)
    g = torch.randn(ref(x0).shape).bfloat16().float()  # exact in bf16 too

    def run(m, amp):
        m = copy.deepcopy(m)
        x = x0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = m(x)
        y.backward(g.to(y.dtype))
        return y, x.grad, m[0].weight.grad, m[0].bias.grad

    y, *grads = run(ours, True)
    y_ref, *grads_amp = run(ref, True)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)  # autocast's forward
    assert "DepthwiseFloatGrad" in type(y.grad_fn).__name__
    # the exact gradients of the bf16-rounded convolution, in float64
    q = copy.deepcopy(ref).double()
    with torch.no_grad():
        q[0].weight.copy_(ref[0].weight.bfloat16().double())
        q[0].bias.copy_(ref[0].bias.bfloat16().double())
    x = x0.bfloat16().double().requires_grad_()
    q(x).backward(g.double())
    exact = (x.grad, q[0].weight.grad, q[0].bias.grad)
    for ours_g, amp_g, ex in zip(grads, grads_amp, exact):
        assert ours_g.dtype == amp_g.dtype == torch.float32
        assert (ours_g.double() - ex).abs().max() <= (amp_g.double() - ex).abs().max() + 1e-6
        torch.testing.assert_close(ours_g.double(), ex, rtol=1e-4, atol=1e-4)
    # float32, no autocast: nn.Conv2d's result exactly
    for a, b in zip(run(ours, False), run(ref, False)):
        assert torch.equal(a, b)
    ours.eval()
    assert torch.equal(ours(x0), ref.eval()(x0))


def test_eseg_s_encoder_has_fast_backward_layers_and_loads_timm_weights():
    import timm

    from eseg_cli.models.fast_backward import DepthwiseConv2d

    enc = build_model("eseg-s").encoder
    kinds = [m for m in enc.modules() if isinstance(m, DepthwiseConv2d)]
    assert kinds and all(max(m.kernel_size) > 3 or max(m.stride) > 1 for m in kinds)
    ref = timm.create_model("efficientnet_b1", features_only=True, out_indices=(1, 2, 3, 4))
    assert set(enc.state_dict()) == set(ref.state_dict())


def test_upsample_bilinear_falls_back_to_torch_where_the_banded_gradient_does_not_apply():
    from eseg_cli.models.layers import upsample_bilinear

    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    assert "Upsample" in type(upsample_bilinear(x, (15, 15)).grad_fn).__name__  # 2.5x: not a whole factor
    cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert "Upsample" in type(upsample_bilinear(cl, (12, 12)).grad_fn).__name__  # channels_last: torch's kernel
    assert upsample_bilinear(x.detach(), (12, 12)).grad_fn is None  # no gradient wanted


def test_segmentor_upsamples_the_logits_in_float32_under_bf16():
    import torch.nn.functional as F

    m = tiny().train()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        small = m.forward_logits(x)
    assert small.dtype == torch.bfloat16 and out.dtype == torch.float32
    # the same interpolation of the same bf16 stride-4 logits as before, only not rounded back to bf16
    ref = F.interpolate(small.float(), size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(out.bfloat16(), F.interpolate(small, size=(64, 64), mode="bilinear",
                                                             align_corners=False), rtol=0, atol=0)
