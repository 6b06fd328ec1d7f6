"""eseg eval: checkpoint evaluation, inference modes, saved predictions and their scoring."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from eseg_cli.cli import app
from eseg_cli.engine import score_predictions
from eseg_cli.inference.modes import scores as predict
from eseg_cli.models import build_model

TINY = "{width: 0.25, depth: 0.3, channels: 16, repeats: 1}"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """A tiny synthetic set (Cityscapes layout): 4 train + 3 val images at 64x128."""
    from eseg_cli.data import synthetic

    root = tmp_path_factory.mktemp("syn")
    synthetic.generate(root, num_train=4, num_val=3, size=(64, 128), seed=0)
    return root


def _gt_files(root, kind):
    return sorted((root / "gtFine" / "val").rglob(f"*_gtFine_{kind}.png"))


def _image_stem(label_path):
    return label_path.name.split("_gtFine_")[0] + "_leftImg8bit"


def test_ground_truth_as_predictions_scores_100(syn, tmp_path):
    for kind, ids in (("labelTrainIds", "trainid"), ("labelIds", "labelid")):
        pred_dir = tmp_path / kind
        pred_dir.mkdir()
        for f in _gt_files(syn, kind):
            shutil.copy(f, pred_dir / f"{_image_stem(f)}.png")
        m = score_predictions(pred_dir, dataset="synthetic", data_root=syn)
        assert m["ids"] == ids  # labelIds detected and mapped to trainIds
        assert m["mIoU"] == m["pixAcc"] == m["mAcc"] == 100.0
        assert m["images"] == 3


def test_constant_prediction_matches_hand_computation(syn, tmp_path):
    gts = [np.array(Image.open(f)) for f in _gt_files(syn, "labelTrainIds")]
    pred_dir = tmp_path / "preds"
    pred_dir.mkdir()
    for f, gt in zip(_gt_files(syn, "labelTrainIds"), gts):
        Image.fromarray(np.zeros_like(gt)).save(pred_dir / f"{_image_stem(f)}.png")  # everything "road"
    m = score_predictions(pred_dir, dataset="synthetic", data_root=syn, ids="trainid")
    allgt = np.concatenate([g.ravel() for g in gts])
    valid = allgt[allgt != 255]
    road = (valid == 0).mean()
    present = np.unique(valid)
    # road: TP = road pixels, union = all valid pixels; every other present class has IoU 0
    assert m["pixAcc"] == pytest.approx(100 * road, abs=1e-3)
    assert m["mIoU"] == pytest.approx(100 * road / len(present), abs=1e-3)
    assert m["mAcc"] == pytest.approx(100 / len(present), abs=1e-3)
    absent = [c for c in range(19) if c not in present]
    names = list(m["per_class"])
    assert all(m["per_class"][names[c]]["IoU"] is None for c in absent)


def test_missing_prediction_is_a_clear_error(syn, tmp_path):
    (tmp_path / "p").mkdir()
    Image.fromarray(np.zeros((64, 128), np.uint8)).save(tmp_path / "p" / "other.png")
    r = CliRunner().invoke(app, ["eval", "--predictions", str(tmp_path / "p"), "--dataset", "synthetic",
                                 "--data-root", str(syn)])
    assert r.exit_code == 2 and "no prediction found" in r.output


def test_modes_agree_where_they_must():
    torch.manual_seed(0)
    model = build_model("lite-s", 3, width=0.25, depth=0.3, channels=16, repeats=1).eval()
    x = torch.randn(1, 3, 64, 96)
    whole = predict(model, x, 3)
    # a window as large as the image is the whole image
    torch.testing.assert_close(predict(model, x, 3, mode="slide", crop=(64, 96), stride=(32, 32)), whole)
    # one scale without flip is the softmax of the whole-image logits
    torch.testing.assert_close(predict(model, x, 3, mode="msflip", scales=(1.0,), flip=False), whole.softmax(1))
    slide = predict(model, x, 3, mode="slide", crop=(64, 64), stride=(64, 32))
    assert slide.shape == whole.shape and torch.isfinite(slide).all()
    ms = predict(model, x, 3, mode="msflip", scales=(0.75, 1.0), flip=True)
    assert torch.allclose(ms.sum(1), torch.full((1, 64, 96), 4.0), atol=1e-4)  # 4 softmaxes summed


def test_train_eval_save_and_rescore_cli(syn, tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(app, [
        "train", "--dataset", "synthetic", "--data-root", str(syn), "--run-dir", str(run), "--steps", "2",
        "--batch-size", "2", "--crop", "64x64", "--workers", "0", "--eval-interval", "2", "--no-progress",
        "--set", f"model={TINY}", "--set", "ohem_min_kept=1000", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["steps"] == 2 and summary["best_mIoU"] is not None
    preds = tmp_path / "preds"
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(run), "--json", "--save-predictions", str(preds),
                                 "--workers", "0"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert set(m) >= {"mIoU", "pixAcc", "mAcc", "fwIoU", "per_class"} and len(m["per_class"]) == 19
    assert m["mIoU"] == pytest.approx(summary["best_mIoU"], abs=1e-3)  # same model, same val set
    assert (run / "eval_whole.json").is_file()
    csv = (run / "eval_whole_confusion.csv").read_text().splitlines()
    assert len(csv) == 20 and sum(int(v) for line in csv[1:] for v in line.split(",")[1:]) == m["pixels"]
    assert len(list(preds.glob("*_leftImg8bit.png"))) == 3 and len(list(preds.glob("*_color.png"))) == 3
    # scoring the saved PNGs gives the same numbers as evaluating the model
    r = CliRunner().invoke(app, ["eval", "--predictions", str(preds), "--dataset", "synthetic", "--data-root",
                                 str(syn), "--json", "--out", str(tmp_path / "scored")])
    assert r.exit_code == 0, r.output
    m2 = json.loads(r.stdout)
    for k in ("mIoU", "pixAcc", "mAcc", "fwIoU"):
        assert m2[k] == pytest.approx(m[k], abs=1e-4), k
    assert (tmp_path / "scored" / "eval.json").is_file()
    # a second evaluation into the same folder asks first (no terminal -> refuse without --yes)
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(run), "--workers", "0"])
    assert r.exit_code == 2 and "--yes" in r.output
    # another mode is written beside it, without asking
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(run), "--workers", "0", "--mode", "slide",
                                 "--crop", "64x64"])
    assert r.exit_code == 0, r.output
    assert "mIoU" in r.output
    assert json.loads((run / "eval_slide.json").read_text())["mode"] == "slide"
    assert json.loads((run / "eval_whole.json").read_text())["mode"] == "whole"


# ------------------------------------------------------------------------------------------- eval --onnx (issue 21)

@pytest.fixture(scope="module")
def syn_run(syn, tmp_path_factory):
    """A tiny ESeg-Lite checkpoint recording the synthetic set ``syn`` as its dataset, and its ONNX export."""
    from eseg_cli.engine.checkpoint import save_checkpoint
    from eseg_cli.inference.export import export_model

    torch.manual_seed(0)
    model = build_model("lite-s", num_classes=19, width=0.25, depth=0.25, channels=16, repeats=1).eval()
    with torch.no_grad():  # road, building, vegetation and sky close, the pixels deciding: some right, some wrong
        bias = torch.full((19,), -5.0)
        bias[[0, 2, 8, 10]] = torch.tensor([0.3, 0.0, 0.1, 0.2])
        model.head.classifier[1].bias.copy_(bias)
        model.head.classifier[1].weight.mul_(50)
    run = tmp_path_factory.mktemp("onnx-run")
    save_checkpoint({"model": model.state_dict(), "model_config": model.config, "step": 1, "classes": None,
                     "config": {"dataset": "synthetic", "data_root": str(syn)}}, run / "checkpoints" / "best.pt")
    export_model(run, "onnx", run / "model.onnx", sizes=((64, 128), (45, 77)))
    return run


@pytest.mark.parametrize("mode_args", [["--mode", "whole"], ["--mode", "slide", "--crop", "48x64"],
                                       ["--mode", "msflip", "--scales", "0.75,1.25"]])
def test_eval_onnx_scores_as_pytorch(mode_args, syn_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install 'eseg[deploy]'")
    r = CliRunner().invoke(app, ["eval", "-c", str(syn_run), "--workers", "0", "--json", "--out",
                                 str(tmp_path / "pt"), *mode_args])
    assert r.exit_code == 0, r.output
    pt = json.loads(r.stdout)
    # no --dataset: the file records the run's dataset and root
    r = CliRunner().invoke(app, ["eval", "--onnx", str(syn_run / "model.onnx"), "--workers", "0", "--json",
                                 *mode_args])
    assert r.exit_code == 0, r.output
    ox = json.loads(r.stdout)
    assert ox["dataset"] == "synthetic" and ox["images"] == pt["images"] == 3 and ox["mode"] == pt["mode"]
    assert pt["mIoU"] > 1.0 and pt["pixAcc"] < 100.0  # some pixels right, some wrong
    for k in ("mIoU", "pixAcc", "mAcc", "fwIoU"):
        assert ox[k] == pytest.approx(pt[k], abs=0.01), k
    assert ox["quantized_ops"] == {} and ox["onnx_metadata"] == {}
    assert (syn_run / "model_eval" / f"eval_{ox['mode']}.json").is_file()  # beside the file, not the run's own


def test_eval_onnx_of_an_int8_file_reports_its_quantisation(syn_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install 'eseg[deploy]'")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    q = tmp_path / "int8.onnx"
    quantize_dynamic(str(syn_run / "model.onnx"), str(q), weight_type=QuantType.QUInt8)
    proto = onnx.load(str(q))
    if not any(p.key == "num_classes" for p in proto.metadata_props):  # the quantiser may drop the metadata
        src = onnx.load(str(syn_run / "model.onnx"))
        proto.metadata_props.extend(src.metadata_props)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "int8", "dynamic uint8 weights (onnxruntime quantize_dynamic)"
    onnx.save(proto, str(q))
    r = CliRunner().invoke(app, ["eval", "--onnx", str(q), "--workers", "0", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["quantized_ops"].get("ConvInteger", 0) > 0 and 0 <= m["mIoU"] <= 100
    assert m["onnx_metadata"]["int8"] == "dynamic uint8 weights (onnxruntime quantize_dynamic)"
    r = CliRunner().invoke(app, ["eval", "--onnx", str(q), "--workers", "0", "--yes"])  # the table names them
    assert r.exit_code == 0 and "ConvInteger" in r.output and "metadata int8: dynamic uint8" in r.output, r.output


@pytest.mark.parametrize("args, needle", [
    (["--amp", "bf16"], "--amp"),
    (["--no-ema"], "--no-ema"),
    (["--mode", "slide"], "--crop"),
    (["--dataset", "ade20k"], "--data-root"),  # another dataset: not the recorded root
])
def test_eval_onnx_refuses_what_it_cannot_do(args, needle, syn_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install 'eseg[deploy]'")
    r = CliRunner().invoke(app, ["eval", "--onnx", str(syn_run / "model.onnx"), "--workers", "0", "--out",
                                 str(tmp_path / "o"), *args])
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code == 2 and "Traceback" not in r.output and len(errors) == 1, r.output
    assert needle in errors[0], r.output


def test_eval_onnx_without_a_recorded_dataset_asks_for_one(syn_run, syn, tmp_path):
    pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install 'eseg[deploy]'")
    import onnx

    proto = onnx.load(str(syn_run / "model.onnx"))  # as an older export wrote it: no dataset keys
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in ("dataset", "data_root", "val_resize")]
    del proto.metadata_props[:]
    for k, v in keep:
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    r = CliRunner().invoke(app, ["eval", "--onnx", str(old), "--workers", "0"])
    assert r.exit_code == 2 and "--dataset" in r.output and "old.onnx" in r.output, r.output
    r = CliRunner().invoke(app, ["eval", "--onnx", str(old), "--workers", "0", "-d", "synthetic", "--data-root",
                                 str(syn), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["metadata_records_dataset"] is False


def test_eval_slide_without_crop_takes_the_runs_training_crop(syn_run, tmp_path):
    """`eseg eval --mode slide` with no --crop slides the run's training crop (its config's crop_size), as the
    command's help says; the same scores as giving that crop."""
    from eseg_cli.engine.checkpoint import save_checkpoint

    ckpt = torch.load(syn_run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["config"] = {**ckpt["config"], "crop_size": [32, 64]}
    run = tmp_path / "run"
    save_checkpoint(ckpt, run / "checkpoints" / "best.pt")
    scores = []
    for extra in ([], ["--crop", "32x64"]):
        r = CliRunner().invoke(app, ["eval", "-c", str(run), "--mode", "slide", "--workers", "0", "--json", "--yes",
                                     "--out", str(tmp_path / f"o{len(extra)}"), *extra])
        assert r.exit_code == 0, r.output
        scores.append(json.loads(r.stdout)["mIoU"])
    assert scores[0] == scores[1]
    r = CliRunner().invoke(app, ["eval", "-c", str(run), "--mode", "slide", "--crop", "16x32", "--workers", "0",
                                 "--json", "--yes", "--out", str(tmp_path / "o9")])
    assert r.exit_code == 0 and json.loads(r.stdout)["mIoU"] != scores[0], r.output  # the crop is used
