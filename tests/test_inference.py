"""Inference: exact preparation (folding), exact fast post-processing and the Predictor API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eseg_cli import EsegError, build_model
from eseg_cli.engine.checkpoint import save_checkpoint
from eseg_cli.inference import Predictor, prepare_model, upsample_argmax
from eseg_cli.models import SCALES

TINY = dict(width=0.25, depth=0.25, channels=16, repeats=1)


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and fusion weights, so that a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            elif type(m).__name__ == "WeightedFusion" and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2)
            elif type(m).__name__ == "FusionHead" and m.level_weight is not None:
                m.level_weight.copy_(torch.randn(m.level_weight.shape, generator=g))
    return model.eval()


# full-size scales at a small input: the prepared model's logits equal the training model's (1e-4 relative)
@pytest.mark.parametrize("name", list(SCALES))
def test_prepared_model_equals_training_model(name, one_thread):
    torch.manual_seed(0)
    model = randomize(build_model(name))
    prepared = prepare_model(model)
    assert prepared.prepared["folded_bn"] > 0 and prepared.prepared["frozen_fusions"] > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
    x = torch.randn(1, 3, 67, 93)
    with torch.inference_mode():
        ref = model(x)
        out = prepared(x.contiguous(memory_format=torch.channels_last))
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-4, rel
    # the original is untouched (still trainable, still has its BN)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("head_fusion,fusion", [("sum", "sum"), ("softmax", "softmax")])
def test_prepared_model_other_fusion_modes(head_fusion, fusion, one_thread):
    model = randomize(build_model("lite-s", **TINY, fusion=fusion, head_fusion=head_fusion))
    x = torch.randn(2, 3, 40, 56)
    with torch.inference_mode():
        torch.testing.assert_close(prepare_model(model, channels_last=False)(x), model(x), rtol=1e-4, atol=1e-5)


def test_coarse_to_fine_head_compiled_with_freezing_is_what_it_computes_eagerly(one_thread):
    """int8's coarse-to-fine head through inductor's freezing (as every compiled path runs it) gives its eager
    numbers: written with each level's convolution output times its weight, freezing folded the weights into
    convolutions whose outputs feed the next pyramid node too, and the labels changed on 12% of the pixels."""
    from eseg_cli.inference.int8 import coarse_to_fine_heads
    from eseg_cli.inference.prepare import compiled

    torch.manual_seed(0)
    model = prepare_model(randomize(build_model("lite-s", num_classes=5, **TINY)))
    assert coarse_to_fine_heads(model) == 1
    x = torch.randn(1, 3, 96, 128).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(compiled(model.forward_logits, freezing=True)(x), model.forward_logits(x),
                                   rtol=1e-4, atol=1e-4)


def _reference(logits, size, align_corners=False):
    full = F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)
    return full, full.argmax(1)


@pytest.mark.parametrize("shape,size,align", [
    ((1, 19, 32, 64), (128, 256), False),   # stride 4, the ESeg case
    ((2, 7, 17, 23), (67, 93), False),      # odd sizes, batch of 2
    ((1, 19, 16, 32), (128, 256), True),    # smp-style align_corners
    ((1, 5, 9, 11), (72, 88), False),       # stride 8
    ((1, 3, 5, 5), (5, 5), False),          # same size: a plain argmax
    ((1, 5, 16, 16), (7, 9), False),        # smaller: some source rows and columns unused
    ((3, 4, 10, 13), (25, 31), True),       # a non-integer factor, batch of 3
    ((1, 3, 1, 5), (4, 9), False),          # one source row: every cell clamped
])
@pytest.mark.parametrize("kind", ["noise", "regions"])
def test_upsample_argmax_equals_upsample_then_argmax(shape, size, align, kind):
    g = torch.Generator().manual_seed(1)
    b, c, h, w = shape
    if kind == "noise":  # every cell on a class boundary: the slow path everywhere
        logits = torch.randn(shape, generator=g)
    else:  # smooth regions: mostly the fast path
        coarse = torch.randn(b, c, max(1, h // 4), max(1, w // 4), generator=g) * 4
        logits = F.interpolate(coarse, size=(h, w), mode="bilinear") + 0.05 * torch.randn(shape, generator=g)
    logits = logits.contiguous(memory_format=torch.channels_last)
    full, ref = _reference(logits, size, align)
    got = upsample_argmax(logits, size, align_corners=align)
    assert got.dtype == torch.uint8 and got.shape == (b, *size)
    diff = got.long() != ref
    # any disagreement is a float-rounding tie: the chosen class is within 1e-5 of the maximum
    if diff.any():
        gap = full.gather(1, ref[:, None]) - full.gather(1, got.long()[:, None])
        assert gap[:, 0][diff].max() < 1e-5
    assert diff.float().mean() < 1e-4


def test_compiled_argmax_gives_the_same_labels(one_thread):
    """The compiled argmax kernel (what compiled and int8 models' labels use) against ATen's, label for label:
    regions with boundaries, exact ties (the first maximum wins), NaNs (torch counts them as the maximum),
    rows of infinities, a batch of 2 at odd sizes, and more than 255 classes (int32 labels)."""
    from eseg_cli.inference.postprocess import argmax_rows

    g = torch.Generator().manual_seed(3)
    coarse = torch.randn(2, 19, 6, 9, generator=g) * 4
    logits = F.interpolate(coarse, size=(21, 34), mode="bilinear") + 0.05 * torch.randn(2, 19, 21, 34, generator=g)
    logits[0, :, 3, 4] = 1.0  # a tie over every class: class 0
    logits[0, 5:9, 7, 7] = 50.0  # a tie between 5..8: class 5
    logits[1, 11, 2, 2] = float("nan")  # NaN beats every number
    logits[1, 3, 2, 3] = logits[1, 12, 2, 3] = float("nan")  # the first NaN
    logits[1, :, 5, 5] = float("-inf")
    for size in ((84, 136), (21, 34), (50, 61)):
        eager = upsample_argmax(logits, size)
        assert torch.equal(upsample_argmax(logits, size, compiled=True), eager)
    assert upsample_argmax(logits, (21, 34), compiled=True)[1, 2, 2] == 11
    rows = torch.randn(1000, 300, generator=g)
    rows[7, 100] = rows[7, 200] = 1e9
    got = argmax_rows(rows, torch.int32, compiled=True)
    assert got.dtype == torch.int32 and torch.equal(got.long(), rows.argmax(1)) and got[7] == 100
    assert argmax_rows(rows[:0], compiled=True).shape == (0,)


def test_upsample_argmax_in_batches_of_cells_is_the_same(monkeypatch):
    from eseg_cli.inference import postprocess

    logits = torch.randn(2, 7, 17, 23, generator=torch.Generator().manual_seed(2))
    whole = upsample_argmax(logits, (67, 93))
    monkeypatch.setattr(postprocess, "_BLOCK_ELEMENTS", 500)  # a few cells per batch: many batches
    assert torch.equal(upsample_argmax(logits, (67, 93)), whole)


def test_upsample_argmax_many_classes_uses_int32():
    logits = torch.randn(1, 300, 4, 4)
    out = upsample_argmax(logits, (8, 8))
    assert out.dtype == torch.int32
    assert torch.equal(out.long(), _reference(logits, (8, 8))[1])


# --------------------------------------------------------------------------- Predictor

@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return randomize(build_model("lite-s", num_classes=19, **TINY))


def test_predictor_accepts_every_input_type_at_odd_sizes(tiny_model, tmp_path, one_thread):
    p = Predictor(tiny_model, device="cpu")
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    outs = [p.predict(arr), p.predict(Image.fromarray(arr)), p.predict(path), p.predict(str(path))]
    for o in outs:
        assert o.shape == (37, 53) and o.dtype == np.uint8 and o.max() < 19
        np.testing.assert_array_equal(o, outs[0])
    # the same as the training model run by hand: normalise, forward, argmax
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = torch.from_numpy(((arr / 255.0 - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        ref = tiny_model(x)
    agree = (ref.argmax(1)[0].numpy() == outs[0]).mean()
    assert agree > 0.999
    proba = p.predict_proba(arr)
    assert proba.shape == (19, 37, 53) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(0), 1.0, rtol=1e-5)
    assert (proba.argmax(0) == outs[0]).mean() > 0.999
    # grayscale and RGBA images become RGB
    gray = tmp_path / "g.png"
    Image.fromarray(arr[:, :, 0]).save(gray)
    assert p.predict(gray).shape == (37, 53)
    assert p.predict(Image.fromarray(arr).convert("RGBA")).shape == (37, 53)
    assert p.predict(np.zeros((1, 1, 3), np.uint8)).shape == (1, 1)


def test_predict_batch_matches_single_predictions(tiny_model, one_thread):
    p = Predictor(tiny_model, device="cpu")
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(33, 47, 3)] * 3 + [(20, 31, 3), (33, 47, 3)]]
    outs = p.predict_batch(imgs, batch_size=2)
    assert [o.shape for o in outs] == [i.shape[:2] for i in imgs]
    for img, o in zip(imgs, outs):
        assert (p.predict(img) == o).mean() > 0.999  # batched convs may round differently at exact ties


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 4, 3), np.float32), "uint8"),
    (np.zeros((4, 4, 4), np.uint8), "HxWx3"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (42, "expected an image"),
    ("/nonexistent/x.png", "does not exist"),
])
def test_predictor_rejects_bad_inputs(tiny_model, bad, match):
    p = Predictor(tiny_model, device="cpu")
    with pytest.raises(EsegError, match=match):
        p.predict(bad)


def test_predictor_rejects_a_file_that_is_not_an_image(tiny_model, tmp_path):
    f = tmp_path / "notes.png"
    f.write_text("not an image")
    with pytest.raises(EsegError, match="notes.png: cannot read the image"):
        Predictor(tiny_model, device="cpu").predict(f)


def test_predictor_from_checkpoint_and_run_folder(tiny_model, tmp_path, one_thread):
    run = tmp_path / "run"
    state = {"model": tiny_model.state_dict(), "model_config": tiny_model.config,
             "config": {"dataset": "cityscapes"}, "step": 7, "classes": None}
    ckpt = save_checkpoint(state, run / "checkpoints" / "best.pt")
    arr = np.random.default_rng(2).integers(0, 256, (29, 41, 3), dtype=np.uint8)
    ref = Predictor(tiny_model, device="cpu").predict(arr)
    for src in (run, ckpt, str(ckpt)):
        p = Predictor(src, device="cpu")
        assert p.class_names[0] == "road" and p.palette[0] == (128, 64, 128)  # from the checkpoint's dataset
        np.testing.assert_array_equal(p.predict(arr), ref)
    with pytest.raises(EsegError, match="not found"):
        Predictor(tmp_path / "missing.pt", device="cpu")


def test_predictor_without_folding_and_bf16(tiny_model, one_thread):
    arr = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    ref = Predictor(tiny_model, device="cpu").predict(arr)
    assert (Predictor(tiny_model, device="cpu", fold=False, channels_last=False).predict(arr) == ref).mean() > 0.999
    bf16 = Predictor(tiny_model, device="cpu", amp="bf16")
    assert bf16.predict(arr).shape == (32, 48)
    # the autocast is really applied (the logits are not fp32's bit for bit), and they stay within bf16's rounding
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float().div(255)
    fp32_logits, bf16_logits = Predictor(tiny_model, device="cpu").logits(x), bf16.logits(x)
    assert bf16_logits.dtype == torch.float32 and not torch.equal(bf16_logits, fp32_logits)
    assert (bf16_logits - fp32_logits).abs().max() <= 0.05 * fp32_logits.abs().max()
    with pytest.raises(EsegError, match="fp16"):
        Predictor(tiny_model, device="cpu", amp="fp16")


def test_predictor_is_exported_lazily():
    import eseg_cli

    assert eseg_cli.Predictor is Predictor


def test_prepared_model_sends_1x1_convs_to_onednn(tiny_model):
    prepared = prepare_model(tiny_model)
    assert prepared.prepared["pointwise_kernels"] > 0
    assert prepare_model(tiny_model, channels_last=False).prepared["pointwise_kernels"] == 0


def test_eval_whole_mode_uses_the_fast_exact_labels(tiny_model, one_thread):
    from eseg_cli.engine.evaluator import evaluate_model

    class Plain(torch.nn.Module):  # no forward_logits: the generic upsampled-logits + argmax path
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)

    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(2, 3, 45, 61, generator=g), torch.randint(0, 19, (2, 45, 61), generator=g))
              for _ in range(2)]
    fast = evaluate_model(prepare_model(tiny_model), loader, 19, torch.device("cpu"))
    slow = evaluate_model(Plain(tiny_model), loader, 19, torch.device("cpu"))
    agree = torch.minimum(fast.mat, slow.mat).sum() / slow.mat.sum()
    assert agree > 0.999


def test_profile_times_the_inference_path_and_eager(tiny_model):
    from eseg_cli.analysis.profiler import measure_latency

    fast = measure_latency(tiny_model, (64, 96), runs=1, warmup=0)
    eager = measure_latency(tiny_model, (64, 96), runs=1, warmup=0, eager=True)
    assert fast["path"].startswith("prepared") and eager["path"].startswith("eager")
    assert fast["latency_ms"] > 0 and eager["latency_ms"] > 0 and fast["fuse_bn"] and not eager["fuse_bn"]
    bf16 = measure_latency(tiny_model, (64, 96), runs=1, warmup=0, amp="bf16")
    assert fast["amp"] == "fp32" and bf16["amp"] == "bf16"
    with pytest.raises(EsegError, match="fp16 needs CUDA"):  # the Predictor's own check, for the timed path too
        measure_latency(tiny_model, (64, 96), runs=1, warmup=0, amp="fp16", device="cpu")


def test_compiled_prepared_model_equals_training_model(one_thread, request):
    """``--compile`` (inductor with freezing: oneDNN convs with fused activations) stays exact."""
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.utils import counters

    # dynamo's own limit counts every instance of a method's code together; past it, it runs eagerly in silence
    # (its config's own patch: monkeypatch's undo left the key deleted for later tests)
    limit = dynamo_config.patch(recompile_limit=1)
    limit.__enter__()
    request.addfinalizer(lambda: limit.__exit__(None, None, None))
    model = randomize(build_model("lite-s", **TINY))
    prepared = prepare_model(model, compile=True)
    assert prepared.prepared["compiled"]
    x = torch.randn(1, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = model(x)
        out = prepared(x)
        logits = prepared.forward_logits(x)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-4
    assert logits.shape[-2:] == (16, 24)  # forward_logits (the Predictor's call) is compiled too and keeps stride 4
    second = prepare_model(randomize(build_model("lite-s", **TINY)), compile=True)
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        second.forward_logits(x)
    assert counters["stats"]["unique_graphs"] == graphs + 1  # a second model compiles too, past dynamo's limit


def test_normalize_uint8_gives_the_same_batch_from_any_layout():
    """An HxWx3 array, an NCHW uint8 tensor (a data loader's) and a channels_last one give the same values; asked
    for channels_last, every one comes channels_last."""
    from eseg_cli.inference.predictor import normalization_constants, normalize_uint8

    scale, shift = normalization_constants((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    hwc = np.random.default_rng(0).integers(0, 256, (2, 12, 20, 3), dtype=np.uint8)
    nchw = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    ref = normalize_uint8(hwc, scale, shift, channels_last=False)
    assert ref.is_contiguous()
    torch.testing.assert_close(ref, (torch.from_numpy(hwc).permute(0, 3, 1, 2) / 255.0 - torch.tensor(
        [0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    for source in (hwc, nchw, nchw.contiguous(memory_format=torch.channels_last)):
        x = normalize_uint8(source, scale, shift, channels_last=True)
        assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
        assert torch.equal(x, ref)
    assert torch.equal(normalize_uint8(nchw, scale, shift, channels_last=False), ref)
