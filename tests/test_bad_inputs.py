"""Bad inputs across every command, as a table: each case must exit with code 2, print no traceback, name
the file or field at fault, and leave every file that existed before unchanged (nothing written half).

Each case is a function ``(tmp_path, base) -> (argv, needle)`` that makes its tiny fixture in ``tmp_path``
and returns the command line and a fragment the error message must contain. ``base`` holds the shared,
read-only fixtures (a tiny synthetic set, a tiny checkpoint). Commands run in-process (CliRunner) with the
working folder set to ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toydata import decompression_bomb as _bomb
from typer.testing import CliRunner

from eseg_cli.cli import app

runner = CliRunner()
TINY = "{width: 0.25, depth: 0.3, channels: 16, repeats: 1}"
HUGE = "100000x100000"

CASES: dict[str, Callable] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    import torch

    from eseg_cli.data import synthetic
    from eseg_cli.engine.checkpoint import save_checkpoint
    from eseg_cli.engine.config import load_config
    from eseg_cli.models import build_model

    root = tmp_path_factory.mktemp("base")
    syn = root / "syn"
    synthetic.generate(syn, num_train=2, num_val=2, size=(32, 64), seed=0)
    torch.manual_seed(0)
    model = build_model("lite-s", num_classes=19, width=0.25, depth=0.3, channels=16, repeats=1)
    cfg = load_config("synthetic", "lite-s", {"data_root": str(syn), "steps": 1, "batch_size": 2, "workers": 0,
                                              "model": {"width": 0.25, "depth": 0.3, "channels": 16, "repeats": 1}})
    ckpt = root / "run" / "checkpoints" / "last.pt"
    state = {"model": model.state_dict(), "model_config": model.config, "config": cfg.to_dict(), "step": 1,
             "data_root": str(syn)}
    save_checkpoint(state, ckpt)
    return {"syn": syn, "ckpt": ckpt, "state": state, "root": root}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path_factory.getbasetemp() / "eseg-cache"
    monkeypatch.setenv("ESEG_CACHE_DIR", str(cache))
    monkeypatch.delenv("ESEG_DEBUG", raising=False)


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def folder_set(root: Path, *, classes: bytes = b"sky\nroad\n", size=(32, 32), val_sizes=None,
               label_value=1, n=2) -> Path:
    """A folder dataset: images/<split>/*.png, masks/<split>/*.png, classes.txt."""
    for split in ("train", "val"):
        for i in range(n):
            h, w = (val_sizes[i] if split == "val" and val_sizes else size)
            img = np.zeros((h, w, 3), np.uint8)
            img[:, : w // 2] = 200
            mask = np.zeros((h, w), np.uint8)
            mask[:, : w // 2] = label_value
            _png(root / "images" / split / f"im{i}.png", img)
            _png(root / "masks" / split / f"im{i}.png", mask)
    (root / "classes.txt").write_bytes(classes)
    return root


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def copy_syn(base, dst: Path) -> Path:
    import shutil

    shutil.copytree(base["syn"], dst)
    return dst


def train(*args) -> list[str]:
    return ["train", "--steps", "1", "--batch-size", "2", "--no-progress", "--device", "cpu", "--set", f"model={TINY}",
            *map(str, args)]


def ade_root(root: Path, *, jpeg_ok=True, ann_value=3) -> Path:
    base = root / "ADEChallengeData2016"
    for sub, name in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        img = np.full((24, 32, 3), 120, np.uint8)
        img[::3] = 10
        (base / "images" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(base / "images" / sub / f"{name}.jpg", quality=90)
        _png(base / "annotations" / sub / f"{name}.png", np.full((24, 32), ann_value, np.uint8))
    return base


# ------------------------------------------------------------------------------------------- train

@case
def train_set_not_yaml(tmp, base):
    return train("--set", "crop_size=[64, 64"), "crop_size"


@case
def train_set_without_equals(tmp, base):
    return train("--set", "steps"), "steps"


@case
def train_set_unknown_key(tmp, base):
    return train("--set", "stepz=3"), "stepz"


@case
def train_set_num_classes_zero(tmp, base):
    return train("--set", "num_classes=0"), "num_classes"


@case
def train_set_num_classes_disagrees_with_dataset(tmp, base):
    return train("--data-root", base["syn"], "--set", "num_classes=5"), "num_classes"


@case
def train_set_batch_size_zero(tmp, base):
    return train("--set", "val_batch_size=0"), "val_batch_size"


@case
def train_set_negative_lr(tmp, base):
    return train("--set", "lr=-1"), "lr"


@case
def train_set_bad_loss(tmp, base):
    return train("--set", "loss=dice"), "loss"


@case
def train_set_wrong_type(tmp, base):
    return train("--set", "lr=high"), "lr"


@case
def train_set_crop_zero(tmp, base):
    return train("--set", "crop_size=[0, 64]"), "crop_size"


@case
def train_set_crop_huge(tmp, base):
    return train("--set", "crop_size=[100000, 100000]"), "crop_size"


@case
def train_set_val_resize_huge(tmp, base):
    return train("--set", "val_resize=[100000, 100000]"), "val_resize"


@case
def train_set_ema_out_of_range(tmp, base):
    return train("--set", "ema_decay=2"), "ema_decay"


@case
def train_set_unknown_model_option(tmp, base):
    return ["train", "--steps", "1", "--set", "model={widht: 0.25}"], "widht"


@case
def train_set_model_option_wrong_type(tmp, base):
    return ["train", "--steps", "1", "--set", "model={channels: many}"], "channels"


@case
def train_set_ohem_thresh_above_one(tmp, base):
    return train("--set", "ohem_thresh=5"), "ohem_thresh"


@case
def train_set_momentum_out_of_range(tmp, base):
    return train("--set", "momentum=1.5"), "momentum"


@case
def train_crop_huge(tmp, base):
    return train("--crop", HUGE), "--crop"


@case
def train_crop_garbage(tmp, base):
    return train("--crop", "big"), "--crop"


@case
def train_unknown_dataset(tmp, base):
    return train("--dataset", "cityscape"), "cityscape"


@case
def train_recipe_missing(tmp, base):
    return train("--recipe", tmp / "nope.yaml"), "nope.yaml"


@case
def train_recipe_not_utf8(tmp, base):
    p = tmp / "latin1.yaml"
    p.write_bytes("steps: 5\n# Stra\xdfe\n".encode("latin-1"))
    return train("--recipe", p), "latin1.yaml"


@case
def train_recipe_not_yaml(tmp, base):
    p = tmp / "broken.yaml"
    p.write_text("steps: [1, 2\nlr: 0.1\n")
    return train("--recipe", p), "broken.yaml"


@case
def train_recipe_is_a_list(tmp, base):
    p = tmp / "list.yaml"
    p.write_text("- steps\n- lr\n")
    return train("--recipe", p), "list.yaml"


@case
def train_recipe_is_a_folder(tmp, base):
    (tmp / "recipe_dir").mkdir()
    return train("--recipe", tmp / "recipe_dir"), "recipe_dir is a folder"


@case
def train_recipe_unknown_model_option(tmp, base):
    p = tmp / "r.yaml"
    p.write_text("dataset: synthetic\nmodel: {width: 0.25, colour: red}\n")
    return ["train", "--recipe", str(p), "--steps", "1"], "colour"


@case
def train_recipe_bad_scales_block(tmp, base):
    p = tmp / "scales.yaml"
    p.write_text("dataset: synthetic\nscales: [1, 2]\n")
    return train("--recipe", p), "scales"


@case
def train_folder_root_missing(tmp, base):
    return train("--dataset", "folder", "--data-root", tmp / "nothing"), "nothing"


@case
def train_folder_classes_not_utf8(tmp, base):
    root = folder_set(tmp / "ds", classes="sky\nStra\xdfe\n".encode("latin-1"))
    return train("--dataset", "folder", "--data-root", root), "classes.txt"


@case
def train_folder_label_value_too_large(tmp, base):
    root = folder_set(tmp / "ds")
    _png(root / "masks" / "train" / "im1.png", np.full((32, 32), 7, np.uint8))
    return train("--dataset", "folder", "--data-root", root), "im1.png"


@case
def train_folder_truncated_image(tmp, base):
    root = folder_set(tmp / "ds")
    truncate(root / "images" / "train" / "im0.png")
    return train("--dataset", "folder", "--data-root", root), "im0.png"


@case
def train_folder_label_size_mismatch(tmp, base):
    root = folder_set(tmp / "ds")
    _png(root / "masks" / "val" / "im1.png", np.zeros((16, 32), np.uint8))
    return train("--dataset", "folder", "--data-root", root), "im1.png"


@case
def train_folder_colour_label(tmp, base):
    root = folder_set(tmp / "ds")
    _png(root / "masks" / "train" / "im0.png", np.zeros((32, 32, 3), np.uint8))
    return train("--dataset", "folder", "--data-root", root), "im0.png"


@case
def train_folder_image_without_mask(tmp, base):
    root = folder_set(tmp / "ds")
    (root / "masks" / "train" / "im1.png").unlink()
    return train("--dataset", "folder", "--data-root", root), "im1"


@case
def train_variable_size_val_with_batches(tmp, base):
    root = folder_set(tmp / "ds", val_sizes=[(32, 32), (40, 48)])
    return train("--dataset", "folder", "--data-root", root, "--no-check", "--set", "val_batch_size=2"), \
        "val_batch_size"


@case
def train_synthetic_labelids_not_converted(tmp, base):
    root = copy_syn(base, tmp / "syn")
    lab = sorted(root.rglob("*_labelTrainIds.png"))[0]
    bad = np.array(Image.open(lab))
    bad[0, 0] = 33  # a labelId where trainIds are expected
    _png(lab, bad)
    return train("--data-root", root), lab.name


@case
def train_worker_error_is_reduced_to_its_cause(tmp, base):
    # no up-front check: the bad label is met inside a DataLoader worker process
    root = folder_set(tmp / "ds")
    _png(root / "masks" / "train" / "im0.png", np.full((32, 32), 9, np.uint8))
    _png(root / "masks" / "train" / "im1.png", np.full((32, 32), 9, np.uint8))
    return train("--dataset", "folder", "--data-root", root, "--no-check", "--workers", "1"), "masks/train/im"


@case
def train_resume_without_checkpoint(tmp, base):
    (tmp / "run").mkdir()
    return ["train", "--resume", str(tmp / "run")], "last.pt"


@case
def train_resume_with_other_flags(tmp, base):
    return ["train", "--resume", str(base["ckpt"].parent.parent), "--lr", "0.1"], "--lr"


@case
def train_resume_config_disagrees_with_weights(tmp, base):
    import torch

    from eseg_cli.engine.checkpoint import save_checkpoint

    state = dict(base["state"])
    cfg = dict(state["config"])
    cfg["model"] = {"width": 0.25, "depth": 0.3, "channels": 24, "repeats": 1}  # weights have 16 channels
    state.update(config=cfg, optimizer={}, scheduler={}, rng={"torch": torch.get_rng_state()})
    save_checkpoint(state, tmp / "run" / "checkpoints" / "last.pt")
    return ["train", "--resume", str(tmp / "run"), "--no-progress"], "last.pt"


@case
def train_run_dir_is_a_file(tmp, base):
    (tmp / "taken").write_text("not a folder")
    return train("--data-root", base["syn"], "--run-dir", tmp / "taken"), "taken"


@case
def train_run_dir_exists_without_yes(tmp, base):
    return train("--data-root", base["syn"], "--run-dir", base["ckpt"].parent.parent), "--yes"


@case
def train_fp16_on_cpu(tmp, base):
    return train("--data-root", base["syn"], "--amp", "fp16", "--no-check"), "fp16"


@case
def train_pretrained_missing(tmp, base):
    return train("--data-root", base["syn"], "--pretrained", tmp / "weights.pth", "--no-check"), "weights.pth"


@case
def train_pretrained_not_weights(tmp, base):
    (tmp / "weights.pth").write_text("hello")
    return train("--data-root", base["syn"], "--pretrained", tmp / "weights.pth", "--no-check"), "weights.pth"


@case
def train_bad_device(tmp, base):
    return ["train", "--steps", "1", "--device", "gpu9"], "gpu9"


# ------------------------------------------------------------------------------------------- eval

def ev(*args) -> list[str]:
    return ["eval", "--device", "cpu", "--workers", "0", *map(str, args)]


@case
def eval_checkpoint_missing(tmp, base):
    return ev("--checkpoint", tmp / "missing.pt"), "missing.pt"


@case
def eval_checkpoint_garbage(tmp, base):
    (tmp / "junk.pt").write_bytes(b"\x00not a checkpoint")
    return ev("--checkpoint", tmp / "junk.pt"), "junk.pt"


@case
def eval_checkpoint_truncated(tmp, base):
    p = tmp / "cut.pt"
    p.write_bytes(base["ckpt"].read_bytes()[:3000])
    return ev("--checkpoint", p), "cut.pt"


@case
def eval_checkpoint_config_disagrees_with_weights(tmp, base):
    from eseg_cli.engine.checkpoint import save_checkpoint

    state = dict(base["state"])
    state["model_config"] = {**state["model_config"], "channels": 24}
    save_checkpoint(state, tmp / "mixed.pt")
    return ev("--checkpoint", tmp / "mixed.pt", "--out", tmp / "o"), "mixed.pt"


@case
def eval_checkpoint_and_predictions(tmp, base):
    return ev("--checkpoint", base["ckpt"], "--predictions", tmp), "--predictions"


@case
def eval_neither_checkpoint_nor_predictions(tmp, base):
    return ev(), "--checkpoint"


@case
def eval_predictions_without_dataset(tmp, base):
    return ev("--predictions", tmp), "--dataset"


@case
def eval_predictions_folder_missing(tmp, base):
    return ev("--predictions", tmp / "preds", "--dataset", "synthetic", "--data-root", base["syn"]), "preds"


@case
def eval_predictions_folder_empty(tmp, base):
    (tmp / "preds").mkdir()
    return ev("--predictions", tmp / "preds", "--dataset", "synthetic", "--data-root", base["syn"]), "preds"


def _pred_dir(tmp, base, make=None):
    d = tmp / "preds"
    for lab in sorted((base["syn"] / "gtFine" / "val").rglob("*_labelTrainIds.png")):
        stem = lab.name.split("_gtFine_")[0] + "_leftImg8bit"
        _png(d / f"{stem}.png", np.array(Image.open(lab)))
    return d, sorted(d.glob("*.png"))


@case
def eval_prediction_png_corrupt(tmp, base):
    d, files = _pred_dir(tmp, base)
    truncate(files[0], 0.3)
    return ev("--predictions", d, "--dataset", "synthetic", "--data-root", base["syn"], "--ids", "trainid"), \
        files[0].name


@case
def eval_prediction_png_not_an_image(tmp, base):
    d, files = _pred_dir(tmp, base)
    files[1].write_text("not a png")
    return ev("--predictions", d, "--dataset", "synthetic", "--data-root", base["syn"]), files[1].name


@case
def eval_prediction_colour_png(tmp, base):
    d, files = _pred_dir(tmp, base)
    _png(files[0], np.zeros((32, 64, 3), np.uint8))
    return ev("--predictions", d, "--dataset", "synthetic", "--data-root", base["syn"], "--ids", "trainid"), \
        files[0].name


@case
def eval_prediction_wrong_size(tmp, base):
    d, files = _pred_dir(tmp, base)
    _png(files[0], np.zeros((16, 64), np.uint8))
    return ev("--predictions", d, "--dataset", "synthetic", "--data-root", base["syn"], "--ids", "trainid"), \
        files[0].name


@case
def eval_prediction_missing_for_an_image(tmp, base):
    d, files = _pred_dir(tmp, base)
    files[0].unlink()
    return ev("--predictions", d, "--dataset", "synthetic", "--data-root", base["syn"]), "preds"


@case
def eval_bad_ids(tmp, base):
    return ev("--predictions", tmp, "--dataset", "synthetic", "--ids", "both"), "--ids"


@case
def eval_bad_scales(tmp, base):
    return ev("--checkpoint", base["ckpt"], "--scales", "1,big"), "--scales"


@case
def eval_crop_huge(tmp, base):
    return ev("--checkpoint", base["ckpt"], "--mode", "slide", "--crop", HUGE, "--out", tmp), "--crop"


@case
def eval_stride_garbage(tmp, base):
    return ev("--checkpoint", base["ckpt"], "--mode", "slide", "--crop", "16x16", "--stride", "x",
              "--out", tmp), "--stride"


@case
def eval_bad_mode(tmp, base):
    return ev("--checkpoint", base["ckpt"], "--mode", "sliding", "--out", tmp), "sliding"


@case
def eval_bad_amp(tmp, base):
    return ev("--checkpoint", base["ckpt"], "--amp", "fp8"), "--amp"


@case
def eval_out_is_a_file(tmp, base):
    (tmp / "out").write_text("a file")
    return ev("--checkpoint", base["ckpt"], "--out", tmp / "out"), str(tmp / "out")


@case
def eval_save_predictions_is_a_file(tmp, base):
    (tmp / "preds").write_text("a file")
    return ev("--checkpoint", base["ckpt"], "--out", tmp / "o", "--save-predictions", tmp / "preds"), \
        str(tmp / "preds")


@case
def eval_results_exist_without_yes(tmp, base):
    (tmp / "o").mkdir()
    (tmp / "o" / "eval_whole.json").write_text("{}")
    return ev("--checkpoint", base["ckpt"], "--out", tmp / "o"), "eval_whole.json"


@case
def eval_variable_size_images_in_batches(tmp, base):
    root = tmp / "cs"
    copy_syn(base, root)
    img = sorted((root / "leftImg8bit" / "val").rglob("*.png"))[1]
    lab = sorted((root / "gtFine" / "val").rglob("*_labelTrainIds.png"))[1]
    _png(img, np.zeros((40, 64, 3), np.uint8))
    _png(lab, np.zeros((40, 64), np.uint8))
    return ev("--checkpoint", base["ckpt"], "--data-root", root, "--batch-size", "2", "--out", tmp / "o"), img.name


@case
def eval_dataset_classes_differ(tmp, base):
    root = folder_set(tmp / "ds")
    return ev("--checkpoint", base["ckpt"], "--dataset", "folder", "--data-root", root, "--out", tmp / "o"), \
        "classes"


# ------------------------------------------------------------------------------------------- prepare-data

def _city(tmp, base) -> Path:
    """A Cityscapes-layout root as downloaded: labelIds (and images) only, no trainIds yet."""
    root = copy_syn(base, tmp / "cs")
    for p in root.rglob("*_labelTrainIds.png"):
        p.unlink()
    return root


@case
def prepare_cityscapes_root_missing(tmp, base):
    return ["prepare-data", "cityscapes", "--root", str(tmp / "cs")], "cs"


@case
def prepare_cityscapes_no_gtfine(tmp, base):
    (tmp / "cs" / "leftImg8bit" / "train").mkdir(parents=True)
    return ["prepare-data", "cityscapes", "--root", str(tmp / "cs")], "gtFine"


@case
def prepare_cityscapes_polygons_not_json(tmp, base):
    root = _city(tmp, base)
    ids = sorted(root.rglob("*_gtFine_labelIds.png"))[0]
    poly = ids.with_name(ids.name.replace("labelIds.png", "polygons.json"))
    ids.unlink()
    poly.write_text("{not json")
    return ["prepare-data", "cityscapes", "--root", str(root), "--workers", "1"], poly.name


@case
def prepare_cityscapes_polygons_malformed_objects(tmp, base):
    root = _city(tmp, base)
    ids = sorted(root.rglob("*_gtFine_labelIds.png"))[0]
    poly = ids.with_name(ids.name.replace("labelIds.png", "polygons.json"))
    ids.unlink()
    bad_point = {"label": "road", "polygon": [[1, 2, 3]]}
    poly.write_text(json.dumps({"imgHeight": 32, "imgWidth": 64, "objects": [bad_point]}))
    return ["prepare-data", "cityscapes", "--root", str(root), "--workers", "1"], poly.name


@case
def prepare_cityscapes_polygons_object_not_a_dict(tmp, base):
    root = _city(tmp, base)
    ids = sorted(root.rglob("*_gtFine_labelIds.png"))[0]
    poly = ids.with_name(ids.name.replace("labelIds.png", "polygons.json"))
    ids.unlink()
    poly.write_text(json.dumps({"imgHeight": 32, "imgWidth": 64, "objects": ["road"]}))
    return ["prepare-data", "cityscapes", "--root", str(root), "--workers", "1"], poly.name


@case
def prepare_cityscapes_polygons_huge_size(tmp, base):
    root = _city(tmp, base)
    ids = sorted(root.rglob("*_gtFine_labelIds.png"))[0]
    poly = ids.with_name(ids.name.replace("labelIds.png", "polygons.json"))
    ids.unlink()
    poly.write_text(json.dumps({"imgHeight": 100000, "imgWidth": 100000, "objects": []}))
    return ["prepare-data", "cityscapes", "--root", str(root), "--workers", "1"], poly.name


@case
def prepare_cityscapes_labelids_bad_values(tmp, base):
    root = _city(tmp, base)
    ids = sorted(root.rglob("*_gtFine_labelIds.png"))[0]
    arr = np.array(Image.open(ids))
    arr[0, 0] = 200
    _png(ids, arr)
    return ["prepare-data", "cityscapes", "--root", str(root), "--workers", "1"], ids.name


@case
def prepare_cityscapes_truncated_label(tmp, base):
    root = _city(tmp, base)
    ids = truncate(sorted(root.rglob("*_gtFine_labelIds.png"))[1])
    return ["prepare-data", "cityscapes", "--root", str(root), "--workers", "1"], ids.name


@case
def prepare_cityscapes_truncated_image(tmp, base):
    root = _city(tmp, base)
    img = truncate(sorted(root.rglob("*_leftImg8bit.png"))[0], 0.6)
    return ["prepare-data", "cityscapes", "--root", str(root), "--workers", "1"], img.name


@case
def prepare_ade20k_truncated_jpeg(tmp, base):
    root = ade_root(tmp / "ade")
    jpg = truncate(root / "images" / "training" / "ADE_train_00000001.jpg", 0.6)
    return ["prepare-data", "ade20k", "--root", str(tmp / "ade"), "--workers", "1"], jpg.name


@case
def prepare_ade20k_annotation_value(tmp, base):
    ade_root(tmp / "ade", ann_value=200)
    return ["prepare-data", "ade20k", "--root", str(tmp / "ade"), "--workers", "1"], "ADE_train_00000001.png"


@case
def prepare_ade20k_missing_annotation(tmp, base):
    root = ade_root(tmp / "ade")
    (root / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    return ["prepare-data", "ade20k", "--root", str(tmp / "ade")], "ADE_val_00000001"


@case
def prepare_ade20k_root_missing(tmp, base):
    return ["prepare-data", "ade20k", "--root", str(tmp / "ade")], "ade"


@case
def prepare_synthetic_into_real_dataset(tmp, base):
    root = tmp / "cityscapes"
    _png(root / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png",
         np.zeros((32, 64, 3), np.uint8))
    _png(root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png",
         np.zeros((32, 64), np.uint8))
    return ["prepare-data", "synthetic", "--out", str(root), "--num-train", "1", "--num-val", "0",
            "--size", "32x64", "--workers", "1"], "aachen"


@case
def prepare_synthetic_size_huge(tmp, base):
    return ["prepare-data", "synthetic", "--out", str(tmp / "s"), "--size", HUGE], "size"


@case
def prepare_synthetic_size_tiny(tmp, base):
    return ["prepare-data", "synthetic", "--out", str(tmp / "s"), "--size", "8x8"], "--size"


@case
def prepare_synthetic_out_is_a_file(tmp, base):
    (tmp / "s").write_text("file")
    return ["prepare-data", "synthetic", "--out", str(tmp / "s"), "--size", "32x32", "--num-train", "1"], \
        str(tmp / "s")


@case
def prepare_synthetic_no_images(tmp, base):
    return ["prepare-data", "synthetic", "--out", str(tmp / "s"), "--num-train", "0", "--num-val", "0"], \
        "--num-train"


@case
def prepare_synthetic_other_parameters(tmp, base):
    root = copy_syn(base, tmp / "syn")
    return ["prepare-data", "synthetic", "--out", str(root), "--size", "32x32", "--num-train", "1",
            "--workers", "1"], "synthetic.json"


# ------------------------------------------------------------------------------------------- browse

@case
def browse_unknown_dataset(tmp, base):
    return ["browse", "citiscapes", "--root", str(tmp)], "citiscapes"


@case
def browse_folder_without_root(tmp, base):
    return ["browse", "folder"], "--root"


@case
def browse_crop_huge(tmp, base):
    return ["browse", "synthetic", "--root", str(base["syn"]), "--crop", HUGE, "--out", str(tmp / "p.png")], \
        "--crop"


@case
def browse_out_exists_without_yes(tmp, base):
    (tmp / "p.png").write_bytes(b"old preview")
    return ["browse", "synthetic", "--root", str(base["syn"]), "--out", str(tmp / "p.png")], "p.png"


@case
def browse_folder_classes_not_utf8(tmp, base):
    root = folder_set(tmp / "ds", classes=b"\xff\xfe sky\n")
    return ["browse", "folder", "--root", str(root), "--out", str(tmp / "p.png")], "classes.txt"


@case
def browse_out_inside_a_file(tmp, base):
    (tmp / "f").write_text("a file")
    return ["browse", "synthetic", "--root", str(base["syn"]), "--out", str(tmp / "f" / "p.png"), "-n", "1"], \
        str(tmp / "f")


@case
def browse_out_is_a_folder(tmp, base):
    (tmp / "p.png").mkdir()
    return ["browse", "synthetic", "--root", str(base["syn"]), "--out", str(tmp / "p.png"), "--yes", "-n", "1"], \
        "p.png"


# ------------------------------------------------------------------------------------------- profile / ablate

@case
def profile_resolution_huge(tmp, base):
    return ["profile", "--scale", "lite-s", "--resolution", HUGE], "--resolution"


@case
def profile_resolution_garbage(tmp, base):
    return ["profile", "--scale", "lite-s", "--resolution", "0x512"], "--resolution"


@case
def profile_unknown_scale(tmp, base):
    return ["profile", "--scale", "xxl", "--no-latency"], "xxl"


@case
def ablate_resolution_huge(tmp, base):
    return ["ablate", "levels", "--resolution", HUGE, "--out", str(tmp / "ab")], "--resolution"


@case
def ablate_set_not_yaml(tmp, base):
    return ["ablate", "levels", "--set", "crop_size=[1,", "--out", str(tmp / "ab")], "crop_size"


# ------------------------------------------------------------------------------------------- report / plot

@case
def report_results_not_a_results_file(tmp, base):
    p = tmp / "notes.json"
    p.write_text(json.dumps({"hello": "world"}))
    return ["report", "--results", str(p), "--no-measure", "--no-figures", "--out", str(tmp / "rep")], "notes.json"


@case
def report_results_binary_file(tmp, base):
    p = tmp / "blob.json"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    return ["report", "--results", str(p), "--no-measure", "--no-figures", "--out", str(tmp / "rep")], "blob.json"


@case
def report_results_missing(tmp, base):
    return ["report", "--results", str(tmp / "none"), "--no-measure", "--no-figures", "--out", str(tmp / "rep")], \
        str(tmp / "none")


@case
def report_results_empty_folder(tmp, base):
    (tmp / "empty").mkdir()
    return ["report", "--results", str(tmp / "empty"), "--no-measure", "--no-figures", "--out", str(tmp / "rep")], \
        "empty"


@case
def report_out_exists_without_yes(tmp, base):
    (tmp / "rep").mkdir()
    (tmp / "rep" / "tables.md").write_text("old")
    return ["report", "--no-measure", "--no-figures", "--out", str(tmp / "rep")], "tables.md"


@case
def report_out_is_a_file(tmp, base):
    (tmp / "rep").write_text("a file")
    return ["report", "--no-measure", "--no-figures", "--out", str(tmp / "rep"), "--yes"], str(tmp / "rep")


@case
def plot_out_is_a_file(tmp, base):
    (tmp / "figs").write_text("a file")
    return ["plot", "--no-measure", "--only", "figure1", "--out", str(tmp / "figs"), "--yes"], str(tmp / "figs")


@case
def ablate_out_is_a_file(tmp, base):
    (tmp / "ab").write_text("a file")
    return ["ablate", "levels", "--cell", "p2-p9", "--resolution", "64x64", "--out", str(tmp / "ab")], str(tmp / "ab")


@case
def ablate_unknown_cell(tmp, base):
    return ["ablate", "levels", "--cell", "p1-p99", "--out", str(tmp / "ab")], "p1-p99"


@case
def plot_fps_resolution_huge(tmp, base):
    return ["plot", "--measure-fps", "--fps-resolution", HUGE, "--out", str(tmp / "f")], "--fps-resolution"


# ------------------------------------------------------------------------------------------- pseudo-label

def pl(base, *args) -> list[str]:
    return ["pseudo-label", "--checkpoint", str(base["ckpt"]), "--device", "cpu", "--no-progress", *map(str, args)]


def _images(tmp, n=2) -> Path:
    d = tmp / "frames"
    for i in range(n):
        _png(d / f"f{i}.png", np.full((32, 64, 3), 60 * i, np.uint8))
    return d


@case
def pseudo_label_checkpoint_missing(tmp, base):
    return ["pseudo-label", "-c", str(tmp / "teacher.pt"), "-i", str(_images(tmp)), "-o", str(tmp / "pl")], \
        "teacher.pt"


@case
def pseudo_label_pattern_matches_nothing(tmp, base):
    return pl(base, "-i", str(tmp / "nothing*.jpg"), "-o", tmp / "pl"), "nothing*.jpg"


@case
def pseudo_label_input_not_an_image(tmp, base):
    (tmp / "notes.txt").write_text("hello")
    return pl(base, "-i", tmp / "notes.txt", "-o", tmp / "pl"), "notes.txt"


@case
def pseudo_label_corrupt_image(tmp, base):
    d = _images(tmp)
    truncate(d / "f1.png", 0.4)
    return pl(base, "-i", d, "-o", tmp / "pl"), "f1.png"


@case
def pseudo_label_out_is_a_file(tmp, base):
    (tmp / "pl").write_text("a file")
    return pl(base, "-i", _images(tmp), "-o", tmp / "pl"), str(tmp / "pl")


@case
def pseudo_label_out_not_empty(tmp, base):
    (tmp / "pl").mkdir()
    (tmp / "pl" / "mine.txt").write_text("keep me")
    return pl(base, "-i", _images(tmp), "-o", tmp / "pl"), str(tmp / "pl")


@case
def pseudo_label_bad_mode(tmp, base):
    return pl(base, "-i", _images(tmp), "-o", tmp / "pl", "--mode", "tiles"), "tiles"


@case
def pseudo_label_crop_huge(tmp, base):
    return pl(base, "-i", _images(tmp), "-o", tmp / "pl", "--mode", "slide", "--crop", HUGE), "--crop"


# ------------------------------------------------------------------------------------------- weights / extra data

@case
def train_init_from_missing(tmp, base):
    return train("--data-root", base["syn"], "--init-from", tmp / "old_run"), "old_run"


@case
def train_init_from_not_a_checkpoint(tmp, base):
    (tmp / "old.pt").write_bytes(b"garbage")
    return train("--data-root", base["syn"], "--init-from", tmp / "old.pt"), "old.pt"


@case
def train_extra_data_missing(tmp, base):
    return train("--data-root", base["syn"], "--extra-data", tmp / "pl"), "pl"


@case
def prepare_mapillary_root_missing(tmp, base):
    return ["prepare-data", "mapillary", "--root", str(tmp / "vistas")], "vistas"


# ------------------------------------------------------------------------------------------- issue 20: the edges
# non-finite numbers (every float option and config value), outputs that would clash or land among the inputs,
# inputs that cannot be read as they are, resumable work whose state changed, user problems once taken for bugs

@case
def train_lr_nan(tmp, base):
    return train("--data-root", base["syn"], "--lr", "nan"), "--lr"


@case
def train_lr_inf(tmp, base):
    return train("--data-root", base["syn"], "--lr", "inf"), "--lr"


@case
def train_clip_grad_nan(tmp, base):
    return train("--data-root", base["syn"], "--clip-grad", "nan"), "--clip-grad"


@case
def train_weight_decay_nan(tmp, base):
    return train("--data-root", base["syn"], "--weight-decay", "nan"), "--weight-decay"


@case
def train_ema_nan(tmp, base):
    return train("--data-root", base["syn"], "--ema", "nan"), "--ema"


@case
def train_encoder_lr_mult_inf(tmp, base):
    return train("--data-root", base["syn"], "--encoder-lr-mult", "inf"), "--encoder-lr-mult"


@case
def train_extra_ratio_nan(tmp, base):
    return train("--data-root", base["syn"], "--extra-ratio", "nan"), "--extra-ratio"


@case
def train_set_ohem_thresh_nan(tmp, base):
    return train("--data-root", base["syn"], "--set", "ohem_thresh=.nan"), "ohem_thresh"


@case
def train_set_lr_inf(tmp, base):
    return train("--data-root", base["syn"], "--set", "lr=.inf"), "lr"


@case
def train_set_scale_range_inf(tmp, base):
    return train("--data-root", base["syn"], "--set", "scale_range=[0.5, .inf]"), "scale_range"


@case
def train_set_model_width_nan(tmp, base):
    return train("--data-root", base["syn"], "--set", "model={width: .nan, channels: 16}"), "width"


@case
def train_recipe_warmup_factor_nan(tmp, base):
    p = tmp / "nan.yaml"
    p.write_text("dataset: synthetic\nwarmup_factor: .nan\n")
    return train("--recipe", p), "warmup_factor"


@case
def train_extra_data_classes_in_another_order(tmp, base):
    from eseg_cli.data.datasets import dataset_class

    names = list(dataset_class("synthetic").classes)
    root = folder_set(tmp / "pl", classes=("\n".join(reversed(names)) + "\n").encode())
    return train("--data-root", base["syn"], "--extra-data", root, "--no-check"), "another order"


def _resumable(tmp, base, edit) -> Path:
    import torch

    from eseg_cli.engine.checkpoint import save_checkpoint

    state = dict(base["state"], optimizer={}, scheduler={}, rng={"torch": torch.get_rng_state()})
    run = tmp / "run"
    save_checkpoint(state, run / "checkpoints" / "last.pt")
    import yaml

    (run / "config.yaml").write_text(edit(yaml.safe_dump(state["config"], sort_keys=False)))
    return run


@case
def train_resume_config_edited(tmp, base):
    run = _resumable(tmp, base, lambda text: text.replace("ohem_thresh: 0.7", "ohem_thresh: 0.3"))
    return ["train", "--resume", str(run), "--no-progress"], "'ohem_thresh' 0.7 in the checkpoint, 0.3 in config.yaml"


@case
def train_resume_config_damaged(tmp, base):
    run = _resumable(tmp, base, lambda text: text + "lr: [0.1\n")
    return ["train", "--resume", str(run), "--no-progress"], "config.yaml is damaged"


@case
def train_folder_decompression_bomb(tmp, base):
    root = folder_set(tmp / "ds")
    _bomb(root / "images" / "train" / "im0.png")
    return train("--dataset", "folder", "--data-root", root), "im0.png"


@case
def eval_scales_nan(tmp, base):
    return ev("--checkpoint", base["ckpt"], "--mode", "msflip", "--scales", "1,nan", "--out", tmp), "--scales"


@case
def eval_scales_inf(tmp, base):
    return ev("--checkpoint", base["ckpt"], "--mode", "msflip", "--scales", "1,inf", "--out", tmp), "--scales"


@case
def eval_scales_only_commas(tmp, base):
    return ev("--checkpoint", base["ckpt"], "--mode", "msflip", "--scales", ",", "--out", tmp), "--scales"


@case
def eval_stride_larger_than_crop(tmp, base):
    return ev("--checkpoint", base["ckpt"], "--mode", "slide", "--crop", "16x16", "--stride", "32x24",
              "--out", tmp / "o"), "--stride"


@case
def eval_msflip_scale_past_the_size_cap(tmp, base):
    return ev("--checkpoint", base["ckpt"], "--mode", "msflip", "--scales", "1,300", "--out", tmp / "o"), "--scales"


@case
def pseudo_label_scales_only_commas(tmp, base):
    return pl(base, "-i", _images(tmp), "-o", tmp / "pl", "--mode", "msflip", "--scales", ","), "--scales"


@case
def pseudo_label_scales_nan(tmp, base):
    return pl(base, "-i", _images(tmp), "-o", tmp / "pl", "--mode", "msflip", "--scales", "nan"), "--scales"


@case
def pseudo_label_threshold_nan(tmp, base):
    return pl(base, "-i", _images(tmp), "-o", tmp / "pl", "--threshold", "nan"), "--threshold"


@case
def pseudo_label_stride_larger_than_crop(tmp, base):
    return pl(base, "-i", _images(tmp), "-o", tmp / "pl", "--mode", "slide", "--crop", "16x16", "--stride",
              "16x40"), "--stride"


@case
def pseudo_label_split_escapes_the_output(tmp, base):
    return pl(base, "-i", _images(tmp), "-o", tmp / "pl", "--split", "../../x"), "--split"


@case
def pseudo_label_split_is_a_path(tmp, base):
    return pl(base, "-i", _images(tmp), "-o", tmp / "pl", "--split", str(tmp / "elsewhere")), "--split"


@case
def pseudo_label_out_is_the_input_folder(tmp, base):
    return pl(base, "-i", _images(tmp), "-o", tmp / "frames"), "--out"


@case
def pseudo_label_out_inside_the_input_folder(tmp, base):
    return pl(base, "-i", _images(tmp), "-o", tmp / "frames" / "pl"), "--out"


@case
def pseudo_label_fp16_on_cpu_writes_nothing(tmp, base):
    return pl(base, "-i", _images(tmp), "-o", tmp / "pl", "--amp", "fp16"), "fp16"


@case
def pseudo_label_decompression_bomb(tmp, base):
    d = _images(tmp)
    _bomb(d / "bomb.png")
    return pl(base, "-i", d, "-o", tmp / "pl"), "bomb.png"


@case
def pseudo_label_names_clash_by_case(tmp, base):
    d = _images(tmp)
    _png(tmp / "more" / "F0.jpg", np.zeros((32, 64, 3), np.uint8))  # F0 and f0: one mask name on macOS, Windows
    return pl(base, "-i", d, "-i", tmp / "more", "-o", tmp / "pl"), "F0"


def _labelled(tmp, base) -> Path:
    from eseg_cli.engine.pseudo_label import pseudo_label

    pseudo_label(base["ckpt"], [_images(tmp)], tmp / "pl", device="cpu")
    return tmp / "pl"


@case
def pseudo_label_stats_damaged_before_the_last_line(tmp, base):
    stats = _labelled(tmp, base) / "pseudo_label_stats.jsonl"
    stats.write_text("{cut\n" + stats.read_text())
    return pl(base, "-i", tmp / "frames", "-o", tmp / "pl"), "pseudo_label_stats.jsonl"


@case
def pseudo_label_teacher_retrained(tmp, base):
    import shutil

    import torch

    teacher = tmp / "teacher.pt"
    shutil.copyfile(base["ckpt"], teacher)
    from eseg_cli.engine.pseudo_label import pseudo_label

    pseudo_label(teacher, [_images(tmp)], tmp / "pl", device="cpu")
    state = torch.load(teacher, weights_only=False)
    state["model"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, teacher)  # retrained in place: the same path and step
    return ["pseudo-label", "--checkpoint", str(teacher), "--device", "cpu", "--no-progress", "-i",
            str(tmp / "frames"), "-o", str(tmp / "pl")], "teacher_sha256"


def pr(base, *args) -> list[str]:
    return ["predict", "--checkpoint", str(base["ckpt"]), "--device", "cpu", *map(str, args)]


@case
def predict_alpha_nan(tmp, base):
    return pr(base, _images(tmp), "-o", tmp / "out", "--alpha", "nan"), "--alpha"


@case
def predict_out_is_the_input_folder(tmp, base):
    return pr(base, _images(tmp), "-o", tmp / "frames", "--yes"), "--out"


@case
def predict_out_inside_the_input_folder(tmp, base):
    return pr(base, _images(tmp), "-o", tmp / "frames" / "preds"), "--out"


@case
def predict_input_inside_the_out_folder(tmp, base):
    _images(tmp)
    return pr(base, str(tmp / "**" / "*.png"), "-o", tmp), "inside the output folder"


@case
def predict_derived_names_clash(tmp, base):
    d = _images(tmp)
    _png(d / "f0_color.png", np.zeros((32, 64, 3), np.uint8))  # also f0.png's colour mask
    return pr(base, d / "f0.png", d / "f0_color.png", "-o", tmp / "out"), "f0_color.png"


@case
def predict_two_videos_of_one_name(tmp, base):
    for sub in ("a", "b"):
        (tmp / sub).mkdir()
        (tmp / sub / "clip.mp4").write_bytes(b"never read: refused first")
    return pr(base, tmp / "a" / "clip.mp4", tmp / "b" / "clip.mp4", "-o", tmp / "out"), "clip_overlay.mp4"


@case
def predict_decompression_bomb(tmp, base):
    return pr(base, _bomb(tmp / "bomb.png"), "-o", tmp / "out"), "bomb.png"


@case
def predict_floating_point_tiff(tmp, base):
    Image.fromarray(np.ones((32, 32), np.float32)).save(tmp / "depth.tif")
    return pr(base, tmp / "depth.tif", "-o", tmp / "out"), "depth.tif"


ONNX_META = {"num_classes": "3", "class_names": '["a", "b", "c"]', "palette": "[[0, 0, 0], [9, 9, 9], [99, 9, 9]]",
             "mean": "[0.5, 0.5, 0.5]", "std": "[0.5, 0.5, 0.5]", "model": "null"}


def _onnx(path: Path, **meta) -> Path:
    """A trivial ONNX model (logits = the image) with ``eseg export``'s metadata, edited by ``meta``."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 3, "h", "w"]) for n in ("image", "logits")]
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in {**ONNX_META, **meta}.items():
        if v is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return path


@case
def predict_onnx_without_a_palette(tmp, base):
    return ["predict", "--onnx", str(_onnx(tmp / "m.onnx", palette=None)), str(_images(tmp)), "-o",
            str(tmp / "out")], "'palette'"


@case
def predict_onnx_metadata_not_json(tmp, base):
    return ["predict", "--onnx", str(_onnx(tmp / "m.onnx", mean="{oops")), str(_images(tmp)), "-o",
            str(tmp / "out")], "'mean'"


@case
def predict_onnx_palette_of_another_length(tmp, base):
    return ["predict", "--onnx", str(_onnx(tmp / "m.onnx", palette="[[1, 2, 3]]")), str(_images(tmp)), "-o",
            str(tmp / "out")], "'palette'"


@case
def export_opset_beyond_torch(tmp, base):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return ["export", "-c", str(base["ckpt"]), "--out", str(tmp / "m.onnx"), "--opset", "99"], "--opset"


@case
def export_out_is_the_checkpoint(tmp, base):
    import shutil

    shutil.copyfile(base["ckpt"], tmp / "best.pt")
    return ["export", "-c", str(tmp / "best.pt"), "-f", "torchscript", "--out", str(tmp / "best.pt"), "--yes"], \
        "is the checkpoint being exported"


CLASSES_19 = b"\n".join(f"c{k}".encode() for k in range(19)) + b"\n"  # the tiny checkpoint's class count


@case
def eval_save_predictions_inside_the_dataset(tmp, base):
    root = folder_set(tmp / "ds", classes=CLASSES_19)
    return ev("--checkpoint", base["ckpt"], "--dataset", "folder", "--data-root", root, "--out", tmp / "o",
              "--save-predictions", root / "images" / "val", "--yes"), "--save-predictions"


@case
def eval_save_predictions_names_clash(tmp, base):
    root = folder_set(tmp / "ds", classes=CLASSES_19)
    for sub in ("images", "masks"):
        (root / sub / "val" / "im0.png").rename(root / sub / "val" / "im1_color.png")
    return ev("--checkpoint", base["ckpt"], "--dataset", "folder", "--data-root", root, "--out", tmp / "o",
              "--save-predictions", tmp / "preds"), "im1_color.png"


@case
def eval_split_escapes_the_dataset(tmp, base):
    return ev("--checkpoint", base["ckpt"], "--split", "../../etc", "--out", tmp / "o"), "--split"


@case
def train_set_val_split_escapes_the_dataset(tmp, base):
    return train("--data-root", base["syn"], "--set", "val_split=../val"), "val_split"


@case
def train_set_extra_data_split_escapes(tmp, base):
    return train("--data-root", base["syn"], "--set", "extra_data=[{root: pl, split: ../../x}]"), "extra_data[0].split"


@case
def browse_split_escapes_the_dataset(tmp, base):
    return ["browse", "synthetic", "--root", str(base["syn"]), "--split", "../..", "--out", str(tmp / "p.png")], \
        "--split"


@case
def prepare_cityscapes_split_escapes_the_root(tmp, base):
    return ["prepare-data", "cityscapes", "--root", str(_city(tmp, base)), "--split", "../../elsewhere"], "split"


def _run_folder(tmp) -> Path:
    run = tmp / "runs" / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("scale: s\ndataset: cityscapes\nmodel: {}\nsteps: 2\n")
    (run / "val.jsonl").write_text('{"step": 1, "mIoU": 40.0}\n{"step": 2, "mIoU": 42.5}\n')
    (run / "eval.json").write_text('{"mIoU": 75.0, "pixAcc": 94.0, "dataset": "cityscapes"}')
    (run / "eval_confusion.csv").write_text(",road,car\nroad,10,2\ncar,1,7\n")
    return run


def rep(tmp) -> list[str]:
    return ["report", "--results", str(tmp / "runs"), "--no-measure", "--no-figures", "--out", str(tmp / "rep"),
            "--yes"]


@case
def report_confusion_csv_not_numbers(tmp, base):
    (_run_folder(tmp) / "eval_confusion.csv").write_text(",road,car\nroad,10,n/a\ncar,1,7\n")
    return rep(tmp), "eval_confusion.csv"


@case
def report_eval_miou_not_finite(tmp, base):
    (_run_folder(tmp) / "eval.json").write_text('{"mIoU": NaN, "dataset": "cityscapes"}')  # Python's json writes NaN
    return rep(tmp), "eval.json: its mIoU must be a finite number"


@case
def report_eval_miou_not_a_number(tmp, base):
    (_run_folder(tmp) / "eval.json").write_text('{"mIoU": "high", "dataset": "cityscapes"}')
    return rep(tmp), "eval.json: its mIoU 'high'"


@case
def report_run_config_damaged(tmp, base):
    (_run_folder(tmp) / "config.yaml").write_text("scale: [s\n")
    return rep(tmp), "config.yaml"


@case
def report_val_log_damaged_before_the_last_line(tmp, base):
    (_run_folder(tmp) / "val.jsonl").write_text('{"step": 1, "mIo\n{"step": 2, "mIoU": 42.5}\n')
    return rep(tmp), "val.jsonl"


# ------------------------------------------------------------------------------------------- the runner

def _snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file():
                out[str(p)] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_clean_error(name, tmp_path, base):
    argv, needle = CASES[name](tmp_path, base)
    before = _snapshot(tmp_path, base["root"])
    res = runner.invoke(app, [str(a) for a in argv])
    out = res.output
    assert res.exit_code == 2, f"{name}: exit {res.exit_code}\n{out}\n{res.exception!r}"
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, f"{name}: expected one error line in: {out}"  # progress lines may come before it
    assert str(needle) in errors[0], f"{name}: {needle!r} not named in: {errors[0]}"
    if os.environ.get("ESEG_SHOW_CASES"):
        print(f"\nCASE {name}: {errors[0]}")
    after = _snapshot(tmp_path, base["root"])
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"{name}: files written before were changed: {changed}"
    assert not [p for p in after if p.endswith(".tmp")], "temporary files left behind"


def test_the_table_is_large_enough():
    assert len(CASES) >= 164  # 124 before issue 20, which added at least 40
