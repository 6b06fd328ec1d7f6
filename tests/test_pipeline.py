"""One inference pipeline: ``eseg eval`` (every mode), the report's sample predictions and ``Predictor`` give the
same predictions, checked against an independent plain loop (PIL + NumPy normalisation + the unprepared model +
``F.interpolate`` + argmax + a NumPy confusion matrix) for a model whose recorded normalisation is mean/std 0.5
(TF-ported Lite weights)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from eseg_cli.analysis.runs import sample_predictions
from eseg_cli.cli import app
from eseg_cli.data import build_dataset
from eseg_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from eseg_cli.inference import Predictor
from eseg_cli.inference.runtime import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = "{width: 0.25, depth: 0.3, channels: 16, repeats: 1, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}"
HALF = np.array([0.5, 0.5, 0.5], np.float32)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of a tiny model with mean/std 0.5 trained for 2 steps on a tiny synthetic set; its classifier then
    sharpened so that its predictions vary over the image (two steps leave it close to one class everywhere)."""
    from eseg_cli.data import synthetic

    base = tmp_path_factory.mktemp("pipeline")
    syn = base / "syn"
    synthetic.generate(syn, num_train=4, num_val=3, size=(64, 128), seed=0)
    run = base / "run"
    r = CliRunner().invoke(app, [
        "train", "--dataset", "synthetic", "--data-root", str(syn), "--run-dir", str(run), "--steps", "2",
        "--batch-size", "2", "--crop", "64x64", "--workers", "0", "--eval-interval", "2", "--no-progress",
        "--set", f"model={TINY}", "--set", "ohem_min_kept=1000", "--set", "ema_decay=null", "--json"])
    assert r.exit_code == 0, r.output
    path = run / "checkpoints" / "best.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["model_config"]["mean"] == [0.5] * 3 and ckpt["model_config"]["std"] == [0.5] * 3
    g = torch.Generator().manual_seed(0)
    for k, v in ckpt["model"].items():
        if k.startswith("head.classifier") and v.is_floating_point():
            ckpt["model"][k] = torch.randn(v.shape, generator=g) * 3
    torch.save(ckpt, path)
    return run, syn


def _val_pairs(syn):
    ds = build_dataset("synthetic", syn, "val")
    return [(ip, ds.load(i)[1]) for i, (ip, _) in enumerate(ds.files)]


def _miou(preds, gts, num_classes=19) -> float:
    cm = np.zeros((num_classes, num_classes), np.int64)
    for p, g in zip(preds, gts):
        valid = g != 255
        cm += np.bincount(g[valid].astype(np.int64) * num_classes + p[valid], minlength=num_classes ** 2) \
            .reshape(num_classes, num_classes)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]) * 100)


@torch.no_grad()
def _plain_predictions(run, pairs, mean=HALF, std=HALF):
    """The reference: the unprepared model (batch norm not folded, eager, NCHW) on images normalised with NumPy;
    the model's own forward upsamples its logits bilinearly; argmax."""
    model, _ = load_model(run)
    out = []
    for ip, _ in pairs:
        arr = np.asarray(Image.open(ip).convert("RGB"), np.float32) / 255.0
        x = torch.from_numpy(((arr - mean) / std).transpose(2, 0, 1).copy())[None]
        out.append(model(x).argmax(1)[0].numpy())
    return out


def _eval(run, tmp_path, mode, *extra):
    r = CliRunner().invoke(app, ["eval", "-c", str(run), "--json", "--workers", "0", "--mode", mode, "--yes",
                                 "--out", str(tmp_path / "out"), *extra])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_eval_whole_equals_a_plain_reference_loop(run, tmp_path):
    run, syn = run
    pairs = _val_pairs(syn)
    plain = _plain_predictions(run, pairs)
    gts = [g for _, g in pairs]
    assert len({int(c) for p in plain for c in np.unique(p)}) >= 3  # the predictions vary: the test can fail
    m = _eval(run, tmp_path, "whole", "--save-predictions", str(tmp_path / "preds"))
    assert m["mIoU"] == pytest.approx(round(_miou(plain, gts), 4), abs=0.01)
    predictor = Predictor(run, device="cpu")
    for (ip, _), ref in zip(pairs, plain):
        saved = np.array(Image.open(tmp_path / "preds" / f"{ip.stem}.png"))
        assert (saved == ref).mean() > 0.999  # float rounding of folded batch norm at exact ties only
        np.testing.assert_array_equal(saved, predictor.predict(ip))  # eval's predictions are the Predictor's
    # ImageNet's normalisation (what the report used to apply to every model) predicts something else
    wrong = _plain_predictions(run, pairs, np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32))
    assert any((w != p).mean() > 0.01 for w, p in zip(wrong, plain))


@pytest.mark.parametrize("mode, extra, kw", [
    ("slide", ["--crop", "64x64", "--stride", "32x48"], {"crop": (64, 64), "stride": (32, 48)}),
    ("msflip", ["--scales", "0.75,1.0,1.25"], {"scales": (0.75, 1.0, 1.25)}),
    ("msflip", ["--scales", "1.0", "--no-flip", "--crop", "48x64"], {"scales": (1.0,), "flip": False,
                                                                      "crop": (48, 64)}),
])
def test_eval_slide_and_msflip_agree_with_the_predictor(run, tmp_path, mode, extra, kw):
    run, syn = run
    pairs = _val_pairs(syn)
    m = _eval(run, tmp_path, mode, *extra, "--save-predictions", str(tmp_path / "preds"))
    predictor = Predictor(run, device="cpu", mode=mode, **kw)
    preds = [predictor.predict(ip) for ip, _ in pairs]
    assert m["mIoU"] == pytest.approx(_miou(preds, [g for _, g in pairs]), abs=1e-3)
    for (ip, _), p in zip(pairs, preds):
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "preds" / f"{ip.stem}.png")), p)
    # and the mode is really another computation than the whole image (else the test proves nothing)
    whole = Predictor(run, device="cpu")
    assert any((whole.predict(ip) != p).any() for (ip, _), p in zip(pairs, preds))


def test_predictor_modes_reduce_to_whole_where_they_must(run):
    run, syn = run
    ip = _val_pairs(syn)[0][0]
    whole = Predictor(run, device="cpu")
    # one window as large as the image, one scale without flip: the whole image, labels and probabilities
    for other in (Predictor(run, device="cpu", mode="slide", crop=(64, 128)),
                  Predictor(run, device="cpu", mode="msflip", scales=(1.0,), flip=False)):
        np.testing.assert_array_equal(other.predict(ip), whole.predict(ip))
        np.testing.assert_allclose(other.predict_proba(ip), whole.predict_proba(ip), atol=1e-5)
    probs = Predictor(run, device="cpu", mode="msflip", scales=(0.75, 1.0)).predict_proba(ip)
    assert probs.shape == (19, 64, 128)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)  # the mean of 4 softmaxes is a distribution
    batch = whole.predict_batch([ip, ip])
    assert len(batch) == 2 and all((b == whole.predict(ip)).all() for b in batch)


def test_report_samples_and_eval_equal_the_predictor_for_a_tf_normalised_model(run, tmp_path):
    run, syn = run
    pairs = _val_pairs(syn)
    samples, _ = sample_predictions(run, 3)
    predictor = Predictor(run, device="cpu")
    assert (predictor.mean, predictor.std) == ((0.5,) * 3, (0.5,) * 3)
    m = _eval(run, tmp_path, "whole")
    assert len(samples) == 3
    for s, (ip, gt) in zip(samples, pairs):
        assert s["name"] == ip.stem
        np.testing.assert_array_equal(s["pred"], predictor.predict(ip))
        np.testing.assert_array_equal(s["image"], np.asarray(Image.open(ip).convert("RGB")))
        np.testing.assert_array_equal(s["gt"], gt)
    assert m["mIoU"] == pytest.approx(_miou([s["pred"] for s in samples], [g for _, g in pairs]), abs=1e-3)

