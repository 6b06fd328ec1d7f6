"""One contract for every registered model (as smp's tests/models/base.py): each name in the registry, and the
encoder variants and DeepLabV3+ cells, passes the same class. Built small (tiny widths, small inputs) so that the
whole class runs in seconds; the paper-size ablation cells are the ``slow`` cases.

A model added to the registry is tested here without touching this file: the cases come from ``list_models()``
(give it small options in ``SMALL`` to keep the suite fast)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime  # noqa: F401  (the deploy extra: export parity is part of the contract, never skipped)
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eseg_cli.analysis.ablate import cells_for
from eseg_cli.engine.checkpoint import save_checkpoint
from eseg_cli.errors import EsegError
from eseg_cli.inference import prepare_model
from eseg_cli.inference.export import export_model
from eseg_cli.inference.fold import conv_bn_pairs
from eseg_cli.inference.runtime import load_model
from eseg_cli.models import SCALES, build_model, list_models

pytestmark = pytest.mark.usefixtures("one_thread")
NUM_CLASSES = 5


@dataclass(frozen=True)
class Case:
    name: str
    kwargs: dict = field(default_factory=dict)
    label: str = ""

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        return build_model(self.name, num_classes=NUM_CLASSES, **self.kwargs)


def _small(name: str) -> dict:
    """Options that build ``name`` small: Table 3's scales at a quarter width and depth, DeepLabV3+ on timm's
    test ResNet. A model without an entry is built as registered."""
    if name in SCALES:
        return dict(width=0.25, depth=0.25, channels=8, repeats=min(SCALES[name].repeats, 2))
    return {"deeplabv3plus": dict(encoder="test_resnet", channels=16, low_level_channels=8)}.get(name, {})


SMALL_ESEG = _small("eseg-s")
CASES = [Case(name, _small(name), name) for name in list_models()] + [
    # the encoder variants: TF-ported padding and BN, a timm backbone, another level range and fusion
    Case("eseg-lite-s", {**_small("eseg-lite-s"), "encoder_variant": "tf"}, "eseg-lite-s-tf"),
    Case("eseg-s", {"encoder": "test_efficientnet", "channels": 8, "repeats": 1}, "eseg-s-timm-encoder"),
    Case("eseg-m", {**_small("eseg-m"), "min_level": 3, "max_level": 7, "fusion": "softmax", "head_fusion": "sum"},
         "eseg-m-p3-p7-softmax-sum"),
    # DeepLabV3+ at both output strides, on this project's EfficientNet and on a timm one
    Case("deeplabv3plus", {**_small("deeplabv3plus"), "output_stride": 32}, "deeplabv3plus-os32"),
    Case("deeplabv3plus", dict(encoder="efficientnet_b0", channels=16, low_level_channels=8, separable_aspp=True),
         "deeplabv3plus-b0-separable"),
] + [  # the ablation's DeepLabV3+ cells as the paper builds them (Table 8)
    pytest.param(Case(c.model, c.kwargs, f"cell-{c.name}"), marks=pytest.mark.slow)
    for c in cells_for("decoder") if c.model == "deeplabv3plus"
]


def _id(case) -> str:
    return case.label if isinstance(case, Case) else case.values[0].label


@pytest.fixture(params=CASES, ids=[_id(c) for c in CASES])
def case(request) -> Case:
    return request.param


def randomize(model: nn.Module) -> nn.Module:
    """Batch-norm statistics and fusion weights far from their initial values, so that a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
        for name, p in model.named_parameters():
            if "weight" in name and p.dim() == 1 and ("fuse" in name or "level_weight" in name):
                p.copy_(torch.rand(p.shape, generator=g) * 2)
    return model.eval()


def called_conv_bn_pairs(model: nn.Module, x: torch.Tensor) -> set[tuple[str, str]]:
    """``(conv, bn)`` names where the batch norm's input, in a real forward pass, is that conv's output."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor is kept so that its id is not reused
    pairs = set()

    def conv_out(m, _inp, out):
        produced[id(out)] = (names[m], out)

    def bn_in(m, inp):
        if id(inp[0]) in produced:
            pairs.add((produced[id(inp[0])][0], names[m]))

    hooks = [m.register_forward_hook(conv_out) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(bn_in) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return pairs


class TestModelContract:
    def test_any_input_size(self, case):
        model = case.build().eval()
        with torch.no_grad():
            for shape in [(1, 3, 37, 53), (2, 3, 64, 33), (1, 3, 97, 130), (1, 3, 31, 17)]:
                assert model(torch.randn(*shape)).shape == (shape[0], NUM_CLASSES, *shape[2:])

    def test_backward_reaches_every_parameter(self, case):
        model = case.build().train()
        x = torch.randn(2, 3, 64, 64)
        loss = F.cross_entropy(model(x), torch.randint(0, NUM_CLASSES, (2, 64, 64)))
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, missing[:5]
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        for part in ("encoder", "decoder", "head"):
            assert any(p.grad.abs().sum() > 0 for p in getattr(model, part).parameters()), part

    def test_config_round_trips_through_a_checkpoint(self, case, tmp_path):
        model = randomize(case.build())
        path = save_checkpoint({"model": model.state_dict(), "model_config": model.config,
                                "num_classes": NUM_CLASSES}, tmp_path / "model.pt")
        rebuilt, _ = load_model(path)
        assert type(rebuilt) is type(model) and rebuilt.config == model.config
        assert rebuilt.config["name"] == case.name  # the registered name, as the config stores it
        x = torch.randn(1, 3, 45, 61)
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)

    def test_folded_equals_unfolded(self, case):
        model = randomize(case.build())
        x = torch.randn(2, 3, 45, 61)
        prepared = prepare_model(model)  # BN folded, fusion weights frozen, channels_last, oneDNN 1x1 convs
        assert prepared.prepared["folded_bn"] > 0
        assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())  # every BN folded
        with torch.no_grad():
            ref = model(x)
            out = prepared(x.contiguous(memory_format=torch.channels_last))
        assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-4

    def test_fold_pairs_convs_and_batch_norms_in_call_order(self, case):
        # fold.py pairs a conv with the batch norm registered after it; that must be the one its output feeds
        model = case.build()
        folded = set(conv_bn_pairs(model))
        called = called_conv_bn_pairs(model, torch.randn(1, 3, 64, 64))
        assert folded == called, (sorted(folded - called)[:3], sorted(called - folded)[:3])

    def test_export_parity(self, case, tmp_path):
        model = randomize(case.build())
        ckpt = save_checkpoint({"model": model.state_dict(), "model_config": model.config,
                                "num_classes": NUM_CLASSES}, tmp_path / "model.pt")
        result = export_model(ckpt, "onnx", tmp_path / "model.onnx", sizes=((64, 96), (37, 53)))
        for check in result["checks"]:  # onnxruntime beside PyTorch at each size
            assert check["max_abs_diff"] <= 1e-4 * max(1.0, check["max_abs_logit"]), check
            assert check["argmax_agreement"] >= 0.999, check
        assert result["dynamic"] == "batch, height, width" and np.isfinite(result["bytes"])

    @pytest.mark.slow  # about 9 s a model; the fast suite exports a tiny ESeg-Lite to pt2 (test_predict_export.py)
    def test_pt2_export_is_dynamic_in_height_and_width(self, case, tmp_path):
        from eseg_cli.inference.export import runtime_padding_layers

        model = randomize(case.build())
        if runtime_padding_layers(model):  # timm's TF "SAME" padding: refused at once, naming the layers
            with pytest.raises(EsegError, match="Same.*'format' onnx or torchscript"):
                export_model(model, "pt2", tmp_path / "model.pt2", sizes=((64, 96), (37, 53)))
            return
        result = export_model(model, "pt2", tmp_path / "model.pt2", sizes=((64, 96), (37, 53)))
        for check in result["checks"]:  # the program beside PyTorch at two sizes, neither a multiple of 32
            assert check["max_abs_diff"] <= 1e-4 * max(1.0, check["max_abs_logit"]), check
            assert check["argmax_agreement"] >= 0.999, check
        assert result["dynamic"] == "batch, height, width"

    @pytest.mark.slow  # inductor compiles each model's forward and backward (tens of seconds); one in the fast suite
    def test_training_step_compiles(self, case):
        check_training_step_compiles(case.build())

    def test_batch_of_one_in_training_is_a_clear_error(self, case):
        model = case.build().train()
        x = torch.randn(1, 3, 32, 32)  # 1x1 maps at the deepest level: BatchNorm cannot train there
        with pytest.raises(EsegError, match="use a batch of at least 2"):
            model(x)
        with torch.no_grad():
            assert model.eval()(x).shape == (1, NUM_CLASSES, 32, 32)  # inference takes a batch of one


def check_training_step_compiles(model: nn.Module) -> None:
    """Forward, loss and backward through ``compile_training`` (inductor), channels_last under bf16 autocast as
    ``eseg train --compile`` runs it on a CPU with bf16, at a size whose pyramid has odd levels and 1x1 and 2x2 top
    maps (where ESeg-S's compiled backward once failed an inductor stride assertion): the eager loss to bf16
    rounding, and a finite gradient for every parameter."""
    from eseg_cli.inference.prepare import compile_training

    model = model.train().to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 96, 160, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (2, 96, 160), generator=g)

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        return F.cross_entropy(out.float(), y)

    eager = step(x, y).detach()
    try:
        loss = compile_training(step)(x, y)
        loss.backward()
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(loss.detach(), eager, rtol=2e-2, atol=2e-2)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_eseg_s_training_step_compiles():
    # the fast suite's one compiled training step: ESeg-S's encoder has the layers with their own backward
    # (squeeze-and-excitation, bf16 depthwise convs: torch's ops when compiled) and the BiFPN's extra levels
    check_training_step_compiles(Case("eseg-s", _small("eseg-s")).build())


def test_the_call_order_check_sees_a_parent_registered_out_of_order(monkeypatch):
    # the check above is real: a parent whose conv is registered before a batch norm it does not feed
    class Crossed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a, self.bn_a = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
            self.conv_b, self.bn_b = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn_b(self.conv_b(self.bn_a(self.conv_a(x))))

    monkeypatch.setattr("eseg_cli.inference.fold._ORDERED_PARENTS", ("Crossed",))
    assert set(conv_bn_pairs(Crossed())) == {("conv_a", "bn_a"), ("conv_b", "bn_b")}  # as called: passes

    class Misordered(Crossed):
        def forward(self, x):  # conv_a feeds bn_b, conv_b feeds bn_a
            return self.bn_a(self.conv_b(self.bn_b(self.conv_a(x))))

    monkeypatch.setattr("eseg_cli.inference.fold._ORDERED_PARENTS", ("Misordered",))
    model = Misordered()
    assert set(conv_bn_pairs(model)) != called_conv_bn_pairs(model, torch.randn(1, 3, 8, 8))
