"""int8 (``eseg_cli.inference.int8``, ``Predictor(quantize="int8")``, ``eseg predict --int8``): agreement of a small
trained model with its float32 self, and the refusals (empty calibration set, nothing quantised, float code)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from eseg_cli import build_model
from eseg_cli.cli import app
from eseg_cli.engine.checkpoint import save_checkpoint
from eseg_cli.errors import EsegError
from eseg_cli.inference import Predictor, prepare_model
from eseg_cli.inference import int8 as int8_module
from eseg_cli.inference.int8 import (
    DEQUANTIZE_OPS,
    MIN_AGREEMENT,
    Int8Inaccurate,
    NotQuantized,
    check_code,
    code_counts,
    quantize_int8,
    run_calibration_images,
)
from eseg_cli.inference.precision import precision_note
from eseg_cli.inference.predictor import LogitsOf, resolve_head
from eseg_cli.models.heads import FusionHead

pytest.importorskip("torchao")

TINY = dict(width=0.25, depth=0.3, channels=16, repeats=1)
runner = CliRunner()


class Blobs:
    """Smooth random fields (8x8 noise upsampled to 64x64); the class is a function of the first two channels, as
    in Toy, but in blobs a stride-4 segmentation model can learn."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = nn.functional.interpolate(torch.randn(n, 3, 8, 8, generator=g), size=(64, 64), mode="bilinear",
                                           align_corners=False) * 2
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0.5).long()


@pytest.fixture(scope="module")
def trained():
    """A tiny ESeg-Lite trained 80 steps on Blobs: spatially varied predictions, as a real model's, with float32
    logits to compare int8 against."""
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_model("lite-s", num_classes=3, **TINY)
    data = Blobs(64, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(80):
        i = torch.arange(8) + (step * 8) % 56
        loss = nn.functional.cross_entropy(model(data.x[i]), data.y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(n)
    prepared = prepare_model(model.eval(), channels_last=False)
    return LogitsOf(prepared), data, Blobs(8, seed=1)


def test_int8_graph_agrees_with_fp32_on_a_trained_model(trained, one_thread):
    """The converted graph (quantize/dequantize around every conv, calibrated on training images) gives the
    fp32 model's class on >= 97% of the pixels of unseen images; the fp32 model itself learned the task."""
    logits_of, train, val = trained
    q = quantize_int8(logits_of, [train.x[:8]])
    gm, counts = q.converted((64, 64))
    assert counts["quantized_convs"] == counts["convs"] > 0 and counts["quantize"] > 0
    with torch.no_grad():
        ref = logits_of(val.x).argmax(1)
        out = gm(val.x)
        got = out.argmax(1)
    # the logits come channels_last (no copy before the post-processing, which reads class vectors per pixel)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    truth = nn.functional.interpolate(val.y[:, None].float(), size=ref.shape[-2:], mode="nearest")[:, 0].long()
    # a trained model (75% right after 80 steps; a constant class is right on about 40%), with varied predictions
    assert (ref == truth).float().mean() > 0.7
    assert sorted(torch.bincount(ref.flatten(), minlength=3).tolist())[-2] > 0.1 * ref.numel()
    assert (got == ref).float().mean() >= 0.97


def test_int8_sums_the_head_coarse_to_fine_on_its_own_copy(trained, one_thread):
    """int8's recipe sets ESeg's head to sum its levels coarse to fine (not exact; in the agreement above), says so
    in its method, and leaves the caller's model as it was; ``coarse_to_fine_head=False`` keeps the exact sum."""
    logits_of, train, val = trained
    q = quantize_int8(logits_of, [train.x[:8]])
    assert q.calibration["method"].endswith("; 1 head(s) summed coarse to fine")
    assert q._model.model.head.coarse_to_fine and not logits_of.model.head.coarse_to_fine
    exact = quantize_int8(logits_of, [train.x[:8]], coarse_to_fine_head=False)
    assert "coarse" not in exact.calibration["method"] and not exact._model.model.head.coarse_to_fine
    with torch.no_grad():  # the converted graphs at the calibration size (built by quantize_int8)
        a, b = q._graphs[(64, 64)][2](val.x), exact._graphs[(64, 64)][2](val.x)
    assert not torch.equal(a, b) and (a.argmax(1) == b.argmax(1)).float().mean() >= 0.97


@pytest.mark.slow
def test_int8_compiled_agrees_with_fp32_and_is_int8(trained):
    """The deployed path: compiled with freezing, it calls oneDNN's int8 convolution for every quantised conv, no
    float one, and agrees with fp32 on >= 97% of the pixels."""
    logits_of, train, val = trained
    q = quantize_int8(logits_of, [train.x[:8]])
    with torch.no_grad():
        out = q(val.x.contiguous(memory_format=torch.channels_last))
        got = out.argmax(1)
        ref = logits_of(val.x).argmax(1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    report = q.report["8x3x64x64"]
    assert report["int8_conv_calls"] == report["quantized_convs"] > 0 and report["float_conv_calls"] == 0
    assert (got == ref).float().mean() >= 0.97


def test_a_scaled_int8_conv_output_is_read_in_int8():
    """A conv output multiplied by a number (ESeg's fusion weights) reaches the multiplication through a dequantize
    node (the conv writes int8; torchao's X86 recipe alone leaves it float32); squeeze-and-excitation's input
    stays float (quantising it cost ESeg-S 0.7 mIoU)."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)
            self.act = nn.ReLU()  # a module: the quantizer's conv + activation pattern

        def forward(self, x):
            y = self.act(self.a(x)) * 0.5  # a level weight
            z = self.act(self.b(y))
            return self.c(z * torch.sigmoid(z.mean((2, 3), keepdim=True)))  # squeeze-and-excitation

    q = quantize_int8(Block().eval(), [torch.randn(2, 3, 16, 16)])
    gm, _ = q.converted((16, 16))
    reads = {}  # op -> the op its input comes from
    for n in gm.graph.nodes:
        if n.op == "call_function" and str(n.target) in ("aten.mul.Tensor", "aten.mean.dim"):
            scalar = str(n.target) == "aten.mul.Tensor" and not isinstance(n.args[1], torch.fx.Node)
            reads[str(n.target) + (" by a number" if scalar else "")] = str(n.args[0].target)
    assert reads["aten.mul.Tensor by a number"] in DEQUANTIZE_OPS
    assert reads["aten.mul.Tensor"] == reads["aten.mean.dim"] == "aten.relu.default"


def test_an_int8_export_keeps_what_torch_compile_made():
    """Strict torch.export resets dynamo before tracing: every compiled graph in the process (another image size's
    int8 graph, a compiled float model) would compile again, silently, at its next call. eseg's export skips it."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()  # a backend that counts the graphs it is given and runs them as they are
    double = torch.compile(lambda t: t.relu() * 2, backend=counter)
    x = torch.randn(8)
    double(x)
    q = quantize_int8(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval(), [torch.randn(1, 3, 16, 16)])
    q.add_size((24, 16))  # a second export, as a folder's second image size makes
    double(x)
    assert counter.frame_count == 1


@pytest.mark.slow
def test_an_int8_model_compiles_each_size_once_and_nothing_else_again():
    """The code check at each shape's first call (inductor's run_and_get_code, which resets dynamo) recompiles only
    its own graph: a second size does not make the first size, or another compiled function, compile again."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    counter = CompileCounter()
    double = torch.compile(lambda t: t.relu() * 2, backend=counter)
    double(torch.randn(8))
    q = quantize_int8(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval(), [torch.randn(1, 3, 16, 16)])
    a, b = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 24, 16)
    first = q(a)
    q(b)  # exported, calibrated, compiled and checked at a second size
    graphs = counters["stats"]["unique_graphs"]
    torch.testing.assert_close(q(a), first)
    double(torch.randn(8))
    assert counters["stats"]["unique_graphs"] == graphs and counter.frame_count == 1
    assert set(q.report) == {"1x3x16x16", "1x3x24x16"}


def _uncompiled(monkeypatch):
    """Int8Model's first call at a shape, without the compilation (tens of seconds): the converted graph runs as it
    is (quantisation simulated in float, the same numbers up to rounding) and the code check, which needs inductor's
    code, is skipped. What is left is the agreement check under test."""
    monkeypatch.setattr(int8_module, "compiled", lambda gm, **kw: gm)
    monkeypatch.setattr(int8_module, "check_code", lambda counts: None)


def _undecided():
    """A model whose four classes' logits differ by about 1e-3 of their size: int8's rounding of each class's weights
    (per channel, steps of 1/127 of the largest) decides its class, not the image."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        w = model[2].weight
        w.copy_(w[:1] + 1e-3 * torch.randn_like(w))
        model[2].bias.fill_(0.1)
    return model


def test_int8_that_changes_the_classes_is_refused_at_that_size(trained, one_thread, monkeypatch):
    """At each shape's first call int8's classes are compared with the float model's: a trained model passes (and
    the share is reported), a model whose classes int8's rounding decides is refused, in one line, then and at every
    later call at that size, and ``min_agreement=0`` accepts it (the share still reported)."""
    _uncompiled(monkeypatch)
    logits_of, train, val = trained
    q = quantize_int8(logits_of, [train.x[:8]])
    q(val.x)
    assert q.report["8x3x64x64"]["agreement_with_float"] >= 0.97 > MIN_AGREEMENT

    calib, x = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in (1, 2)]
    q = quantize_int8(_undecided(), [calib])
    with pytest.raises(Int8Inaccurate, match=r"float32 model's class on only \d+\.\d% of the pixels of its first "
                                             r"16x16 input \(at least 90% wanted\)") as e:
        q(x)
    assert "\n" not in str(e.value) and "int8_min_agreement" in e.value.fields
    agreement = q.report["4x3x16x16"]["agreement_with_float"]
    assert agreement < 0.8  # four near-equal classes: int8 rounding decides many (69% agreed when written)
    with pytest.raises(Int8Inaccurate):  # later calls at that size, of any batch, are refused too
        q(calib[:1])
    accepted = quantize_int8(_undecided(), [calib], min_agreement=0)
    accepted(x)
    assert accepted.report["4x3x16x16"]["agreement_with_float"] == agreement


def test_int8_min_agreement_must_be_a_share():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    for bad in (1.5, -0.1, "0.9", True):
        with pytest.raises(EsegError, match="'int8_min_agreement' must be a share of pixels between 0 and 1"):
            quantize_int8(model, [torch.randn(1, 3, 8, 8)], min_agreement=bad)


def test_empty_calibration_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    with pytest.raises(EsegError, match="calibration set is empty") as e:
        quantize_int8(model, [])
    assert e.value.fields == ("calibration",)
    with pytest.raises(EsegError, match="calibration set is empty"):
        quantize_int8(model, [torch.zeros(0, 3, 8, 8)])  # a batch of no images


def test_a_model_with_nothing_to_quantise_is_refused():
    class NoConv(nn.Module):  # pooling and upsampling only: the quantizer annotates nothing
        def forward(self, x):
            return nn.functional.interpolate(nn.functional.avg_pool2d(x, 2), scale_factor=2.0)

    with pytest.raises(NotQuantized, match="quantised nothing"):
        quantize_int8(NoConv(), [torch.randn(1, 3, 16, 16)])


@pytest.mark.slow
@pytest.mark.parametrize("cpp_wrapper", [False, True])
def test_float_compiled_code_is_refused(cpp_wrapper):
    """What inductor makes of a float32 model (compiled with freezing, as the int8 route compiles, its kernels
    called from Python or from C++) is refused."""
    from torch._inductor.utils import run_and_get_code

    from eseg_cli.inference.prepare import compiled

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        _, code = run_and_get_code(compiled(model, freezing=True, cpp_wrapper=cpp_wrapper),
                                   torch.randn(1, 3, 16, 16))
    counts = code_counts("\n".join(code))
    assert counts["int8_conv_calls"] == 0 and counts["float_conv_calls"] >= 1
    with pytest.raises(NotQuantized, match="lowered it to float32"):
        check_code(counts)


def _synthetic_run(tmp_path, split_images: int):
    """A run folder whose dataset is a synthetic set at ``tmp_path/data`` with ``split_images`` train images."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "leftImg8bit" / split / "s").mkdir(parents=True)
        (root / "gtFine" / split / "s").mkdir(parents=True)
    for i in range(split_images):
        Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(
            root / "leftImg8bit" / "train" / "s" / f"s_{i:06d}_000019_leftImg8bit.png")
        Image.fromarray(rng.integers(0, 19, (32, 64), dtype=np.uint8)).save(
            root / "gtFine" / "train" / "s" / f"s_{i:06d}_000019_gtFine_labelTrainIds.png")
    model = build_model("lite-s", num_classes=19, **TINY).eval()
    run = tmp_path / "run"
    save_checkpoint({"model": model.state_dict(), "model_config": model.config,
                     "config": {"dataset": "synthetic", "data_root": str(root)}, "step": 1, "classes": None},
                    run / "checkpoints" / "best.pt")
    return run


def test_run_calibration_images_come_from_the_runs_dataset(tmp_path):
    run = _synthetic_run(tmp_path, 5)
    ckpt = Predictor(run, device="cpu").checkpoint
    images = run_calibration_images(ckpt, 3)
    assert len(images) == 3 and all(x.shape == (1, 3, 32, 64) and x.dtype == torch.uint8 for x in images)
    with pytest.raises(EsegError, match="more than the 5 train images"):
        run_calibration_images(ckpt, 6)
    with pytest.raises(EsegError, match="at least 1"):
        run_calibration_images(ckpt, 0)


def test_predict_int8_refuses_an_empty_calibration_set(tmp_path):
    """`eseg predict --int8` on a run whose training split holds no image: one line, exit 2."""
    run = _synthetic_run(tmp_path, 0)
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(img)
    res = runner.invoke(app, ["predict", "-c", str(run), str(img), "--out", str(tmp_path / "out"), "--int8",
                              "--calibrate", "4"])
    assert res.exit_code == 2, res.output
    # the dataset's own check names the empty folder
    assert "Traceback" not in res.output and "leftImg8bit/train: no" in res.output.replace("\n", "")
    res = runner.invoke(app, ["predict", "-c", str(run), str(img), "--out", str(tmp_path / "out"), "--calibrate",
                              "4"])
    assert res.exit_code == 2 and "--int8" in res.output
    for flags in (["--int8-min-agreement", "0.5"], ["--int8", "--int8-min-agreement", "1.5"]):
        res = runner.invoke(app, ["predict", "-c", str(run), str(img), "--out", str(tmp_path / "out"), *flags])
        assert res.exit_code == 2 and "--int8-min-agreement" in res.output and "Traceback" not in res.output


def test_predictor_int8_refuses_what_it_replaces(tmp_path):
    run = _synthetic_run(tmp_path, 2)
    for kw in ({"compile": True}, {"amp": "bf16"}):
        with pytest.raises(EsegError, match="drop 'compile' and 'amp'"):
            Predictor(run, device="cpu", quantize="int8", **kw)
    with pytest.raises(EsegError, match="calibration set is empty"):
        Predictor(run, device="cpu", quantize="int8", calibrate=[])
    with pytest.raises(EsegError, match="'quantize' must be one of int8"):
        Predictor(run, device="cpu", quantize="int4")
    with pytest.raises(EsegError, match="'int8_min_agreement' sets what quantize='int8' must agree on"):
        Predictor(run, device="cpu", int8_min_agreement=0.5)
    with pytest.raises(EsegError, match="'int8_min_agreement' must be a share"):
        Predictor(run, device="cpu", quantize="int8", int8_min_agreement=2)


@pytest.mark.slow
def test_predict_int8_writes_labels(tmp_path):
    run = _synthetic_run(tmp_path, 3)
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(img)
    res = runner.invoke(app, ["predict", "-c", str(run), str(img), "--out", str(tmp_path / "out"), "--int8",
                              "--calibrate", "3", "--json", "--no-overlay"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["images"] == 1 and summary["int8"]["calibration"]["images"] == 3
    checks = summary["int8"]["checks"]["1x3x32x64"]
    assert checks["int8_conv_calls"] == checks["quantized_convs"] > 0 and checks["agreement_with_float"] >= 0.9
    assert np.array(Image.open(tmp_path / "out" / "a.png")).shape == (32, 64)
    # the start-up line says the model runs in int8 (not "predicting in float32") and what int8 is worth here
    assert "predicting in int8" in summary["precision_note"] and "float32" not in summary["precision_note"]


@pytest.mark.parametrize("amx, vnni, needle", [
    (True, True, "no faster than --compile --amp bf16"),
    (False, True, "predicting in int8 (oneDNN's VNNI int8 convolutions)"),
    (False, False, "in int8 without VNNI"),
])
def test_int8_start_up_line_says_what_int8_is_worth_on_this_cpu(amx, vnni, needle, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: vnni)
    note = precision_note(None, "cpu", "predict", "int8")
    assert needle in note and note.startswith("Warning: CPU:") == (amx or not vnni), note
    assert precision_note(None, "cuda", "predict", "int8") is None


def test_predictor_head_choice(tmp_path):
    """``head=``: coarse-to-fine by default in int8 only; either head on request, in any mode; refused where it
    cannot apply. The Predictor's own model carries it (eager here: the coarse-to-fine sum is not the exact one)."""
    run = _synthetic_run(tmp_path, 2)
    x = torch.rand(1, 3, 32, 64)
    exact, c2f = Predictor(run, device="cpu"), Predictor(run, device="cpu", head="coarse-to-fine")
    assert (exact.head, c2f.head) == ("exact", "coarse-to-fine") and "head=coarse-to-fine" in repr(c2f)
    heads = [m for p in (exact, c2f) for m in p.model.modules() if isinstance(m, FusionHead)]
    assert [m.coarse_to_fine for m in heads] == [False, True]
    assert not torch.allclose(exact.model.forward_logits(x), c2f.model.forward_logits(x))
    compiled = Predictor(run, device="cpu", compile=True, head="coarse-to-fine")
    # the compiled graph traced the coarse-to-fine sum (the two sums differ by ~2e-4 on this tiny model)
    torch.testing.assert_close(compiled.logits(x), c2f.logits(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(compiled.logits(x), exact.logits(x), rtol=1e-5, atol=1e-5)
    built = build_model("lite-s", num_classes=19, **TINY)
    assert Predictor(built, device="cpu", head="coarse-to-fine").head == "coarse-to-fine"
    assert not built.head.coarse_to_fine  # the caller's model is left as it was
    q = Predictor(run, device="cpu", quantize="int8", calibrate=1)
    assert q.head == "coarse-to-fine" and "summed coarse to fine" in q.model.int8.calibration["method"]
    q = Predictor(run, device="cpu", quantize="int8", calibrate=1, head="exact")
    assert q.head == "exact" and "coarse" not in q.model.int8.calibration["method"]
    with pytest.raises(EsegError, match="'head' must be one of exact, coarse-to-fine"):
        Predictor(run, device="cpu", head="fine")
    peer = nn.Sequential(nn.Conv2d(3, 19, 1))
    assert resolve_head(None, "int8", peer) == "exact" and resolve_head(None, None, exact.model) == "exact"
    with pytest.raises(EsegError, match="has no ESeg head"):
        Predictor(peer, device="cpu", head="coarse-to-fine")
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(img)
    res = runner.invoke(app, ["predict", "-c", str(run), str(img), "--out", str(tmp_path / "out"), "--head",
                              "coarse-to-fine", "--json", "--no-overlay"])
    assert res.exit_code == 0 and json.loads(res.stdout)["head"] == "coarse-to-fine", res.output
    res = runner.invoke(app, ["predict", "--onnx", str(tmp_path / "m.onnx"), str(img), "--out", str(tmp_path / "o"),
                              "--head", "exact"])
    assert res.exit_code == 2 and "--head" in res.output and "Traceback" not in res.output
