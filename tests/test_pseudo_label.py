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
    with pytest.raises(EsegError, match=r"nothing\*\.png.* matches no image"):
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


# ------------------------------------------------------------------ resume keys on content (issue 20)

def _mask(out, name="frame0"):
    return out / "masks" / "train" / f"{name}.png"


def _delete_image_copy(out, images, tmp_path):
    (out / "images" / "train" / "frame0.png").unlink()
    return images


def _truncate_mask(out, images, tmp_path):
    data = _mask(out).read_bytes()
    _mask(out).write_bytes(data[: len(data) // 2])
    return images


def _swap_same_named_source(out, images, tmp_path):
    other = tmp_path / "other" / "city"
    other.mkdir(parents=True)
    for p in sorted((images / "city").glob("*.png")):
        arr = np.array(Image.open(p))
        Image.fromarray(arr if p.stem != "frame0" else 255 - arr).save(other / p.name)
    return tmp_path / "other"


def _edit_source_in_place(out, images, tmp_path):
    copy = tmp_path / "edited"
    import shutil

    shutil.copytree(images, copy)
    return copy


@pytest.mark.parametrize("damage, redone", [
    (_delete_image_copy, {"frame0"}),
    (_truncate_mask, {"frame0"}),
    (_swap_same_named_source, {"frame0", "frame1", "frame2"}),  # another folder: other source paths
    (_edit_source_in_place, {"frame0", "frame1", "frame2"}),
])
def test_resume_redoes_what_is_not_what_was_written(teacher, tmp_path, damage, redone):
    _, ckpt, images = teacher
    out = tmp_path / "pl"
    pseudo_label(ckpt, [images], out, device="cpu")
    sources = damage(out, images, tmp_path)
    again = pseudo_label(ckpt, [sources], out, device="cpu")
    assert again["labelled"] == len(redone) and again["skipped"] == 3 - len(redone)
    for src in sorted(sources.rglob("*.png")):  # every pair now matches its current source
        assert (out / "images" / "train" / src.name).read_bytes() == src.read_bytes()
        Image.open(_mask(out, src.stem)).load()  # decodes in full
    rows = [json.loads(x) for x in (out / "pseudo_label_stats.jsonl").read_text().splitlines()]
    assert {r["name"] for r in rows[3:]} == redone
    assert pseudo_label(ckpt, [sources], out, device="cpu")["labelled"] == 0  # and now it is all done


def test_a_teacher_retrained_in_the_same_run_folder_is_refused(teacher, tmp_path):
    import shutil

    _, ckpt, images = teacher
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(ckpt, run / "best.pt")
    out = tmp_path / "pl"
    pseudo_label(run, [images], out, device="cpu")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    state = torch.load(ckpt, weights_only=False)  # retrained: other weights, the same step and path
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, run / "best.pt")
    with pytest.raises(EsegError, match="teacher_sha256.*retrained"):
        pseudo_label(run, [images], out, device="cpu")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_refused_first_call_writes_nothing(teacher, tmp_path):
    _, ckpt, images = teacher
    out = tmp_path / "pl"
    with pytest.raises(EsegError, match="fp16"):
        pseudo_label(ckpt, [images], out, device="cpu", amp="fp16")
    assert not out.exists()
    assert pseudo_label(ckpt, [images], out, device="cpu")["labelled"] == 3  # the corrected call is not refused


def test_a_stats_line_cut_by_a_crash_redoes_that_image_only(teacher, tmp_path):
    _, ckpt, images = teacher
    out = tmp_path / "pl"
    pseudo_label(ckpt, [images], out, device="cpu")
    stats = out / "pseudo_label_stats.jsonl"
    text = stats.read_text()
    stats.write_text(text[: len(text) - 40])  # the last row cut mid-line
    again = pseudo_label(ckpt, [images], out, device="cpu")
    assert (again["labelled"], again["skipped"]) == (1, 2)
    assert all(json.loads(x) for x in stats.read_text().splitlines())  # whole rows only
    stats.write_text("{not json\n" + stats.read_text())  # damage before the last line: refused, named
    with pytest.raises(EsegError, match="pseudo_label_stats.jsonl: line 1 is damaged"):
        pseudo_label(ckpt, [images], out, device="cpu")


def test_a_failed_copy_leaves_no_temporary_file(teacher, tmp_path, monkeypatch):
    import errno
    import shutil

    from eseg_cli.engine import pseudo_label as pl_mod

    _, ckpt, images = teacher

    def full(src, dst, *a, **k):
        with open(dst, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pl_mod.os, "link", lambda *a: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross-device")))
    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(EsegError, match="disk is full"):
        pseudo_label(ckpt, [images], tmp_path / "pl", device="cpu")
    assert not [p for p in (tmp_path / "pl").rglob("*") if p.name.endswith(".tmp")]
