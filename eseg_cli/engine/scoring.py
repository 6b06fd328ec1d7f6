"""Scoring saved prediction PNGs (``eseg eval --predictions``): a folder of label maps against a dataset's ground
truth, through the same confusion matrix and result files as evaluating a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from eseg_cli.data.classes import cityscapes_id_to_trainid_lut
from eseg_cli.data.imageio import read_upright
from eseg_cli.engine.evaluator import eval_dataset, write_results
from eseg_cli.engine.metrics import ConfusionMatrix
from eseg_cli.errors import EsegError
from eseg_cli.events import Emitter, OnEvent


def _index_predictions(pred_dir: Path) -> dict[str, Path]:
    out = {}
    for p in pred_dir.rglob("*.png"):
        if p.stem.endswith("_color"):
            continue
        out[p.stem] = p
    return out


def _find_prediction(index: dict[str, Path], image_path: str | Path) -> Path | None:
    stem = Path(image_path).stem
    for key in (stem, stem.replace("_leftImg8bit", ""), stem + "_pred"):
        if key in index:
            return index[key]
    base = stem.replace("_leftImg8bit", "")
    for k, p in index.items():  # cityscapesScripts names like <city>_<seq>_<frame>_*.png
        if k.startswith(base + "_"):
            return p
    return None


def _read_prediction(path: Path) -> np.ndarray:
    """A prediction PNG as an array, read as labels are (:func:`~eseg_cli.data.imageio.read_upright`); a corrupt or
    unreadable file is an EsegError naming it."""
    return np.array(read_upright(path, "prediction"))


def score_predictions(pred_dir: str | Path, *, dataset: str, data_root: str | Path | None, split: str = "val",
                      ids: str = "auto", out_dir: str | Path | None = None, on_event: OnEvent | None = None) -> dict:
    """Score saved prediction PNGs against the ground truth of ``dataset``/``split``.

    Predictions are matched by image name (``<image stem>.png``, or the Cityscapes prefix
    ``<city>_<seq>_<frame>``). ``ids``: ``trainid``, ``labelid`` (Cityscapes labelIds, mapped to trainIds) or
    ``auto`` (labelIds when a Cityscapes-layout prediction holds values >= 19 other than 255).
    Writes ``eval.json`` and ``eval_confusion.csv`` into ``out_dir`` when given; ``on_event`` gets progress
    events (task ``eval``).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EsegError(f"prediction folder {pred_dir} is not a folder of PNG files")
    ds = eval_dataset(dataset, data_root, split)
    index = _index_predictions(pred_dir)
    if not index:
        raise EsegError(f"prediction folder {pred_dir} holds no .png files")
    lut = None
    if dataset in ("cityscapes", "synthetic"):
        lut = torch.from_numpy(np.asarray(cityscapes_id_to_trainid_lut()).astype(np.int64))
    cm = ConfusionMatrix(ds.num_classes, getattr(ds, "ignore_index", 255), class_names=list(ds.classes))
    found = [(_find_prediction(index, img), img) for img, _ in ds.files]
    missing = [Path(img).name for p, img in found if p is None]
    if missing:
        raise EsegError(f"no prediction found in {pred_dir} for {len(missing)} of {len(ds.files)} images "
                        f"(first: {missing[0]}); name them <image stem>.png")
    labelids = lut is not None and ids == "labelid"
    if lut is not None and ids == "auto":  # decided once for the whole folder, not per image
        labelids = any(bool(((a >= ds.num_classes) & (a != 255)).any())
                       for a in (_read_prediction(p) for p, _ in found))
    emit = Emitter(on_event, "eval", total=len(ds))
    emit("start", 0)
    for i, (p, _img) in enumerate(found):
        _, target = ds[i]
        pred = torch.from_numpy(_read_prediction(p).astype(np.int64))
        if pred.dim() == 3:
            raise EsegError(f"prediction {p} is a colour image; give single-channel label PNGs (trainIds or labelIds)")
        if pred.shape != target.shape:
            raise EsegError(f"prediction {p} is {tuple(pred.shape)} but its ground truth is {tuple(target.shape)}")
        if labelids:
            pred = lut[pred.clamp(0, len(lut) - 1)]
        cm.update(pred, target)
        emit("advance", i + 1)
    emit("end", len(ds))
    metrics = cm.compute()
    metrics.update({"ids": "labelid" if labelids else "trainid", "predictions": str(pred_dir), "dataset": dataset,
                    "split": split, "images": len(ds.files)})
    if out_dir is not None:
        metrics["files"] = write_results(metrics, cm, out_dir)
    metrics["confusion_matrix"] = cm.mat.tolist()
    return metrics
