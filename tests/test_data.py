"""Data layer: class tables, readers on the real samples, transforms, the synthetic generator, previews."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from eseg_cli.data import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABELS,
    TRAINID_TO_LABELID,
    build_dataset,
    build_transforms,
    list_datasets,
)
from eseg_cli.data.classes import cityscapes_id_to_trainid_lut, cityscapes_trainid_to_labelid_lut
from eseg_cli.data.prepare import polygons_to_trainids, prepare_ade20k, prepare_cityscapes
from eseg_cli.data.synthetic import CITY, ensure_default, generate, render_sample, sample_paths
from eseg_cli.errors import EsegError

FRAME = "frankfurt_000000_000294"


# ---------------------------------------------------------------------------------------------- classes
def test_cityscapes_table_and_reverse_mapping():
    assert len(CITYSCAPES_LABELS) == 35
    assert CITYSCAPES_CLASSES[:3] == ["road", "sidewalk", "building"] and CITYSCAPES_CLASSES[-1] == "bicycle"
    assert len(CITYSCAPES_CLASSES) == 19
    lut = cityscapes_id_to_trainid_lut()
    assert lut[7] == 0 and lut[26] == 13 and lut[33] == 18 and lut[0] == 255 and lut[29] == 255
    # trainId -> labelId -> trainId is the identity on the 19 classes
    train = np.arange(19, dtype=np.uint8)
    to_label = cityscapes_trainid_to_labelid_lut()
    assert np.array_equal(lut[to_label[train]], train)
    assert TRAINID_TO_LABELID[13] == 26
    assert to_label[255] == 0


def test_ade20k_classes_and_palette():
    assert len(ADE20K_CLASSES) == 150 == len(ADE20K_PALETTE)
    assert ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[-1] == "flag"
    assert ADE20K_PALETTE[0] == (120, 120, 120)


def test_registry_names_and_unknown():
    assert {"cityscapes", "ade20k", "synthetic", "folder"} <= set(list_datasets())
    with pytest.raises(EsegError, match="unknown dataset 'citiscapes'.*cityscapes"):
        build_dataset("citiscapes", ".", "train")


# ------------------------------------------------------------------------------------- real samples
def test_cityscapes_trainids_match_reference(shared_data, tmp_path):
    root = tmp_path / "cityscapes"
    shutil.copytree(shared_data / "cityscapes", root)
    summary = prepare_cityscapes(root, workers=1)
    assert summary["converted"] == 1 and summary["files"] == 1
    out = root / "gtFine" / "val" / "frankfurt" / f"{FRAME}_gtFine_labelTrainIds.png"
    ours = np.asarray(Image.open(out))
    ref = np.asarray(Image.open(shared_data / "cityscapes-reference" / f"{FRAME}_gtFine_labelTrainIds.png"))
    assert ours.shape == ref.shape
    assert (ours == ref).mean() >= 0.997
    # exactly the official table applied to the labelIds
    ids = np.asarray(Image.open(root / "gtFine" / "val" / "frankfurt" / f"{FRAME}_gtFine_labelIds.png"))
    assert np.array_equal(ours, cityscapes_id_to_trainid_lut()[ids])
    assert {"road", "car", "person", "sky"} <= set(summary["classes_seen"])
    # the dataset reads the trainIds and normalizes the image
    ds = build_dataset("cityscapes", root, "val")
    img, mask = ds[0]
    assert img.dtype == torch.float32 and img.shape == (3, 128, 256)
    assert mask.dtype == torch.int64 and np.array_equal(mask.numpy(), ours)
    assert ds.num_classes == 19 and ds.ignore_index == 255 and len(ds.palette) == 19
    assert ds.files[0][1] == out


def test_cityscapes_reader_converts_labelids_without_prepare(shared_data):
    ds = build_dataset("cityscapes", shared_data / "cityscapes", "val")
    ref = np.asarray(Image.open(shared_data / "cityscapes-reference" / f"{FRAME}_gtFine_labelTrainIds.png"))
    assert (ds[0][1].numpy() == ref).mean() >= 0.997


def test_ade20k_reduce_zero_label(shared_data):
    ds = build_dataset("ade20k", shared_data / "ade20k", "val")
    assert len(ds) == 3 and ds.num_classes == 150 and ds.reduce_zero_label
    for i, (_, ann) in enumerate(ds.files):
        raw = np.asarray(Image.open(ann)).astype(np.int64)
        assert (raw == 0).any()  # "other" is present in all three samples
        mask = ds[i][1].numpy()
        assert np.all(mask[raw == 0] == 255)
        assert np.array_equal(mask[raw > 0], raw[raw > 0] - 1)
        assert mask.max() == 255 and mask[mask != 255].max() < 150


def test_prepare_ade20k_counts(shared_data):
    s = prepare_ade20k(shared_data / "ade20k")
    assert s["splits"] == {"val": {"images": 3}} and s["reduce_zero_label"] and s["other_pixels"] > 0
    assert "wall" in s["classes_seen"]


# ------------------------------------------------------------------------------------------- polygons
def test_polygons_rasterised_in_official_order(tmp_path):
    ann = {"imgHeight": 20, "imgWidth": 30, "objects": [
        {"label": "road", "polygon": [[0, 10], [29, 10], [29, 19], [0, 19]]},
        {"label": "cargroup", "polygon": [[5, 5], [15, 5], [15, 15], [5, 15]]},   # -> car, drawn over road
        {"label": "license plate", "polygon": [[6, 6], [8, 6], [8, 8], [6, 8]]},  # id -1: skipped
        {"label": "sky", "polygon": [[20, 0], [29, 0], [29, 4], [20, 4]], "deleted": 1},
        {"label": "ego vehicle", "polygon": [[0, 18], [29, 18], [29, 19], [0, 19]]},
    ]}
    p = tmp_path / "x_gtFine_polygons.json"
    p.write_text(json.dumps(ann))
    m = polygons_to_trainids(p)
    assert m.shape == (20, 30)
    assert m[12, 25] == 0          # road
    assert m[10, 10] == 13 and m[7, 7] == 13  # car over road, plate skipped
    assert m[2, 25] == 255         # deleted sky stays unlabeled
    assert m[19, 3] == 255         # ego vehicle (trainId 255) drawn last
    assert m[0, 0] == 255


def test_prepare_cityscapes_from_polygons_only(tmp_path):
    root = tmp_path / "cs"
    img = root / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    img.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img)
    poly = root / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_polygons.json"
    poly.parent.mkdir(parents=True)
    poly.write_text(json.dumps({"imgHeight": 20, "imgWidth": 30, "objects": [
        {"label": "sidewalk", "polygon": [[0, 0], [29, 0], [29, 19], [0, 19]]}]}))
    s = prepare_cityscapes(root)
    assert s["from_polygons"] == 1 and s["classes_seen"] == ["sidewalk"]
    out = poly.parent / "aachen_000000_000019_gtFine_labelTrainIds.png"
    assert np.all(np.asarray(Image.open(out)) == 1)


# ----------------------------------------------------------------------------------------- transforms
def test_train_transform_fixed_crop_and_ignore_padding():
    t = build_transforms(True, crop_size=(64, 96), scale_range=(1.0, 1.0), seed=0)
    img = np.full((40, 50, 3), 200, np.uint8)
    mask = np.full((40, 50), 3, np.uint8)
    out = t(image=img, mask=mask)
    assert out["image"].shape == (3, 64, 96) and out["image"].dtype == torch.float32
    m = out["mask"]
    assert m.shape == (64, 96)
    assert set(torch.unique(m).tolist()) == {3, 255}       # padding is ignore
    assert int((m == 3).sum()) == 40 * 50                 # the whole image is kept, none interpolated


def test_train_transform_scales_and_stacks():
    t = build_transforms(True, crop_size=(32, 48), scale_range=(0.5, 2.0), seed=1)
    rng = np.random.default_rng(0)
    outs = [t(image=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), mask=rng.integers(0, 19, (h, w), dtype=np.uint8))
            for h, w in ((30, 40), (64, 128), (100, 60))]
    batch = torch.stack([o["image"] for o in outs])
    assert batch.shape == (3, 3, 32, 48)
    for o in outs:  # nearest interpolation: no new label values appear
        vals = set(torch.unique(o["mask"]).tolist())
        assert vals <= set(range(19)) | {255}


def test_val_transform_normalizes_and_resizes():
    img = np.full((20, 30, 3), 255, np.uint8)
    out = build_transforms(False)(image=img, mask=np.zeros((20, 30), np.uint8))
    assert out["image"].shape == (3, 20, 30)
    assert torch.allclose(out["image"][0], torch.full((20, 30), (1 - 0.485) / 0.229), atol=1e-4)
    out = build_transforms(False, resize=(10, 16))(image=img, mask=np.zeros((20, 30), np.uint8))
    # the label keeps its size: scores are computed on the original labels
    assert out["image"].shape == (3, 10, 16) and out["mask"].shape == (20, 30)


def test_bad_crop_is_an_eseg_error():
    with pytest.raises(EsegError, match="crop_size"):
        build_transforms(True, crop_size=(0, 10), scale_range=(0.5, 2.0))


def test_dataloader_workers_draw_different_augmentations(tmp_path):
    """Forked workers must not replay one albumentations random stream (same augmentations everywhere)."""
    generate(tmp_path, num_train=1, num_val=0, size=(32, 64), seed=0)
    tf = build_transforms(True, crop_size=(24, 24), scale_range=(0.5, 2.0), seed=0)
    ds = build_dataset("synthetic", tmp_path, "train", tf)
    ds.files = ds.files * 4
    torch.manual_seed(0)
    batches = [x for x, _ in torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)]
    assert not torch.equal(batches[0], batches[1])  # worker 0 and worker 1, same image
    torch.manual_seed(0)
    again = [x for x, _ in torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))  # reproducible under a seed


# ------------------------------------------------------------------------------------------ synthetic
def test_synthetic_deterministic_per_seed():
    a_img, a_lbl = render_sample(0, "train", 3, (64, 128))
    b_img, b_lbl = render_sample(0, "train", 3, (64, 128))
    c_img, c_lbl = render_sample(1, "train", 3, (64, 128))
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lbl, b_lbl)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (64, 128, 3) and a_lbl.shape == (64, 128) and a_lbl.max() <= 18


def test_synthetic_generate_same_for_any_worker_count(tmp_path):
    s1 = generate(tmp_path / "a", num_train=3, num_val=1, size=(48, 96), seed=5, workers=1)
    s2 = generate(tmp_path / "b", num_train=3, num_val=1, size=(48, 96), seed=5, workers=2)
    assert s1["class_pixels"] == s2["class_pixels"]
    for split, i in (("train", 0), ("train", 2), ("val", 0)):
        for pa, pb in zip(sample_paths(tmp_path / "a", split, i), sample_paths(tmp_path / "b", split, i), strict=True):
            assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))
    # labelIds beside trainIds, consistent with the official table
    _, lab, ids = sample_paths(tmp_path / "a", "train", 0)
    assert np.array_equal(cityscapes_id_to_trainid_lut()[np.asarray(Image.open(ids))], np.asarray(Image.open(lab)))
    # idempotent: a second run keeps every sample
    assert generate(tmp_path / "a", num_train=3, num_val=1, size=(48, 96), seed=5)["skipped"] == 4


def test_synthetic_all_classes_in_first_images():
    seen = np.zeros(256, bool)
    for i in range(40):
        seen[np.unique(render_sample(0, "train", i, (256, 512))[1])] = True
    assert seen[:19].all(), [CITYSCAPES_CLASSES[c] for c in range(19) if not seen[c]]
    assert not seen[19:].any()


def _colour_key(img):
    q = img.astype(np.int64) // 16
    return q[..., 0] * 256 + q[..., 1] * 16 + q[..., 2]


def test_synthetic_not_solvable_by_colour_alone():
    """The best colour-only classifier (a per-colour majority vote fitted on training scenes) scores a
    low mIoU on held-out scenes: classes must be told apart by geometry, position and texture."""
    votes = np.zeros((16 ** 3, 19), np.int64)
    for i in range(12):
        img, lbl = render_sample(0, "train", i, (96, 192))
        np.add.at(votes, (_colour_key(img).ravel(), lbl.ravel()), 1)
    best = votes.argmax(1)
    inter, union = np.zeros(19), np.zeros(19)
    for i in range(12):
        img, lbl = render_sample(0, "val", i, (96, 192))
        pred = best[_colour_key(img)]
        for c in range(19):
            inter[c] += ((pred == c) & (lbl == c)).sum()
            union[c] += ((pred == c) | (lbl == c)).sum()
    miou = np.mean(inter[union > 0] / union[union > 0])
    assert miou < 0.2, miou  # measured: about 0.07


def test_synthetic_dataset_reads_generated_root(tmp_path):
    generate(tmp_path, num_train=2, num_val=1, size=(64, 128), seed=0)
    tf = build_transforms(True, crop_size=(64, 64), scale_range=(0.5, 2.0), seed=0)
    ds = build_dataset("synthetic", tmp_path, "train", tf)
    img, mask = ds[1]
    assert img.shape == (3, 64, 64) and mask.dtype == torch.int64
    assert ds.classes == CITYSCAPES_CLASSES and len(ds) == 2
    assert ds.files[0][0].parent.name == CITY
    assert len(build_dataset("synthetic", tmp_path, "val")) == 1


@pytest.mark.slow
def test_default_synthetic_set_has_all_classes(tmp_path):
    root = ensure_default(tmp_path)
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["images"] == {"train": 400, "val": 100}
    assert meta["classes_present"] == CITYSCAPES_CLASSES
    assert ensure_default(tmp_path) == root  # cached
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


# --------------------------------------------------------------------------------------------- folder
def test_folder_dataset(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "masks" / "train").mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("background 0 0 0\nleaf 0 200 0\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "train" / "a.jpg")
    m = np.zeros((8, 8), np.uint8)
    m[2:4] = 1
    m[0] = 255
    Image.fromarray(m).save(tmp_path / "masks" / "train" / "a.png")
    ds = build_dataset("folder", tmp_path, "train")
    assert ds.classes == ["background", "leaf"] and ds.palette[1] == (0, 200, 0)
    assert np.array_equal(ds[0][1].numpy(), m)
    m[5, 5] = 7
    Image.fromarray(m).save(tmp_path / "masks" / "train" / "a.png")
    with pytest.raises(EsegError, match=r"a\.png: label value 7 is outside 0\.\.1"):
        ds[0]


# -------------------------------------------------------------------------------------------- preview
def test_preview_grid_writes_png(tmp_path):
    from eseg_cli.data.classes import overlay
    from eseg_cli.data.preview import preview_grid

    generate(tmp_path / "s", num_train=3, num_val=0, size=(64, 128), seed=0)
    tf = build_transforms(True, crop_size=(64, 128), scale_range=(0.5, 2.0), seed=0)
    ds = build_dataset("synthetic", tmp_path / "s", "train", tf)
    res = preview_grid(ds, 2, tmp_path / "p.png", title="t")
    im = Image.open(res["path"])
    assert im.format == "PNG" and im.width > 300 and len(res["indices"]) == 2 and res["classes"]
    img = np.full((2, 2, 3), 100, np.uint8)
    ov = overlay(img, np.array([[0, 255], [10, 10]]), [(128, 64, 128)] * 19, alpha=0.5, ignore_index=255)
    assert tuple(ov[0, 0]) == (114, 82, 114) and tuple(ov[0, 1]) == (35, 35, 35)
    plain = overlay(img, np.array([[0, 255], [10, 10]]), [(128, 64, 128)] * 19, alpha=0.5)
    assert tuple(plain[0, 1]) == (50, 50, 50)  # without an ignore index: 255 blends the ignore colour (black)


# sha256 of (image bytes + label bytes) of two samples, recorded before data/synthetic.py became the
# data/synthetic/ subpackage (numpy 2.4, Pillow 13). Cached default sets are keyed on GENERATOR_VERSION alone, so
# a drawing change must bump it; a numpy or Pillow release that changes these bytes is a reason to check that too.
GOLDEN_SAMPLES = {
    (0, "train", 3, (64, 128)): "561ca2bbcac3dc9c2bf4230ec35cba2f1bcd908012820eaeac28d0a904d35f4e",
    (7, "val", 0, (96, 160)): "28655bf415b674bcfc6ceaea425df0fe8b47e71dc96641ebd8825dbf642664a4",
}


@pytest.mark.skipif(not (np.__version__.startswith("2.") and PIL.__version__.split(".")[0] == "13"),
                    reason="the golden bytes were recorded with numpy 2.x and Pillow 13")
def test_synthetic_samples_are_byte_identical_to_the_recorded_ones():
    for args, digest in GOLDEN_SAMPLES.items():
        img, lbl = render_sample(*args)
        assert hashlib.sha256(img.tobytes() + lbl.tobytes()).hexdigest() == digest, args
