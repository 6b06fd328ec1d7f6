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

A second call with the same teacher (the checkpoint's bytes) and settings resumes: an image is done when its stats
row names the same source file (path, size, modification time) and both files of its pair hold what was written;
any other image is labelled again. Other settings, or another teacher, are refused. Nothing is written before the
first image is labelled, so a refused call leaves no settings behind.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from eseg_cli.errors import EsegError, write_error
from eseg_cli.events import Emitter, OnEvent
from eseg_cli.utils import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output_apart,
    file_sha256,
    output_lock,
    path_component,
    read_jsonl,
    same_content,
)

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
        key = img.stem.casefold()  # A.png and a.jpg clash on case-insensitive file systems too
        if key in names:
            raise EsegError(f"two images share the name {img.stem!r} ({names[key]} and {img}); the folder "
                            "layout keys labels by image name, so label them into separate output folders")
        names[key] = img
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
    """Put ``src`` at ``dst`` (a hard link where possible, else a copy), replacing another file of that name; the
    temporary file is removed on every failure."""
    if same_content(src, dst):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(dst, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _Layout:
    """Where the files of a pseudo-labelled set go (see the module docstring)."""

    def __init__(self, out: Path, split: str):
        self.out, self.split = out, split
        self.img_dir, self.mask_dir = out / "images" / split, out / "masks" / split
        self.manifest, self.stats = out / "pseudo_label.json", out / "pseudo_label_stats.jsonl"

    def image(self, src: Path) -> Path:
        return self.img_dir / src.name

    def mask(self, src: Path) -> Path:
        return self.mask_dir / f"{src.stem}.png"


def _previous_work(layout: _Layout, settings: dict) -> tuple[dict[str, dict], bool]:
    """The rows of an earlier call into the same folder with the same settings (refused: other settings, a
    folder holding something else), and whether its stats file ends in a line cut short by a crash."""
    out = layout.out
    if layout.manifest.is_file():
        try:
            old = json.loads(layout.manifest.read_text(encoding="utf-8"))["settings"]
            diff = sorted(k for k in settings if old.get(k) != settings[k])
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise EsegError(f"{layout.manifest} is not a pseudo-label summary; choose an empty output folder") \
                from None
        if diff:
            why = "; the teacher checkpoint changed since (retrained?)" if "teacher_sha256" in diff else ""
            raise EsegError(f"{out} was labelled with other settings ({', '.join(diff)} differ{why}); use a new "
                            "output folder, or the same teacher and settings to resume")
    elif out.is_dir() and any(p.name != ".lock" for p in out.iterdir()):
        raise EsegError(f"output folder {out} is not empty and holds no pseudo_label.json; choose an empty or new "
                        "folder")
    return _read_stats(layout.stats)


def _read_stats(path: Path) -> tuple[dict[str, dict], bool]:
    """The rows of ``pseudo_label_stats.jsonl`` by image name (a later row wins), and whether its last line was
    cut short (a killed run: that image is labelled again). A damaged line before the last is refused."""
    rows, cut = read_jsonl(path)
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise EsegError(f"{path}: row {n} is not a pseudo-label row; delete that line (its image is labelled "
                            "again) or the whole file (every image is)")
    return {r["name"]: r for r in rows}, cut


def _finished(row: dict | None, src: Path, layout: _Layout) -> bool:
    """Whether ``src`` was labelled by an earlier call: its row names this very source file (path, size, time),
    the image copy holds the same bytes and the mask is the one written (its hash)."""
    if not row or row.get("source") != str(src):
        return False
    st = src.stat()
    if row.get("source_size") != st.st_size or row.get("source_mtime_ns") != st.st_mtime_ns:
        return False
    mask = layout.mask(src)
    return (same_content(src, layout.image(src)) and mask.is_file()
            and file_sha256(mask) == row.get("mask_sha256"))


def _begin(layout: _Layout, settings: dict, classes, palette, rows: dict[str, dict], cut: bool) -> None:
    """What the first labelled image needs (written only then, so a refused call leaves nothing): the folders,
    ``classes.txt``, the settings, and the stats without a line a crash cut short."""
    layout.mask_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.out / "classes.txt",
                      "".join(f"{n} {r} {g} {b}\n" for n, (r, g, b) in zip(classes, palette)))
    atomic_write_json(layout.manifest, {"settings": settings, "summary": None})
    if cut:
        atomic_write_text(layout.stats, "".join(json.dumps(r) + "\n" for r in rows.values()))


def pseudo_label(checkpoint: str | Path, images: Sequence[str | Path], out_dir: str | Path, *,
                 threshold: float = 0.5, mode: str = "whole", crop=None, stride=None,
                 scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip: bool = True, split: str = "train",
                 device: str = "auto", amp: str | None = None, use_ema: bool = True,
                 on_event: OnEvent | None = None) -> dict:
    """Label ``images`` with the teacher ``checkpoint`` into the folder dataset ``out_dir``; return the summary.

    Pixels whose top class probability is below ``threshold`` get 255. An earlier call into ``out_dir`` with
    the same teacher (the checkpoint's bytes) and settings is resumed: an image counts as done when its stats
    row names the same source file (path, size, modification time), its copy holds the same bytes and its mask
    the bytes written; anything else is labelled again. ``on_event`` gets progress events (task
    ``pseudo-label``, one step per image; the done ones count at the start).
    """
    from eseg_cli.engine.checkpoint import load_model
    from eseg_cli.engine.distributed import resolve_device
    from eseg_cli.engine.evaluator import check_inference
    from eseg_cli.engine.precision import amp_dtype
    from eseg_cli.engine.run import resolve_checkpoint

    if not 0.0 <= threshold <= 1.0:
        raise EsegError(f"threshold must be between 0 and 1 (a class probability), got {threshold}",
                        field="threshold")
    check_inference(mode, crop, stride, scales)
    layout = _Layout(Path(out_dir), path_component(split, "'split'", field="split"))
    files = find_images(images)
    if layout.out.exists() and not layout.out.is_dir():
        raise EsegError(f"output {layout.out} is a file; give a folder for the pseudo-labelled dataset")
    check_output_apart(layout.out, [Path(s).expanduser() for s in images if Path(s).expanduser().is_dir()], files)
    dev = resolve_device(device)
    amp_dtype(amp, dev)
    teacher = resolve_checkpoint(checkpoint)
    model, ckpt = load_model(teacher, map_location="cpu", use_ema=use_ema)
    settings = {"checkpoint": str(Path(checkpoint).resolve()), "teacher_sha256": file_sha256(teacher),
                "step": ckpt.get("step"), "threshold": threshold, "mode": mode,
                "crop": list(crop) if crop else None, "stride": list(stride) if stride else None,
                "scales": list(scales) if mode == "msflip" else None, "flip": flip if mode == "msflip" else None,
                "split": layout.split, "use_ema": use_ema, "amp": amp}
    with output_lock(layout.out, f"output folder {layout.out} is in use by another eseg pseudo-label; wait for it "
                                 "to finish, or choose another output folder"):
        done, cut = _previous_work(layout, settings)
        todo = [f for f in files if not _finished(done.get(f.stem), f, layout)]
        t0 = time.perf_counter()
        _label_all(model, ckpt, dev, todo, layout, done, len(files), Emitter(on_event, "pseudo-label",
                   total=len(files)), begin=lambda classes, palette: _begin(layout, settings, classes, palette,
                                                                             done, cut),
                   threshold=threshold, mode=mode, crop=crop, stride=stride, scales=scales, flip=flip, amp=amp)
        summary = _summary(layout.out, [done[f.stem] for f in files], len(todo), threshold, mode,
                           checkpoint_classes_of(model, ckpt)[0], time.perf_counter() - t0)
        atomic_write_json(layout.manifest, {"settings": settings, "summary": summary})
    return summary


def checkpoint_classes_of(model, ckpt) -> tuple[list[str], list]:
    from eseg_cli.inference.predictor import checkpoint_classes  # (eseg_cli.inference uses eseg_cli.engine)

    classes, palette, _ = checkpoint_classes(ckpt, int(model.num_classes))
    return classes, palette


def _label_all(model, ckpt, dev, todo: list[Path], layout: _Layout, done: dict[str, dict], total: int,
               emit: Emitter, *, begin, threshold: float, **predict_kw) -> None:
    """Label ``todo`` one image at a time: image copy, mask, then its stats row (a crash in between redoes it)."""
    from eseg_cli.data import build_transforms
    from eseg_cli.data.datasets import read_image
    from eseg_cli.inference.prepare import prepare_model  # (eseg_cli.inference uses eseg_cli.engine)
    from eseg_cli.models.pretrained import model_normalization

    skipped = total - len(todo)
    emit("start", skipped)
    if todo:
        model = prepare_model(model, device=dev, copy_model=False)  # eval's (and the Predictor's) inference path
        model.eval()
        num_classes = int(model.num_classes)
        classes, palette = checkpoint_classes_of(model, ckpt)
        mean, std = model_normalization(ckpt.get("model_config"))
        tf = build_transforms(False, mean=mean, std=std)
        stats_f = None
        try:
            for i, path in enumerate(todo, 1):
                x = tf(image=read_image(path))["image"].unsqueeze(0).to(dev)
                with torch.no_grad():
                    probs = class_probabilities(model, x, num_classes, **predict_kw)
                if stats_f is None:
                    begin(classes, palette)
                    stats_f = open(layout.stats, "a", encoding="utf-8")
                done[path.stem] = _write_pair(path, probs[0], threshold, layout)
                stats_f.write(json.dumps(done[path.stem]) + "\n")
                stats_f.flush()
                emit("advance", skipped + i)
        finally:
            if stats_f is not None:
                stats_f.close()
    emit("end", total)


def _write_pair(path: Path, probs: torch.Tensor, threshold: float, layout: _Layout) -> dict:
    """Write the image copy and the mask of ``path``; return its stats row."""
    from PIL import Image

    num_classes = probs.shape[0]
    conf, label = probs.max(0)
    predicted = torch.bincount(label.flatten(), minlength=num_classes)
    label[conf < threshold] = 255
    lab = label.cpu().numpy().astype(np.uint8)
    buf = _png(Image.fromarray(lab, mode="L"))
    _link_or_copy(path, layout.image(path))
    atomic_write_bytes(layout.mask(path), buf)
    kept = np.bincount(lab[lab != 255].ravel(), minlength=num_classes)[:num_classes]
    st = path.stat()
    return {"name": path.stem, "source": str(path), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns,
            "mask_sha256": hashlib.sha256(buf).hexdigest(), "pixels": int(lab.size),
            "predicted": predicted.cpu().tolist(), "kept": kept.tolist()}


def _summary(out: Path, rows: list[dict], labelled: int, threshold: float, mode: str, classes: list[str],
             seconds: float) -> dict:
    predicted = np.sum([r["predicted"] for r in rows], axis=0)
    kept = np.sum([r["kept"] for r in rows], axis=0)
    pixels = int(sum(r["pixels"] for r in rows))
    return {
        "out": str(out), "images": len(rows), "labelled": labelled, "skipped": len(rows) - labelled,
        "classes": classes, "threshold": threshold, "mode": mode,
        "kept_fraction": round(float(kept.sum()) / max(pixels, 1), 6),
        "per_class": [{"class": c, "predicted_pixels": int(p), "kept_pixels": int(k),
                       "kept_fraction": round(float(k) / float(p), 6) if p else None}
                      for c, p, k in zip(classes, predicted, kept)],
        "seconds": round(seconds, 2),
    }


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
