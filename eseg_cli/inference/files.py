"""Predict on files: images, folders (recursive), globs and videos -> label PNGs, colour masks, overlays.

Per image ``<stem>`` (keeping the sub-folder layout of a folder input) in the output folder:

- ``<stem>.png``: class ids (trainIds; Cityscapes labelIds with ``ids="labelid"``);
- ``<stem>_color.png``: the colour mask (the dataset's palette);
- ``<stem>_overlay.jpg``: the mask alpha-blended over the image (unless ``overlay=False``);
- ``<stem>_confidence.png``: the winning class's probability x 255 (with ``confidence=True``).

A video (anything OpenCV reads) gives ``<stem>_overlay.mp4``. :func:`write_prediction` is the one writer of
these files (``eseg predict``, and ``eseg eval --save-predictions``).
"""

from __future__ import annotations

import contextlib
import glob
import io
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from eseg_cli.data.classes import cityscapes_trainid_to_labelid_lut, colorize, palette_array
from eseg_cli.data.classes import overlay as blend_mask
from eseg_cli.data.imageio import IMAGE_EXTS as IMAGE_SUFFIXES
from eseg_cli.data.imageio import as_rgb, oriented_size
from eseg_cli.errors import EsegError
from eseg_cli.events import Emitter, OnEvent
from eseg_cli.inference.predictor import BasePredictor
from eseg_cli.utils import atomic_write_bytes

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
IDS = ("trainid", "labelid")


def mixed_sizes(images: list[Path], videos: list[Path]) -> bool:
    """Whether the inputs hold images of more than one size, from the file headers only (EXIF rotation applied;
    a file whose header cannot be read is left out: reading it later says why). Videos count as another size
    beside images or beside another video (their frame size is not read here).

    ``predict --compile`` compiles graphs with symbolic sizes for mixed sizes; for one size a static graph
    compiles about 4x faster and runs about 1.5x faster (reports/benchmarks/README.md)."""
    if videos and (images or len(videos) > 1):
        return True
    sizes = set()
    for path in images:
        with contextlib.suppress(Exception):
            with Image.open(path) as im:
                sizes.add(oriented_size(im))
        if len(sizes) > 1:
            return True
    return False


def collect_inputs(inputs: list[str | Path]) -> tuple[list[tuple[Path, str]], list[Path]]:
    """Images as ``(path, output stem relative to the output folder)`` and videos, in a stable order.

    Raises :class:`EsegError` for a missing path, an empty folder, a glob with no match or a file of an
    unknown type. (Two inputs writing one output are refused by :func:`plan_outputs`.)
    """
    images: list[tuple[Path, str]] = []
    videos: list[Path] = []
    if not inputs:
        raise EsegError("no input given: pass images, folders or glob patterns")
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise EsegError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            images += [(p, str(p.relative_to(path).with_suffix(""))) for p in found]
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                videos.append(path)
            elif suffix in IMAGE_SUFFIXES:
                images.append((path, path.stem))
            else:
                raise EsegError(f"{path} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video "
                                f"({', '.join(VIDEO_SUFFIXES)})")
        elif any(ch in text for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()
                           and Path(p).suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
            if not found:
                raise EsegError(f"pattern {text!r} matches no image or video")
            for p in found:
                (videos.append(p) if p.suffix.lower() in VIDEO_SUFFIXES else images.append((p, p.stem)))
        else:
            raise EsegError(f"input {text} does not exist")
    return images, videos


def output_paths(stem: str, out_dir: Path, *, overlay: bool, confidence: bool) -> dict[str, Path]:
    paths = {"label": out_dir / f"{stem}.png", "color": out_dir / f"{stem}_color.png"}
    if overlay:
        paths["overlay"] = out_dir / f"{stem}_overlay.jpg"
    if confidence:
        paths["confidence"] = out_dir / f"{stem}_confidence.png"
    return paths


def video_output(path: Path, out_dir: Path) -> Path:
    return out_dir / f"{path.stem}_overlay.mp4"


def plan_outputs(images: list[tuple[Path, str]], videos: list[Path], out_dir: str | Path, *, overlay: bool = True,
                 confidence: bool = False, overwrite: bool = False, field: str = "out") -> list[dict[str, Path]]:
    """The output files of every image (and video), checked before anything is written: each name belongs to
    one input only (``street_color.png`` is an input's label map and ``street.png``'s colour mask; two
    ``clip.mp4`` from two folders), none is an input, and none exists unless ``overwrite``."""
    out_dir = Path(out_dir)
    targets = [output_paths(stem, out_dir, overlay=overlay, confidence=confidence) for _, stem in images]
    owners: dict[str, Path] = {}
    inputs = {str(p.resolve()).casefold() for p, _ in images} | {str(v.resolve()).casefold() for v in videos}
    outputs = [(src, p) for (src, _), t in zip(images, targets) for p in t.values()]
    outputs += [(v, video_output(v, out_dir)) for v in videos]
    for src, p in outputs:
        key = str(p.resolve()).casefold()  # case-insensitive file systems (macOS, Windows) clash on case too
        if key in owners:
            raise EsegError(f"inputs {owners[key]} and {src} would both write {p}; rename one, or predict them into "
                            "separate output folders", field=field)
        if key in inputs:
            raise EsegError(f"input {src} would write {p}, which is an input; choose another output folder",
                            field=field)
        owners[key] = src
    if not overwrite:
        existing = [p for _, p in outputs if p.exists()]
        if existing:
            raise EsegError(f"{len(existing)} output file(s) already exist (first: {existing[0]}); "
                            "allow overwriting or choose another output folder")
    return targets


def png_bytes(arr: np.ndarray) -> bytes:
    """An HxW or HxWx3 array as PNG file bytes (fast compression)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _jpg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:  # NaN fails both comparisons: refused too
        raise EsegError(f"'alpha' must be between 0 and 1, got {alpha}", field="alpha")


class _Images(Dataset):
    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        return i, as_rgb(self.files[i])


def _collate(batch):
    return batch


def write_prediction(targets: dict[str, Path], lab: np.ndarray, colors: np.ndarray, *,
                     to_ids: Callable[[np.ndarray], np.ndarray] = lambda m: m, image: np.ndarray | None = None,
                     alpha: float = 0.5, confidence: np.ndarray | None = None) -> None:
    """Write the files of one prediction that ``targets`` (:func:`output_paths`) names: the label PNG (uint16 past
    255), the colour mask, and the overlay over ``image`` and the confidence PNG where named. Each is written
    whole (atomically)."""
    atomic_write_bytes(targets["label"], png_bytes(to_ids(lab).astype(np.uint8 if lab.max(initial=0) < 256
                                                                    else np.uint16)))
    atomic_write_bytes(targets["color"], png_bytes(colorize(lab, colors)))
    if "overlay" in targets:
        atomic_write_bytes(targets["overlay"], _jpg(blend_mask(image, lab, colors, alpha)))
    if "confidence" in targets:
        atomic_write_bytes(targets["confidence"], png_bytes(confidence))


def _label_writer(ids: str, num_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    if ids not in IDS:
        raise EsegError(f"ids must be one of {', '.join(IDS)}, got {ids!r}")
    if ids == "trainid":
        return lambda m: m
    if num_classes != 19:
        raise EsegError(f"Cityscapes labelIds need a 19-class Cityscapes model; this one has {num_classes} classes")
    lut = cityscapes_trainid_to_labelid_lut()
    return lambda m: lut[m]


def predict_images(predictor: BasePredictor, images: list[tuple[Path, str]], out_dir: str | Path, *,
                   ids: str = "trainid", overlay: bool = True, alpha: float = 0.5, confidence: bool = False,
                   batch_size: int = 4, workers: int = 0, overwrite: bool = False,
                   on_event: OnEvent | None = None) -> dict:
    """Write the outputs of every image (see the module docstring); return a summary.

    Images are read by a DataLoader (``workers`` processes) and run in batches of equal-size images.
    ``on_event`` gets progress events (task ``predict``, one step per image). Existing outputs are refused
    unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EsegError(f"output {out_dir} is a file; give a folder")
    _check_alpha(alpha)
    if batch_size < 1 or workers < 0:
        raise EsegError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    to_ids = _label_writer(ids, predictor.num_classes)
    targets = plan_outputs(images, [], out_dir, overlay=overlay, confidence=confidence, overwrite=overwrite)
    colors = palette_array(predictor.palette)
    hist = np.zeros(max(predictor.num_classes, 1), dtype=np.int64)
    loader = DataLoader(_Images([p for p, _ in images]), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate)
    done, pixels, t0 = 0, 0, time.perf_counter()
    model_s = 0.0
    emit = Emitter(on_event, "predict", total=len(images))
    emit("start", 0)
    for batch in loader:
        # equal-size runs of the batch go through the network together
        groups: list[list] = []
        for item in batch:
            if groups and groups[-1][0][1].shape == item[1].shape:
                groups[-1].append(item)
            else:
                groups.append([item])
        for group in groups:
            arrays = [a for _, a in group]
            t1 = time.perf_counter()
            x = predictor.to_tensor(arrays)
            if confidence:
                labels, conf = predictor.labels_and_confidence(x)
                conf = (conf.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
            else:
                labels, conf = predictor.labels(x), None
            labels = labels.cpu().numpy()
            model_s += time.perf_counter() - t1
            for j, (i, arr) in enumerate(group):
                lab = labels[j]
                hist += np.bincount(lab.ravel(), minlength=len(hist))[: len(hist)]
                write_prediction(targets[i], lab, colors, to_ids=to_ids, image=arr, alpha=alpha,
                                 confidence=conf[j] if conf is not None else None)
                done += 1
                pixels += lab.size
                emit("advance", done, item=images[i][1])
    emit("end", done)
    seconds = time.perf_counter() - t0
    names = list(predictor.class_names) or [str(i) for i in range(len(hist))]
    return {
        "images": done, "seconds": round(seconds, 3), "images_per_s": round(done / seconds, 3) if seconds else None,
        "model_seconds": round(model_s, 3), "out_dir": str(out_dir), "ids": ids,
        "files_per_image": sorted(targets[0]) if targets else [],
        "class_histogram": {n: round(float(c) / max(pixels, 1), 6) for n, c in zip(names, hist) if c},
    }


def predict_video(predictor: BasePredictor, path: str | Path, out_dir: str | Path, *, alpha: float = 0.5,
                  overwrite: bool = False, on_event: OnEvent | None = None) -> dict:
    """Write ``<stem>_overlay.mp4``: every frame with its predicted mask blended over it. ``on_event`` gets
    progress events (task ``video``, item the file name, one step per frame; ``total`` as the file says)."""
    _check_alpha(alpha)
    path, out_dir = Path(path), Path(out_dir)
    out = video_output(path, out_dir)
    if out.exists() and not overwrite:
        raise EsegError(f"{out} already exists; allow overwriting or choose another output folder")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise EsegError(f"video {path} could not be opened by OpenCV")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    colors = palette_array(predictor.palette)
    frames, t0 = 0, time.perf_counter()
    try:
        frames = _overlay_frames(predictor, cap, writer, colors, alpha, Emitter(on_event, "video", total=total or None),
                                 path.name)
    finally:
        cap.release()
        writer.release()
        if frames == 0:  # Ctrl-C, a full disk, a model error, no frames: no half-written video is left behind
            tmp.unlink(missing_ok=True)
    if frames == 0:
        raise EsegError(f"video {path} has no readable frames")
    tmp.replace(out)
    seconds = time.perf_counter() - t0
    return {"video": str(path), "out": str(out), "frames": frames, "seconds": round(seconds, 3),
            "frames_per_s": round(frames / seconds, 3)}


def _overlay_frames(predictor: BasePredictor, cap, writer, colors: np.ndarray, alpha: float, emit: Emitter,
                    name: str) -> int:
    """Write every frame of ``cap`` with its mask blended over it; return the number of frames."""
    frames = 0
    emit("start", 0, item=name)
    while True:
        ok, bgr = cap.read()
        if not ok:
            emit("end", frames, item=name)
            return frames
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        lab = predictor.labels(predictor.to_tensor(rgb))[0].cpu().numpy()
        writer.write(np.ascontiguousarray(blend_mask(rgb, lab, colors, alpha)[:, :, ::-1]))
        frames += 1
        emit("advance", frames, item=name)
