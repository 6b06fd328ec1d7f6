"""``eseg pseudo-label``: thresholds checked against independently computed probabilities, the folder
layout with the teacher's classes, resuming, refusing other settings, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from eseg_cli import build_model
from eseg_cli.cli import app
from eseg_cli.data import FolderDataset
from eseg_cli.engine.pseudo_label import pseudo_label
from eseg_cli.errors import EsegError

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(width=0.25, depth=0.25, channels=16, repeats=1)
CLASSES = ["road", "car", "sky"]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # unusual on purpose: the teacher's own normalisation must be used


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = build_model("lite-s", num_classes=3, mean=list(MEAN), std=list(STD), **TINY).train()
    # spread the confidences (a fresh model is close to uniform): batch-norm statistics of real inputs,
    # then a sharper classifier; the top probabilities then range over about 0.35..0.9
    with torch.no_grad():
        for _ in range(30):
            model(torch.rand(2, 3, 48, 80) * 2 - 1)
        model.head.classifier[1].weight.mul_(60)
    model.eval()
    torch.save({"model": model.state_dict(), "model_config": model.config, "classes": CLASSES, "step": 7,
                "config": {"dataset": "folder"}}, d / "best.pt")
    rng = np.random.default_rng(0)
    imgs = d / "unlabelled" / "city"
    imgs.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(imgs / f"frame{i}.png")
    return model, d / "best.pt", d / "unlabelled"


def independent_probs(model, path):
    """Normalise with NumPy and run the plain model: softmax of the logits at the image size."""
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(((arr - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(2, 0, 1))
    with torch.no_grad():
        return model(x[None].float()).softmax(1)[0]


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.6, 1.0])
def test_pixels_below_the_threshold_are_255(teacher, tmp_path, threshold):
    model, ckpt, images = teacher
    s = pseudo_label(ckpt, [images], tmp_path / "pl", threshold=threshold, device="cpu")
    assert s["images"] == 3 and s["labelled"] == 3 and s["classes"] == CLASSES
    kept_total = 0
    for img in sorted(images.rglob("*.png")):
        probs = independent_probs(model, img)
        conf, cls = probs.max(0)
        mask = np.array(Image.open(tmp_path / "pl" / "masks" / "train" / f"{img.stem}.png"))
        clear = (conf - threshold).abs().numpy() > 1e-4  # pixels on the threshold itself may go either way
        want = np.where(conf.numpy() >= threshold, cls.numpy(), 255)
        np.testing.assert_array_equal(mask[clear], want[clear])
        kept_total += int((mask != 255).sum())
        if 0 < threshold < 1:
            assert 0 < (mask == 255).mean() < 1  # the test means something: some kept, some dropped
    assert s["kept_fraction"] == pytest.approx(kept_total / (3 * 48 * 80))
    # the output is a folder dataset with the teacher's classes
    ds = FolderDataset(tmp_path / "pl", "train")
    assert ds.classes == CLASSES and len(ds) == 3


def test_resume_skips_finished_images_and_refuses_other_settings(teacher, tmp_path):
    _, ckpt, images = teacher
    out = tmp_path / "pl"
    first = pseudo_label(ckpt, [images / "city" / "frame0.png"], out, device="cpu")
    assert first["labelled"] == 1
    before = (out / "masks" / "train" / "frame0.png").stat().st_mtime_ns
    again = pseudo_label(ckpt, [str(images / "city" / "*.png")], out, device="cpu")
    assert (again["labelled"], again["skipped"], again["images"]) == (2, 1, 3)
    assert (out / "masks" / "train" / "frame0.png").stat().st_mtime_ns == before
    per_class = sum(r["kept_pixels"] for r in again["per_class"])
    assert per_class == round(again["kept_fraction"] * 3 * 48 * 80)
    with pytest.raises(EsegError, match="threshold"):
        pseudo_label(ckpt, [images], out, threshold=0.7, device="cpu")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(EsegError, match="not empty"):
        pseudo_label(ckpt, [images], tmp_path / "busy", device="cpu")
    with pytest.raises(EsegError, match="no image matches"):
        pseudo_label(ckpt, [tmp_path / "nothing*.png"], tmp_path / "pl2", device="cpu")


def test_msflip_averages_probabilities(teacher, tmp_path):
    _, ckpt, images = teacher
    s = pseudo_label(ckpt, [images], tmp_path / "pl", threshold=0.4, mode="msflip", scales=(0.75, 1.0),
                     device="cpu")
    # averaged probabilities stay in 0..1, so a 0.4 threshold keeps some pixels and drops others
    assert 0 < s["kept_fraction"] < 1


def test_cli_json(teacher, tmp_path):
    _, ckpt, images = teacher
    r = CliRunner().invoke(app, ["pseudo-label", "-c", str(ckpt), "-i", str(images), "-o", str(tmp_path / "pl"),
                                 "--threshold", "0.6", "--device", "cpu", "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["images"] == 3 and s["threshold"] == 0.6 and len(s["per_class"]) == 3
    assert json.loads((tmp_path / "pl" / "pseudo_label.json").read_text())["summary"]["images"] == 3
    r = CliRunner().invoke(app, ["pseudo-label", "-c", str(ckpt), "-i", str(images), "-o", str(tmp_path / "pl"),
                                 "--mode", "slide", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 2 and "crop" in r.output
