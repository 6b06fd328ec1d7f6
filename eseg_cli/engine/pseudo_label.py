"""Pseudo-labels for self-training: a teacher labels unlabelled images, keeping only confident pixels.

For every image the teacher's class probabilities come from its :class:`~eseg_cli.inference.Predictor`
(``predict_proba``: the inference path of evaluation, ``whole`` / ``slide`` / ``msflip``, with the normalisation
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

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eseg_cli.data.imageio import IMAGE_EXTS
from eseg_cli.errors import EsegError, write_error
from eseg_cli.events import Emitter, OnEvent
from eseg_cli.inference.files import collect_inputs, png_bytes
from eseg_cli.inference.modes import DEFAULT_SCALES, check_inference
from eseg_cli.inference.precision import amp_dtype
from eseg_cli.inference.predictor import Predictor
from eseg_cli.inference.runtime import resolve_device
from eseg_cli.run import resolve_checkpoint
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


def find_images(sources: Sequence[str | Path]) -> list[Path]:
    """Image files from folders (searched recursively), glob patterns and single files, found as ``eseg predict``
    finds them (:func:`~eseg_cli.inference.files.collect_inputs`); sorted, unique, no two of one name."""
    listed, videos = collect_inputs([Path(s).expanduser() for s in sources])
    if videos:
        raise EsegError(f"{videos[0]} is a video; pseudo-label labels images ({', '.join(IMAGE_EXTS)})")
    images = list(dict.fromkeys(p.resolve() for p, _ in listed))
    names: dict[str, Path] = {}
    for img in images:
        key = img.stem.casefold()  # A.png and a.jpg clash on case-insensitive file systems too
        if key in names:
            raise EsegError(f"two images share the name {img.stem!r} ({names[key]} and {img}); the folder "
                            "layout keys labels by image name, so label them into separate output folders")
        names[key] = img
    return images


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
                 scales=DEFAULT_SCALES, flip: bool = True, split: str = "train",
                 device: str = "auto", amp: str | None = None, use_ema: bool = True,
                 on_event: OnEvent | None = None) -> dict:
    """Label ``images`` with the teacher ``checkpoint`` into the folder dataset ``out_dir``; return the summary.

    Pixels whose top class probability is below ``threshold`` get 255. An earlier call into ``out_dir`` with
    the same teacher (the checkpoint's bytes) and settings is resumed: an image counts as done when its stats
    row names the same source file (path, size, modification time), its copy holds the same bytes and its mask
    the bytes written; anything else is labelled again. ``on_event`` gets progress events (task
    ``pseudo-label``, one step per image; the done ones count at the start).
    """
    if not 0.0 <= threshold <= 1.0:
        raise EsegError(f"threshold must be between 0 and 1 (a class probability), got {threshold}",
                        field="threshold")
    check_inference(mode, crop, stride, scales, crop_later=True)  # slide: the teacher's training crop
    layout = _Layout(Path(out_dir), path_component(split, "'split'", field="split"))
    files = find_images(images)
    if layout.out.exists() and not layout.out.is_dir():
        raise EsegError(f"output {layout.out} is a file; give a folder for the pseudo-labelled dataset")
    check_output_apart(layout.out, [Path(s).expanduser() for s in images if Path(s).expanduser().is_dir()], files)
    dev = resolve_device(device)
    amp_dtype(amp, dev)
    teacher = resolve_checkpoint(checkpoint)
    predictor = Predictor(teacher, dev, mode=mode, crop=crop, stride=stride, scales=scales, flip=flip, amp=amp,
                          use_ema=use_ema)
    crop = predictor.mode_kw["crop"]
    settings = {"checkpoint": str(Path(checkpoint).resolve()), "teacher_sha256": file_sha256(teacher),
                "step": predictor.checkpoint.get("step"), "threshold": threshold, "mode": mode,
                "crop": list(crop) if crop else None, "stride": list(stride) if stride else None,
                "scales": list(scales) if mode == "msflip" else None, "flip": flip if mode == "msflip" else None,
                "split": layout.split, "use_ema": use_ema, "amp": amp}
    with output_lock(layout.out, f"output folder {layout.out} is in use by another eseg pseudo-label; wait for it "
                                 "to finish, or choose another output folder"):
        done, cut = _previous_work(layout, settings)
        todo = [f for f in files if not _finished(done.get(f.stem), f, layout)]
        t0 = time.perf_counter()
        _label_all(predictor, todo, layout, done, len(files), Emitter(on_event, "pseudo-label", total=len(files)),
                   begin=lambda: _begin(layout, settings, predictor.class_names, predictor.palette, done, cut),
                   threshold=threshold)
        summary = _summary(layout.out, [done[f.stem] for f in files], len(todo), threshold, mode,
                           predictor.class_names, time.perf_counter() - t0)
        atomic_write_json(layout.manifest, {"settings": settings, "summary": summary})
    return summary


def _label_all(predictor: Predictor, todo: list[Path], layout: _Layout, done: dict[str, dict], total: int,
               emit: Emitter, *, begin, threshold: float) -> None:
    """Label ``todo`` one image at a time: image copy, mask, then its stats row (a crash in between redoes it)."""
    skipped = total - len(todo)
    emit("start", skipped)
    stats_f = None
    try:
        for i, path in enumerate(todo, 1):
            probs = predictor.predict_proba(path)
            if stats_f is None:
                begin()
                stats_f = open(layout.stats, "a", encoding="utf-8")
            done[path.stem] = _write_pair(path, probs, threshold, layout)
            stats_f.write(json.dumps(done[path.stem]) + "\n")
            stats_f.flush()
            emit("advance", skipped + i)
    finally:
        if stats_f is not None:
            stats_f.close()
    emit("end", total)


def threshold_mask(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, predicted)`` of ``CxHxW`` class probabilities: the top class per pixel as uint8, 255 where its
    probability is below ``threshold``; and the top class's pixel count per class (before the threshold)."""
    num_classes = probs.shape[0]
    label = probs.argmax(0)
    predicted = np.bincount(label.ravel(), minlength=num_classes)
    label[probs.max(0) < threshold] = 255
    return label.astype(np.uint8), predicted


def _write_pair(path: Path, probs: np.ndarray, threshold: float, layout: _Layout) -> dict:
    """Write the image copy and the mask of ``path``; return its stats row."""
    num_classes = probs.shape[0]
    lab, predicted = threshold_mask(probs, threshold)
    buf = png_bytes(lab)
    _link_or_copy(path, layout.image(path))
    atomic_write_bytes(layout.mask(path), buf)
    kept = np.bincount(lab[lab != 255].ravel(), minlength=num_classes)[:num_classes]
    st = path.stat()
    return {"name": path.stem, "source": str(path), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns,
            "mask_sha256": hashlib.sha256(buf).hexdigest(), "pixels": int(lab.size),
            "predicted": predicted.tolist(), "kept": kept.tolist()}


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
