"""Pseudo-labels for self-training: a teacher labels unlabelled images, keeping only confident pixels.

For every image the teacher's class probabilities come from the same inference path as evaluation
(:func:`eseg_cli.engine.evaluator.predict`, ``whole`` / ``slide`` / ``msflip``, with the normalisation
recorded in the teacher's checkpoint). A pixel keeps the teacher's class where its top probability is at
least ``threshold`` and becomes 255 (ignore) elsewhere, as in the paper's self-training (threshold 0.5).

The output is a ``folder`` dataset (:class:`eseg_cli.data.FolderDataset`)::

    OUT/images/<split>/<name>.<ext>   the image (hard link where possible, else a copy)
    OUT/masks/<split>/<name>.png      the pseudo-label (class indices, 255 = below the threshold)
    OUT/classes.txt                   the teacher's class list (name R G B)
    OUT/pseudo_label.json             settings and summary (images, kept-pixel fraction per class)
    OUT/pseudo_label_stats.jsonl      one row per finished image (what makes the run resumable)

A second call with the same teacher and settings skips finished images; other settings are refused.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from eseg_cli.errors import EsegError
from eseg_cli.events import Emitter, OnEvent
from eseg_cli.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def find_images(sources: Sequence[str | Path]) -> list[Path]:
    """Image files from folders (searched recursively), glob patterns and single files; sorted, unique."""
    found: dict[Path, None] = {}
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            hits = [q for q in sorted(p.rglob("*")) if q.suffix.lower() in IMAGE_EXTS and q.is_file()]
            if not hits:
                raise EsegError(f"image folder {p} holds no images ({', '.join(IMAGE_EXTS)})")
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_EXTS:
                raise EsegError(f"{p} is not an image file ({', '.join(IMAGE_EXTS)})")
            hits = [p]
        else:
            hits = [Path(q) for q in sorted(glob.glob(str(p), recursive=True))
                    if Path(q).suffix.lower() in IMAGE_EXTS and Path(q).is_file()]
            if not hits:
                raise EsegError(f"{src}: no such folder or file, and no image matches it as a pattern")
        for h in hits:
            found[h.resolve()] = None
    images = list(found)
    if not images:
        raise EsegError("no images given to pseudo-label")
    names: dict[str, Path] = {}
    for img in images:
        if img.stem in names:
            raise EsegError(f"two images share the name {img.stem!r} ({names[img.stem]} and {img}); the folder "
                            "layout keys labels by image name, so label them into separate output folders")
        names[img.stem] = img
    return images


def class_probabilities(model, image: torch.Tensor, num_classes: int, *, mode: str = "whole", crop=None,
                        stride=None, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip: bool = True,
                        amp: str | None = None) -> torch.Tensor:
    """``(B, C, H, W)`` class probabilities of a normalised batch through the evaluation path."""
    from eseg_cli.engine.evaluator import predict

    scores = predict(model, image, num_classes, mode=mode, crop=crop, stride=stride, scales=tuple(scales),
                     flip=flip, amp=amp)
    if mode == "msflip":  # predict() sums the softmax over scales (and flips): make it an average
        return scores / (len(scales) * (2 if flip else 1))
    return scores.softmax(1)


def threshold_labels(probs: torch.Tensor, threshold: float, ignore_index: int = 255) -> torch.Tensor:
    """Top class per pixel, ``ignore_index`` where its probability is below ``threshold``."""
    conf, label = probs.max(1)
    label[conf < threshold] = ignore_index
    return label


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def pseudo_label(checkpoint: str | Path, images: Sequence[str | Path], out_dir: str | Path, *,
                 threshold: float = 0.5, mode: str = "whole", crop=None, stride=None,
                 scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip: bool = True, split: str = "train",
                 device: str = "auto", amp: str | None = None, use_ema: bool = True,
                 on_event: OnEvent | None = None) -> dict:
    """Label ``images`` with the teacher ``checkpoint`` into the folder dataset ``out_dir``; return the summary.

    Pixels whose top class probability is below ``threshold`` get 255. Finished images (from an earlier call
    with the same teacher and settings) are skipped. ``on_event`` gets progress events (task ``pseudo-label``,
    one step per image; the skipped ones count as done at the start).
    """
    from PIL import Image

    from eseg_cli.data import build_transforms
    from eseg_cli.data.datasets import read_image
    from eseg_cli.engine.checkpoint import load_model
    from eseg_cli.engine.distributed import resolve_device
    from eseg_cli.engine.evaluator import MODES
    from eseg_cli.models.pretrained import model_normalization

    if not 0.0 <= threshold <= 1.0:
        raise EsegError(f"threshold must be between 0 and 1 (a class probability), got {threshold}")
    if mode not in MODES:
        raise EsegError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "slide" and crop is None:
        raise EsegError("slide mode needs a crop size (HxW)")
    files = find_images(images)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EsegError(f"output {out} is a file; give a folder for the pseudo-labelled dataset")
    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, map_location="cpu", use_ema=use_ema)
    from eseg_cli.inference.prepare import prepare_model  # (eseg_cli.inference uses eseg_cli.engine)

    model = prepare_model(model, device=dev, copy_model=False)  # eval's (and the Predictor's) inference path
    num_classes = int(model.num_classes)
    from eseg_cli.inference.predictor import checkpoint_classes

    classes, palette, _ = checkpoint_classes(ckpt, num_classes)

    settings = {"checkpoint": str(Path(checkpoint).resolve()), "step": ckpt.get("step"), "threshold": threshold,
                "mode": mode, "crop": list(crop) if crop else None, "stride": list(stride) if stride else None,
                "scales": list(scales) if mode == "msflip" else None, "flip": flip if mode == "msflip" else None,
                "split": split, "use_ema": use_ema, "amp": amp}
    manifest = out / "pseudo_label.json"
    stats_path = out / "pseudo_label_stats.jsonl"
    done: dict[str, dict] = {}
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))["settings"]
        except (ValueError, KeyError, UnicodeDecodeError):
            raise EsegError(f"{manifest} is not a pseudo-label summary; choose an empty output folder") from None
        if old != settings:
            diff = sorted(k for k in settings if old.get(k) != settings[k])
            raise EsegError(f"{out} was labelled with other settings ({', '.join(diff)} differ); use a new output "
                            "folder, or the same teacher and settings to resume")
    elif out.is_dir() and any(out.iterdir()):
        raise EsegError(f"output folder {out} is not empty and holds no pseudo_label.json; choose an empty or new "
                        "folder")
    if stats_path.is_file():
        for line in stats_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["name"]] = row
    img_dir, mask_dir = out / "images" / split, out / "masks" / split
    mask_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "classes.txt", "".join(f"{n} {r} {g} {b}\n" for n, (r, g, b) in zip(classes, palette)))
    atomic_write_json(manifest, {"settings": settings, "summary": None})

    mean, std = model_normalization(ckpt.get("model_config"))
    tf = build_transforms(False, mean=mean, std=std)
    t0 = time.perf_counter()
    todo = [f for f in files if not (f.stem in done and (mask_dir / f"{f.stem}.png").is_file())]
    skipped = len(files) - len(todo)
    emit = Emitter(on_event, "pseudo-label", total=len(files))
    emit("start", skipped)
    model.eval()
    with open(stats_path, "a", encoding="utf-8") as stats_f:
        for i, path in enumerate(todo, 1):
            rgb = read_image(path)
            x = tf(image=rgb)["image"].unsqueeze(0).to(dev)
            with torch.no_grad():
                probs = class_probabilities(model, x, num_classes, mode=mode, crop=crop, stride=stride,
                                            scales=scales, flip=flip, amp=amp)
            conf, label = probs[0].max(0)
            predicted = torch.bincount(label.flatten(), minlength=num_classes)
            label[conf < threshold] = 255
            lab = label.cpu().numpy().astype(np.uint8)
            buf = _png(Image.fromarray(lab, mode="L"))
            _link_or_copy(path, img_dir / path.name)
            atomic_write_bytes(mask_dir / f"{path.stem}.png", buf)
            kept = np.bincount(lab[lab != 255].ravel(), minlength=num_classes)[:num_classes]
            row = {"name": path.stem, "source": str(path), "pixels": int(lab.size),
                   "predicted": predicted.cpu().tolist(), "kept": kept.tolist()}
            stats_f.write(json.dumps(row) + "\n")
            stats_f.flush()
            done[path.stem] = row
            emit("advance", skipped + i)
    emit("end", len(files))

    rows = [done[f.stem] for f in files]
    predicted = np.sum([r["predicted"] for r in rows], axis=0)
    kept = np.sum([r["kept"] for r in rows], axis=0)
    pixels = int(sum(r["pixels"] for r in rows))
    summary = {
        "out": str(out), "images": len(files), "labelled": len(todo), "skipped": skipped,
        "classes": classes, "threshold": threshold, "mode": mode,
        "kept_fraction": round(float(kept.sum()) / max(pixels, 1), 6),
        "per_class": [{"class": c, "predicted_pixels": int(p), "kept_pixels": int(k),
                       "kept_fraction": round(float(k) / float(p), 6) if p else None}
                      for c, p, k in zip(classes, predicted, kept)],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(manifest, {"settings": settings, "summary": summary})
    return summary


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
