"""Evaluation: whole-image, sliding-window and multi-scale + flip inference, and scoring of saved predictions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from eseg_cli.engine.metrics import ConfusionMatrix
from eseg_cli.engine.precision import autocast
from eseg_cli.engine.run import Run
from eseg_cli.errors import EsegError
from eseg_cli.events import Emitter, OnEvent
from eseg_cli.utils import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_finite,
    check_output_apart,
    check_size,
)

MODES = ("whole", "slide", "msflip")


def _forward(model: nn.Module, x: torch.Tensor, amp: str | None) -> torch.Tensor:
    with autocast(x.device, amp):
        return model(x).float()


def slide_logits(model: nn.Module, x: torch.Tensor, num_classes: int, crop: tuple[int, int],
                 stride: tuple[int, int], amp: str | None = None) -> torch.Tensor:
    """Average the logits of overlapping ``crop`` windows moved by ``stride`` (windows clipped to the image)."""
    b, _, h, w = x.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    sh, sw = stride
    rows = max(math.ceil((h - ch) / sh), 0) + 1
    cols = max(math.ceil((w - cw) / sw), 0) + 1
    out = x.new_zeros((b, num_classes, h, w))
    count = x.new_zeros((1, 1, h, w))
    for r in range(rows):
        for c in range(cols):
            y0 = min(r * sh, h - ch)
            x0 = min(c * sw, w - cw)
            out[:, :, y0:y0 + ch, x0:x0 + cw] += _forward(model, x[:, :, y0:y0 + ch, x0:x0 + cw], amp)
            count[:, :, y0:y0 + ch, x0:x0 + cw] += 1
    if not bool(count.all()):  # unreachable with check_inference's stride <= crop; never a silent 0/0 score
        raise EsegError(f"the sliding window (crop {crop[0]}x{crop[1]}, stride {sh}x{sw}) leaves pixels of a "
                        f"{h}x{w} image uncovered; use a stride of at most the crop", field="stride")
    return out / count


def check_inference(mode: str, crop=None, stride=None, scales=(1.0,)) -> None:
    """Refuse inference settings that would give a score no model computed: an unknown mode, slide without a
    crop, a stride larger than the crop (the pixels between windows would be 0/0, then class 0), a crop past
    the size cap, or a scale that is not a positive finite number."""
    if mode not in MODES:
        raise EsegError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    if mode == "slide" and crop is None:
        raise EsegError("slide mode needs a crop size ('crop', HxW)", field="crop")
    if crop is not None:
        check_size(crop, "'crop'", field="crop")
        if stride is not None and (stride[0] > crop[0] or stride[1] > crop[1]):
            raise EsegError(f"'stride' {stride[0]}x{stride[1]} is larger than 'crop' {crop[0]}x{crop[1]}: the "
                            "pixels between two windows would get no score; give a stride of at most the crop",
                            field="stride")
    if mode == "msflip":
        if not scales:
            raise EsegError("msflip needs at least one scale ('scales')", field="scales")
        for v in scales:
            check_finite(v, "'scales'", field="scales")
            if v <= 0:
                raise EsegError(f"'scales' must be positive numbers, got {v!r}", field="scales")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, num_classes: int, *, mode: str = "whole",
            crop: tuple[int, int] | None = None, stride: tuple[int, int] | None = None,
            scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip: bool = True,
            amp: str | None = None) -> torch.Tensor:
    """Class scores ``(B, C, H, W)`` for a normalised batch ``x``.

    ``whole``: one forward pass at the input size (the paper's protocol). ``slide``: ``crop`` windows every
    ``stride``. ``msflip``: softmax averaged over ``scales`` (each whole-image, or sliding when ``crop`` is
    given) and their horizontal flips.
    """
    check_inference(mode, crop, stride, scales)

    def one(inp):
        if crop is not None and mode in ("slide", "msflip"):
            st = stride or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
            return slide_logits(model, inp, num_classes, crop, st, amp)
        return _forward(model, inp, amp)

    if mode != "msflip":
        return one(x)
    h, w = x.shape[-2:]
    total = x.new_zeros((x.shape[0], num_classes, h, w))
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        check_size(size, f"the {h}x{w} image at msflip scale {s:g} ('scales')", field="scales")
        xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if size != (h, w) else x
        variants = [xs, xs.flip(-1)] if flip else [xs]
        for i, v in enumerate(variants):
            logits = one(v)
            if i == 1:
                logits = logits.flip(-1)
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            total += logits.softmax(1)
    return total


@torch.no_grad()
def evaluate_model(model: nn.Module, loader, num_classes: int, device: torch.device, *, ignore_index: int = 255,
                   class_names: list[str] | None = None, max_images: int | None = None,
                   on_prediction=None, **predict_kw) -> ConfusionMatrix:
    """Run ``model`` over ``loader`` and return the confusion matrix (summed over processes).

    ``on_prediction(index, pred)`` is called per image with the CPU label map (used to save predictions).
    """
    was_training = model.training
    model.eval()
    # imported here: eseg_cli.inference uses eseg_cli.engine (precision, checkpoints)
    from eseg_cli.inference.postprocess import upsample_argmax

    cm = ConfusionMatrix(num_classes, ignore_index, device=device, class_names=class_names)
    seen = 0
    # whole-image mode: labels straight from the stride-4 logits (not on XLA, where the boundary pixels'
    # data-dependent shapes would recompile every batch)
    fast = (predict_kw.get("mode", "whole") == "whole" and hasattr(model, "forward_logits")
            and device.type != "xla")
    channels_last = bool((getattr(model, "prepared", None) or {}).get("channels_last"))
    for image, target in loader:
        if max_images is not None and seen >= max_images:
            break
        image = image.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        if fast and image.shape[-2:] == target.shape[-2:]:
            # the inference path: logits at the head's stride, then the exact fast upsample + argmax
            pred = upsample_argmax(_forward(model.forward_logits, image, predict_kw.get("amp")),
                                   tuple(image.shape[-2:]), out_dtype=torch.int64)
        else:
            scores = predict(model, image, num_classes, **predict_kw)
            if scores.shape[-2:] != target.shape[-2:]:
                # the image was resized (val_resize): predictions go back to the label's size, never the reverse
                scores = F.interpolate(scores, size=target.shape[-2:], mode="bilinear", align_corners=False)
            pred = scores.argmax(1)
        cm.update(pred, target)
        if on_prediction is not None:
            for j in range(pred.shape[0]):
                on_prediction(seen + j, pred[j].cpu())
        seen += image.shape[0]
        if device.type == "xla":
            import torch_xla

            torch_xla.sync()
    cm.all_reduce()
    model.train(was_training)
    return cm


def write_results(metrics: dict, cm: ConfusionMatrix, out_dir: str | Path, mode: str | None = None) -> dict:
    """Write ``eval_<mode>.json`` and ``eval_<mode>_confusion.csv`` (``eval.json`` ... without a mode) into
    ``out_dir`` (atomically); return their paths."""
    paths = {k: str(v) for k, v in Run(out_dir).eval_paths(mode).items()}
    atomic_write_json(paths["json"], metrics)
    atomic_write_text(paths["confusion_csv"], cm.to_csv())
    return paths


def _palette_image(label: np.ndarray, palette: list[tuple[int, int, int]]):
    from PIL import Image

    pal = np.zeros((256, 3), np.uint8)
    for i, c in enumerate(palette[:255]):
        pal[i] = c
    return Image.fromarray(pal[label.astype(np.uint8)])


def save_prediction(pred: torch.Tensor, image_path: str | Path, out_dir: Path, palette=None) -> Path:
    """``<stem>.png`` (trainIds) and, with a palette, ``<stem>_color.png`` in ``out_dir`` (each written whole)."""
    import io

    from PIL import Image

    def png(img) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    stem = Path(image_path).stem
    arr = pred.numpy().astype(np.uint8)
    path = atomic_write_bytes(out_dir / f"{stem}.png", png(Image.fromarray(arr)))
    if palette:
        atomic_write_bytes(out_dir / f"{stem}_color.png", png(_palette_image(arr, palette)))
    return path


def check_prediction_outputs(ds, out_dir: str | Path) -> None:
    """Refuse a ``save_predictions`` folder inside the dataset (a prediction ``<stem>.png`` would replace an image
    or label), and images whose prediction files would share a name (``x_color.png`` is also ``x.png``'s)."""
    out_dir = Path(out_dir)
    check_output_apart(out_dir, [ds.root] if getattr(ds, "root", None) else [], [], field="save_predictions")
    owners: dict[str, Path] = {}
    for ip, _ in ds.files:
        for p in (out_dir / f"{Path(ip).stem}.png", out_dir / f"{Path(ip).stem}_color.png"):
            key = str(p).casefold()
            if key in owners:
                raise EsegError(f"images {owners[key]} and {ip} would both write {p} ('save_predictions'); "
                                "save the predictions of one of them elsewhere", field="save_predictions")
            owners[key] = Path(ip)


def _build_eval_dataset(dataset: str, data_root: str | Path | None, split: str, resize=None, norm=None):
    from eseg_cli.data import build_dataset, build_transforms

    tf = build_transforms(False, resize=tuple(resize) if resize else None, **dict(zip(("mean", "std"), norm or ())))
    return build_dataset(dataset, data_root, split, transform=tf)


def evaluate(checkpoint: str | Path, *, dataset: str | None = None, data_root: str | Path | None = None,
             split: str = "val", mode: str = "whole", crop: tuple[int, int] | None = None,
             stride: tuple[int, int] | None = None, scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
             flip: bool = True, batch_size: int = 1, workers: int = 2, device: str = "auto",
             amp: str | None = None, out_dir: str | Path | None = None, save_predictions: str | Path | None = None,
             max_images: int | None = None, resize=None, use_ema: bool = True,
             on_event: OnEvent | None = None) -> dict:
    """Evaluate a checkpoint (a file or a run folder); return the metrics dict and write ``eval_<mode>.json`` +
    ``eval_<mode>_confusion.csv`` to ``out_dir``.

    ``dataset``/``data_root`` default to those the checkpoint was trained on. ``out_dir`` defaults to the run
    folder holding the checkpoint. ``on_event`` gets progress events (task ``eval``, one step per image).
    """
    from eseg_cli.engine.checkpoint import load_model
    from eseg_cli.engine.distributed import resolve_device

    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, map_location="cpu", use_ema=use_ema)
    from eseg_cli.inference.prepare import prepare_model  # (eseg_cli.inference uses eseg_cli.engine)

    model = prepare_model(model, device=dev, copy_model=False)  # the Predictor's exact inference path
    cfg = ckpt.get("config") or {}
    dataset = dataset or cfg.get("dataset") or "synthetic"
    if data_root is None and dataset == cfg.get("dataset"):
        # the resolved root (for the synthetic default: the exact generated version the model was trained on)
        data_root = cfg.get("data_root") or ckpt.get("data_root")
    if resize is None:
        resize = cfg.get("val_resize")
    if mode == "slide" and crop is None and cfg.get("crop_size"):
        crop = tuple(cfg["crop_size"])  # the run's training crop, as mmseg takes it from the config
    check_inference(mode, crop, stride, scales)
    from eseg_cli.models.pretrained import model_normalization

    # the normalisation the model was trained with (its encoder weights'), recorded in its config
    ds = _build_eval_dataset(dataset, data_root, split, resize, model_normalization(ckpt.get("model_config")))
    num_classes = model.num_classes if hasattr(model, "num_classes") else ds.num_classes
    if num_classes != ds.num_classes:
        raise EsegError(f"the checkpoint predicts {num_classes} classes but {dataset} has {ds.num_classes}; "
                        "pick the dataset the model was trained on")
    from eseg_cli.data.check import check_batchable

    check_batchable(ds, batch_size, "evaluation", "use a batch size of 1, or resize to one size")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    on_pred = None
    if save_predictions:
        pdir = Path(save_predictions)
        check_prediction_outputs(ds, pdir)

        def on_pred(i, pred):
            save_prediction(pred, ds.files[i][0], pdir, getattr(ds, "palette", None))
    n = len(ds) if max_images is None else min(len(ds), max_images)
    emit = Emitter(on_event, "eval", total=n)

    def cb(i, pred):
        if on_pred:
            on_pred(i, pred)
        emit("advance", i + 1)
    emit("start", 0)
    cm = evaluate_model(model, loader, num_classes, dev, ignore_index=getattr(ds, "ignore_index", 255),
                        class_names=list(getattr(ds, "classes", [])) or None, max_images=max_images,
                        on_prediction=cb, mode=mode, crop=crop, stride=stride, scales=tuple(scales), flip=flip,
                        amp=amp)
    emit("end", n)
    metrics = cm.compute()
    metrics.update({"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "mode": mode,
                    "images": n, "step": ckpt.get("step")})
    out_dir = Run.of(checkpoint).path if out_dir is None else out_dir
    metrics["files"] = write_results(metrics, cm, out_dir, mode)
    metrics["confusion_matrix"] = cm.mat.cpu().tolist()
    return metrics


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
    """A prediction PNG as an array; a corrupt or unreadable file is an EsegError naming it."""
    from PIL import Image

    from eseg_cli.data.imageio import UNREADABLE

    try:
        with Image.open(path) as im:
            return np.array(im)
    except UNREADABLE as e:
        raise EsegError(f"prediction {path} cannot be read ({e}); write it again or remove it") from None


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
    ds = _build_eval_dataset(dataset, data_root, split)
    index = _index_predictions(pred_dir)
    if not index:
        raise EsegError(f"prediction folder {pred_dir} holds no .png files")
    lut = None
    if dataset in ("cityscapes", "synthetic"):
        from eseg_cli.data.classes import cityscapes_id_to_trainid_lut

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
