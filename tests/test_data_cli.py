"""``eseg prepare-data`` / ``eseg browse``: happy paths, idempotence, and one test per bad-input case
(message naming the file, exit code 2, no traceback, existing outputs intact, no temporary files left)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from eseg_cli.cli import app
from eseg_cli.data.synthetic import generate

runner = CliRunner()
FRAME = "frankfurt_000000_000294"


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _assert_user_error(res, *fragments):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Error:" in res.output
    flat = " ".join(res.output.split())
    for f in fragments:
        assert f in flat, (f, res.output)


def _no_tmp_files(root: Path):
    return not [p for p in root.rglob("*.tmp")]


@pytest.fixture
def city(tmp_path) -> Path:
    """A small Cityscapes-layout root (generated frames with labelIds), already prepared once."""
    root = tmp_path / "cs"
    generate(root, num_train=2, num_val=1, size=(32, 64), seed=0)
    for p in root.rglob("*_labelTrainIds.png"):  # start from labelIds only, like a fresh download
        p.unlink()
    res = _run("prepare-data", "cityscapes", "--root", root, "--workers", 1, "--json")
    assert res.exit_code == 0, res.output
    return root


def _outputs(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*_labelTrainIds.png"))}


def _first_image(root: Path, split="train") -> Path:
    return sorted((root / "leftImg8bit" / split).rglob("*_leftImg8bit.png"))[0]


def _label_of(img: Path, kind="labelIds") -> Path:
    split = img.parent.parent.name
    stem = img.name[: -len("_leftImg8bit.png")]
    return img.parents[3] / "gtFine" / split / img.parent.name / f"{stem}_gtFine_{kind}.png"


# ------------------------------------------------------------------------------------------ happy paths
def test_prepare_cityscapes_real_sample_json_and_idempotence(shared_data, tmp_path):
    root = tmp_path / "cityscapes"
    shutil.copytree(shared_data / "cityscapes", root)
    res = _run("prepare-data", "cityscapes", "--root", root, "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["converted"] == 1 and s["skipped"] == 0 and "car" in s["classes_seen"]
    out = root / "gtFine" / "val" / "frankfurt" / f"{FRAME}_gtFine_labelTrainIds.png"
    mtime = out.stat().st_mtime_ns
    s = json.loads(_run("prepare-data", "cityscapes", "--root", root, "--json").stdout)
    assert s["converted"] == 0 and s["skipped"] == 1 and out.stat().st_mtime_ns == mtime
    s = json.loads(_run("prepare-data", "cityscapes", "--root", root, "--force", "--json").stdout)
    assert s["converted"] == 1
    # human summary
    res = _run("prepare-data", "cityscapes", "--root", root)
    assert res.exit_code == 0 and "classes seen" in res.output and "skipped" in res.output


def test_prepare_ade20k_real_sample(shared_data):
    res = _run("prepare-data", "ade20k", "--root", shared_data / "ade20k", "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["files"] == 3 and s["reduce_zero_label"] is True


def test_prepare_synthetic_with_preview_and_browse(tmp_path):
    out = tmp_path / "syn"
    res = _run("prepare-data", "synthetic", "--out", out, "--num-train", 4, "--num-val", 2, "--size", "64x128",
               "--seed", 3, "--workers", 2, "--preview", 2, "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["images"] == {"train": 4, "val": 2} and s["generated"] == 6
    assert Image.open(s["preview"]).format == "PNG"
    assert len(list((out / "leftImg8bit" / "train" / "synthetic").glob("*.png"))) == 4
    res = _run("browse", "synthetic", "--root", out, "--split", "val", "-n", 2, "--out", tmp_path / "b.png",
               "--no-augment", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["indices"] == [0, 1]
    # the preview is not overwritten without --yes
    before = (tmp_path / "b.png").read_bytes()
    res = _run("browse", "synthetic", "--root", out, "-n", 1, "--out", tmp_path / "b.png")
    _assert_user_error(res, "b.png already exists", "--yes")
    assert (tmp_path / "b.png").read_bytes() == before


# ------------------------------------------------------------------------------------------ bad input
def test_missing_folder(tmp_path):
    _assert_user_error(_run("prepare-data", "cityscapes", "--root", tmp_path / "nope"), "nope", "does not exist")
    (tmp_path / "half" / "leftImg8bit" / "val").mkdir(parents=True)
    _assert_user_error(_run("prepare-data", "cityscapes", "--root", tmp_path / "half"), "gtFine not found")
    _assert_user_error(_run("prepare-data", "ade20k", "--root", tmp_path / "half"), "ADEChallengeData2016 layout")
    _assert_user_error(_run("browse", "cityscapes", "--root", tmp_path / "nope", "--out", tmp_path / "p.png"),
                       "leftImg8bit", "not found")


def test_image_without_label(city):
    before = _outputs(city)
    extra = city / "leftImg8bit" / "train" / "synthetic" / "synthetic_000000_000099_leftImg8bit.png"
    shutil.copy(_first_image(city), extra)
    res = _run("prepare-data", "cityscapes", "--root", city, "--force")
    _assert_user_error(res, "synthetic_000000_000099_leftImg8bit.png: no label", "add it or remove the image")
    assert _outputs(city) == before and _no_tmp_files(city)


def test_label_without_image(city):
    before = _outputs(city)
    img = _first_image(city)
    img.unlink()
    res = _run("prepare-data", "cityscapes", "--root", city, "--force")
    _assert_user_error(res, _label_of(img).name, "label without an image")
    assert _outputs(city) == before and _no_tmp_files(city)


def test_label_size_differs_from_image(city):
    before = _outputs(city)
    img = _first_image(city, "val")
    lab = _label_of(img)
    Image.fromarray(np.full((16, 64), 7, np.uint8)).save(lab)
    res = _run("prepare-data", "cityscapes", "--root", city, "--force", "--workers", 1)
    _assert_user_error(res, lab.name, "is 64x16", "is 64x32")
    # the val output of the bad label is left as it was; the others were redone identically
    assert _outputs(city) == before and _no_tmp_files(city)


def test_corrupt_label_and_image(city):
    before = _outputs(city)
    img = _first_image(city, "val")
    lab = _label_of(img)
    lab.write_bytes(lab.read_bytes()[:40])  # truncated PNG
    res = _run("prepare-data", "cityscapes", "--root", city, "--force")
    _assert_user_error(res, lab.name, "corrupt")
    assert _outputs(city) == before
    shutil.copy(_label_of(_first_image(city, "train")), lab)
    img.write_bytes(b"not a png at all")
    res = _run("prepare-data", "cityscapes", "--root", city, "--force")
    _assert_user_error(res, img.name, "unreadable or corrupt image")
    assert _outputs(city) == before and _no_tmp_files(city)


def test_label_values_outside_known_set(city):
    before = _outputs(city)
    lab = _label_of(_first_image(city, "val"))
    arr = np.array(Image.open(lab))
    arr[0, :3] = 200
    Image.fromarray(arr).save(lab)
    res = _run("prepare-data", "cityscapes", "--root", city, "--force")
    _assert_user_error(res, lab.name, "[200]", "not Cityscapes labelIds")
    assert _outputs(city) == before and _no_tmp_files(city)


def test_unknown_polygon_label(tmp_path):
    root = tmp_path / "cs"
    img = root / "leftImg8bit" / "val" / "c" / "c_000000_000001_leftImg8bit.png"
    img.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    poly = root / "gtFine" / "val" / "c" / "c_000000_000001_gtFine_polygons.json"
    poly.parent.mkdir(parents=True)
    poly.write_text(json.dumps({"imgHeight": 8, "imgWidth": 8,
                                "objects": [{"label": "spaceship", "polygon": [[0, 0], [7, 0], [7, 7]]}]}))
    _assert_user_error(_run("prepare-data", "cityscapes", "--root", root), poly.name, "'spaceship'")
    poly.write_text("{not json")
    _assert_user_error(_run("prepare-data", "cityscapes", "--root", root), poly.name, "corrupt polygon file")
    assert not list(root.rglob("*_labelTrainIds.png"))


def _ade_copy(shared_data, tmp_path) -> Path:
    dst = tmp_path / "ade"
    shutil.copytree(shared_data / "ade20k", dst)
    return dst / "ADEChallengeData2016"


def test_ade20k_bad_inputs(shared_data, tmp_path):
    base = _ade_copy(shared_data, tmp_path)
    ann = base / "annotations" / "validation"
    imgs = base / "images" / "validation"
    # image without annotation
    (ann / "ADE_val_00000002.png").rename(tmp_path / "saved.png")
    _assert_user_error(_run("prepare-data", "ade20k", "--root", base.parent), "ADE_val_00000002.jpg: no annotation")
    (tmp_path / "saved.png").rename(ann / "ADE_val_00000002.png")
    # annotation without image
    (imgs / "ADE_val_00000003.jpg").rename(tmp_path / "saved.jpg")
    _assert_user_error(_run("prepare-data", "ade20k", "--root", base), "ADE_val_00000003.png: annotation without")
    (tmp_path / "saved.jpg").rename(imgs / "ADE_val_00000003.jpg")
    # values outside 0..150
    a = np.array(Image.open(ann / "ADE_val_00000001.png"))
    a[0, 0] = 222
    Image.fromarray(a).save(ann / "ADE_val_00000001.png")
    _assert_user_error(_run("prepare-data", "ade20k", "--root", base), "ADE_val_00000001.png", "value 222")
    # size mismatch
    Image.fromarray(a[:10, :10]).save(ann / "ADE_val_00000001.png")
    _assert_user_error(_run("prepare-data", "ade20k", "--root", base), "ADE_val_00000001.png", "is 10x10")


def test_synthetic_bad_inputs(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    _assert_user_error(_run("prepare-data", "synthetic", "--out", f, "--num-train", 1, "--num-val", 0),
                       "is not a folder")
    _assert_user_error(_run("prepare-data", "synthetic", "--out", tmp_path / "s", "--size", "12xfoo"), "--size")
    out = tmp_path / "s"
    assert _run("prepare-data", "synthetic", "--out", out, "--num-train", 1, "--num-val", 0, "--size", "32x64",
                "--workers", 1).exit_code == 0
    img = next((out / "leftImg8bit").rglob("*.png"))
    before = img.read_bytes()
    res = _run("prepare-data", "synthetic", "--out", out, "--num-train", 1, "--num-val", 0, "--size", "32x64",
               "--seed", 9)
    _assert_user_error(res, "other parameters", "--force")
    assert img.read_bytes() == before
