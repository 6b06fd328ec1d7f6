"""Mapillary Vistas v1.2 (65 classes from its config, or mapped to Cityscapes' 19 trainIds), its layout
check, and Cityscapes' train_extra found by prepare-data as unlabelled images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from eseg_cli.cli import app
from eseg_cli.data import build_dataset
from eseg_cli.data.classes import CITYSCAPES_CLASSES, MAPILLARY_TO_CITYSCAPES
from eseg_cli.errors import EsegError

# a v1.2-style config: 66 labels, the last one not evaluated (as in the real config_v1.2.json)
NAMES = sorted(MAPILLARY_TO_CITYSCAPES) + [f"object--other-{i}" for i in range(66 - 1 - len(MAPILLARY_TO_CITYSCAPES))]


def _config():
    labels = [{"name": n, "readable": n.split("--")[-1], "color": [i, 2 * i % 256, 3 * i % 256], "evaluate": True}
              for i, n in enumerate(NAMES)]
    labels.append({"name": "void--unlabeled", "readable": "Unlabeled", "color": [0, 0, 0], "evaluate": False})
    return {"labels": labels}


@pytest.fixture
def vistas(tmp_path):
    root = tmp_path / "mapillary"
    rng = np.random.default_rng(0)
    for sub, n in (("training", 3), ("validation", 2)):
        (root / sub / "images").mkdir(parents=True)
        (root / sub / "v1.2" / "labels").mkdir(parents=True)
        for i in range(n):
            h, w = 40 + 8 * i, 60  # Mapillary's images differ in size
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / sub / "images" / f"{sub}{i}.jpg")
            lab = rng.integers(0, 66, (h, w), dtype=np.uint8)
            Image.fromarray(lab, mode="L").save(root / sub / "v1.2" / "labels" / f"{sub}{i}.png")
    (root / "config_v1.2.json").write_text(json.dumps(_config()))
    return root


def test_65_classes_from_the_config_and_unlabeled_ignored(vistas):
    ds = build_dataset("mapillary", vistas, "train")
    assert ds.num_classes == 65 and ds.classes[0] == NAMES[0].split("--")[-1] and len(ds) == 3
    raw = np.array(Image.open(vistas / "training" / "v1.2" / "labels" / "training0.png"))
    _, mask = ds[0]
    mask = mask.numpy()
    assert (mask[raw == 65] == 255).all()
    np.testing.assert_array_equal(mask[raw < 65], raw[raw < 65])
    assert len(build_dataset("mapillary", vistas, "val")) == 2


def test_mapping_to_cityscapes_trainids(vistas):
    ds = build_dataset("mapillary-cityscapes", vistas, "train")
    assert ds.classes == CITYSCAPES_CLASSES and ds.num_classes == 19
    raw = np.array(Image.open(vistas / "training" / "v1.2" / "labels" / "training1.png"))
    _, mask = ds[1]
    mask = mask.numpy()
    for i, name in enumerate(NAMES + ["void--unlabeled"]):
        sel = raw == i
        if sel.any():
            assert (mask[sel] == MAPILLARY_TO_CITYSCAPES.get(name, 255)).all(), name
    # every Cityscapes class has a Mapillary source
    assert set(MAPILLARY_TO_CITYSCAPES.values()) == set(range(19))
    assert MAPILLARY_TO_CITYSCAPES["construction--barrier--curb"] == CITYSCAPES_CLASSES.index("sidewalk")
    assert MAPILLARY_TO_CITYSCAPES["object--vehicle--on-rails"] == CITYSCAPES_CLASSES.index("train")


def test_the_v12_download_layout_and_errors(vistas, tmp_path):
    # the original v1.2 download: config.json and <split>/labels
    for sub in ("training", "validation"):
        shutil.move(vistas / sub / "v1.2" / "labels", vistas / sub / "labels")
        (vistas / sub / "v1.2").rmdir()
    (vistas / "config_v1.2.json").rename(vistas / "config.json")
    assert len(build_dataset("mapillary", vistas, "train")) == 3
    (vistas / "config.json").write_text("{}")
    with pytest.raises(EsegError, match="not a Mapillary Vistas config"):
        build_dataset("mapillary", vistas, "train")
    (vistas / "config.json").unlink()
    with pytest.raises(EsegError, match="config_v1.2.json"):
        build_dataset("mapillary", vistas, "train")
    (tmp_path / "config.json").write_text(json.dumps(_config()))
    with pytest.raises(EsegError, match="training/images"):
        build_dataset("mapillary", tmp_path, "train")


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_prepare_data_mapillary_checks_the_layout(vistas):
    r = _run("prepare-data", "mapillary", "--root", vistas, "--workers", 1, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["splits"] == {"train": {"images": 3}, "val": {"images": 2}} and s["classes"] == 65 and s["labels"] == 66
    assert 0 < s["cityscapes_mapped_pixels"] < 1
    (vistas / "validation" / "v1.2" / "labels" / "validation1.png").unlink()
    r = _run("prepare-data", "mapillary", "--root", vistas, "--workers", 1)
    assert r.exit_code == 2 and "validation1.jpg: no label" in r.output
    Image.fromarray(np.full((10, 10), 70, np.uint8), mode="L").save(
        vistas / "validation" / "v1.2" / "labels" / "validation1.png")
    r = _run("prepare-data", "mapillary", "--root", vistas, "--workers", 1)
    assert r.exit_code == 2 and "validation1.png" in r.output


def test_prepare_data_cityscapes_finds_train_extra(tmp_path):
    from eseg_cli.data.synthetic import generate

    root = tmp_path / "cs"
    generate(root, num_train=2, num_val=1, size=(32, 64), seed=0)
    extra = root / "leftImg8bit" / "train_extra" / "augsburg"
    extra.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 32)).save(extra / f"augsburg_000000_{i:06d}_leftImg8bit.png")
    r = _run("prepare-data", "cityscapes", "--root", root, "--workers", 1, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["unlabelled"]["train_extra"]["images"] == 3 and "train_extra" not in s["splits"]
    # usable as unlabelled images: the pseudo-labeller's image finder takes the folder
    from eseg_cli.engine.pseudo_label import find_images

    assert len(find_images([root / "leftImg8bit" / "train_extra"])) == 3
