"""Check datasets in their official layouts and make them training-ready.

* :func:`prepare_cityscapes` writes ``*_gtFine_labelTrainIds.png`` beside each label, from
  ``*_gtFine_labelIds.png`` or, where only those exist, by rasterising ``*_gtFine_polygons.json``.
* :func:`prepare_ade20k` checks ``ADEChallengeData2016`` (pairs, sizes, values) and reports counts;
  reduce-zero-label is applied by the dataset reader, so nothing is written.

Both check every pairing before converting anything, validate each file before writing its output,
write outputs atomically (temporary file + rename) and skip outputs newer than their sources unless
``force``. Problems raise :class:`~eseg_cli.errors.EsegError` naming the file and what to do.
"""

from __future__ import annotations

import io
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from eseg_cli.data.classes import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_LABEL,
    CITYSCAPES_NAME_TO_LABEL,
    IGNORE_INDEX,
    MAPILLARY_TO_CITYSCAPES,
    cityscapes_id_to_trainid_lut,
)
from eseg_cli.data.datasets import MapillaryDataset, mapillary_split_dirs, read_mapillary_config
from eseg_cli.data.imageio import UNREADABLE, oriented_size
from eseg_cli.errors import EsegError
from eseg_cli.events import Emitter, OnEvent
from eseg_cli.utils import MAX_SIDE, atomic_write_bytes, path_component

CITYSCAPES_SPLITS = ("train", "val", "test")  # train_extra has only gtCoarse
IMG_SUFFIX = "_leftImg8bit.png"


# ----------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------

def _image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """(width, height) of an image after decoding it completely (``verify()`` alone passes truncated JPEGs)."""
    try:
        with Image.open(path) as im:
            size = oriented_size(im)  # as read for training (upright)
            im.load()  # decodes every pixel: truncated and corrupt files raise here
        return size
    except UNREADABLE as e:
        raise EsegError(f"{path}: unreadable or corrupt {what} ({e}); re-extract or replace the file") from None


def _read_label_array(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P"):
                raise EsegError(f"{path}: expected a single-channel 8-bit label PNG, got mode {im.mode}; "
                                "re-extract the official file")
            return np.asarray(im)
    except EsegError:
        raise
    except UNREADABLE as e:
        raise EsegError(f"{path}: unreadable or corrupt label ({e}); re-extract or replace the file") from None


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _up_to_date(out: Path, src: Path) -> bool:
    try:
        return out.stat().st_mtime >= src.stat().st_mtime
    except FileNotFoundError:
        return False


def _run(jobs: list, fn, workers: int, on_event: OnEvent | None) -> list:
    """Run ``fn`` over ``jobs`` (in processes if workers > 1); errors come back as values, not raised
    mid-way, so that every job that can finish does, and the first error is reported at the end."""
    results = []
    total = len(jobs)
    emit = Emitter(on_event, "prepare", total=total)
    emit("start", 0)
    if workers > 1 and total > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for i, r in enumerate(ex.map(_safe, [fn] * total, jobs, chunksize=max(1, min(16, total // 64))), 1):
                results.append(r)
                emit("advance", i)
    else:
        for i, job in enumerate(jobs, 1):
            results.append(_safe(fn, job))
            emit("advance", i)
    emit("end", total)
    errors = [r for r in results if isinstance(r, EsegError)]
    if errors:
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise EsegError(f"{errors[0]}{more}")
    return results


def _safe(fn, job):
    try:
        return fn(job)
    except EsegError as e:
        return e


# ----------------------------------------------------------------------------------------------------------
# Cityscapes
# ----------------------------------------------------------------------------------------------------------

def polygons_to_trainids(path: Path) -> np.ndarray:
    """Rasterise one ``*_gtFine_polygons.json`` into trainIds (HxW uint8, 255 = ignore).

    As in cityscapesScripts' ``json2labelImg``: start from 'unlabeled', draw the objects in file order
    (later ones on top), skip deleted ones, map ``<label>group`` to ``<label>``, skip labels with id < 0.
    """
    try:
        ann = json.loads(Path(path).read_text())
        h, w = int(ann["imgHeight"]), int(ann["imgWidth"])
        objects = ann["objects"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise EsegError(f"{path}: unreadable or corrupt polygon file ({type(e).__name__}: {e}); "
                        "re-extract gtFine") from None
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE) or not isinstance(objects, list):
        raise EsegError(f"{path}: malformed polygon file (imgHeight/imgWidth {h}x{w} must be 1..{MAX_SIDE}, "
                        "'objects' a list); re-extract gtFine")
    out = Image.new("L", (w, h), CITYSCAPES_NAME_TO_LABEL["unlabeled"].train_id)
    draw = ImageDraw.Draw(out)
    for k, obj in enumerate(objects):
        try:
            _draw_object(draw, obj)
        except EsegError as e:
            raise EsegError(f"{path}: {e}") from None
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            raise EsegError(f"{path}: object {k} is malformed ({type(e).__name__}: {e}); each object needs a "
                            "'label' and a 'polygon' list of [x, y] points; fix or re-extract gtFine") from None
    return np.asarray(out)


def _draw_object(draw, obj: dict) -> None:
    """Draw one polygon object in its trainId (nothing for deleted objects and labels with id < 0)."""
    if obj.get("deleted"):
        return
    name = obj.get("label", "")
    if name not in CITYSCAPES_NAME_TO_LABEL and name.endswith("group"):
        name = name[: -len("group")]
    if name not in CITYSCAPES_NAME_TO_LABEL:
        raise EsegError(f"unknown label {obj.get('label')!r}; only the 35 official Cityscapes "
                        "labels are accepted (fix or remove the object)")
    lab = CITYSCAPES_NAME_TO_LABEL[name]
    if lab.id < 0:
        return
    pts = [(float(p[0]), float(p[1])) for p in obj.get("polygon", [])]
    if any(len(p) != 2 for p in obj.get("polygon", [])):
        raise ValueError("a polygon point is not [x, y]")
    if len(pts) >= 2:
        draw.polygon(pts, fill=lab.train_id, outline=lab.train_id)


def _city_label_sources(img: Path, root: Path, split: str) -> tuple[Path | None, Path | None, Path]:
    stem = img.name[: -len(IMG_SUFFIX)]
    d = root / "gtFine" / split / img.parent.name
    ids = d / f"{stem}_gtFine_labelIds.png"
    poly = d / f"{stem}_gtFine_polygons.json"
    return (ids if ids.is_file() else None), (poly if poly.is_file() else None), d / f"{stem}_gtFine_labelTrainIds.png"


_KNOWN_IDS = np.zeros(256, dtype=bool)
_KNOWN_IDS[list(CITYSCAPES_ID_TO_LABEL)] = True


def _convert_cityscapes(job) -> dict:
    img, ids, poly, out, force = job
    w, h = _image_size(img)
    if not force and _up_to_date(out, ids or poly):
        # skipped, but its classes still count in the summary
        arr = _read_label_array(out)
        return {"skipped": True, "counts": np.bincount(arr.ravel(), minlength=256)}
    if ids is not None:
        lab = _read_label_array(ids)
        bad = np.unique(lab[~_KNOWN_IDS[lab]])
        if bad.size:
            raise EsegError(f"{ids}: label values {bad.tolist()[:8]} are not Cityscapes labelIds (0..33); "
                            "re-extract the official gtFine file")
        train = cityscapes_id_to_trainid_lut()[lab]
        src = ids
    else:
        train = polygons_to_trainids(poly)
        src = poly
    if train.shape != (h, w):
        raise EsegError(f"{src}: label is {train.shape[1]}x{train.shape[0]} but its image {img} is {w}x{h}; "
                        "labels must match their images (re-extract, or resize both together)")
    atomic_write_bytes(out, _png_bytes(train))
    return {"skipped": False, "counts": np.bincount(train.ravel(), minlength=256)}


def scan_cityscapes(root, splits=None) -> list[tuple[str, Path, Path | None, Path | None, Path]]:
    """Check the layout and pair every image with its label source; returns
    ``(split, image, labelIds or None, polygons or None, output)`` rows. Raises on any mismatch."""
    root = Path(root)
    if not root.is_dir():
        raise EsegError(f"'root' {root} does not exist or is not a folder; point it at the Cityscapes root "
                        "(the folder holding leftImg8bit/ and gtFine/)", field="root")
    for sub in ("leftImg8bit", "gtFine"):
        if not (root / sub).is_dir():
            raise EsegError(f"{root / sub} not found: a Cityscapes root holds leftImg8bit/ and gtFine/ "
                            "(unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip there)")
    if splits is None:
        splits = [s for s in CITYSCAPES_SPLITS if (root / "leftImg8bit" / s).is_dir()]
        if not splits:
            raise EsegError(f"{root / 'leftImg8bit'}: no split folders (train, val, test) found")
    rows = []
    for split in splits:
        path_component(split, "'split'", field="split")  # outputs are written under it
        img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        if not img_dir.is_dir():
            raise EsegError(f"{img_dir} not found; the split {split!r} is missing")
        if not gt_dir.is_dir():
            raise EsegError(f"{gt_dir} not found: images of split {split!r} have no gtFine labels")
        images = sorted(img_dir.glob(f"*/*{IMG_SUFFIX}"))
        stems = set()
        for img in images:
            ids, poly, out = _city_label_sources(img, root, split)
            if ids is None and poly is None:
                want = out.name.replace("labelTrainIds", "labelIds")
                raise EsegError(f"{img}: no label for this image (expected {want} or *_gtFine_polygons.json "
                                f"in {out.parent}); add it or remove the image")
            rows.append((split, img, ids, poly, out))
            stems.add((img.parent.name, img.name[: -len(IMG_SUFFIX)]))
        for lab in sorted(gt_dir.glob("*/*_gtFine_labelIds.png")) + sorted(gt_dir.glob("*/*_gtFine_polygons.json")):
            stem = lab.name.split("_gtFine_")[0]
            if (lab.parent.name, stem) not in stems:
                want = img_dir / lab.parent.name / (stem + IMG_SUFFIX)
                raise EsegError(f"{lab}: label without an image (expected {want}); add the image or remove "
                                "the label")
    if not rows:
        raise EsegError(f"{root / 'leftImg8bit'}: no *{IMG_SUFFIX} images found")
    return rows


def prepare_cityscapes(root, splits=None, workers: int = 1, force: bool = False,
                       on_event: OnEvent | None = None) -> dict:
    """Write ``*_gtFine_labelTrainIds.png`` for every Cityscapes image; returns a summary dict
    (files converted/skipped per split, classes seen, seconds)."""
    t0 = time.perf_counter()
    rows = scan_cityscapes(root, splits)
    jobs = [(img, ids, poly, out, force) for _, img, ids, poly, out in rows]
    results = _run(jobs, _convert_cityscapes, workers, on_event)
    per_split: dict[str, dict[str, int]] = {}
    counts = np.zeros(256, np.int64)
    from_polygons = 0
    for (split, _, ids, _, _), r in zip(rows, results, strict=True):
        s = per_split.setdefault(split, {"images": 0, "converted": 0, "skipped": 0})
        s["images"] += 1
        s["skipped" if r["skipped"] else "converted"] += 1
        from_polygons += int(ids is None and not r["skipped"])
        counts += r["counts"]
    summary = {
        "dataset": "cityscapes",
        "root": str(Path(root)),
        "splits": per_split,
        "files": len(rows),
        "converted": sum(s["converted"] for s in per_split.values()),
        "skipped": sum(s["skipped"] for s in per_split.values()),
        "from_polygons": from_polygons,
        "classes_seen": [n for i, n in enumerate(CITYSCAPES_CLASSES) if counts[i] > 0],
        "ignored_pixels": int(counts[IGNORE_INDEX]),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    extra = find_train_extra(root)
    if extra is not None:
        summary["unlabelled"] = extra
    return summary


def find_train_extra(root) -> dict | None:
    """Cityscapes ``leftImg8bit/train_extra`` (the coarse set's 19,998 images): unlabelled images for
    self-training (``eseg pseudo-label --images ROOT/leftImg8bit/train_extra``). Counts and names only."""
    d = Path(root) / "leftImg8bit" / "train_extra"
    if not d.is_dir():
        return None
    images = sorted(d.glob(f"*/*{IMG_SUFFIX}"))
    if not images:
        raise EsegError(f"{d}: no <city>/*{IMG_SUFFIX} images; re-extract leftImg8bit_trainextra.zip or remove it")
    return {"train_extra": {"images": len(images), "cities": len({p.parent.name for p in images}), "folder": str(d),
                            "use": f"eseg pseudo-label --checkpoint TEACHER --images {d} --out DIR"}}


# ----------------------------------------------------------------------------------------------------------
# ADE20K
# ----------------------------------------------------------------------------------------------------------

ADE_SPLITS = {"training": "train", "validation": "val"}


def _check_ade(job) -> np.ndarray:
    img, ann = job
    w, h = _image_size(img)
    lab = _read_label_array(ann)
    if lab.shape != (h, w):
        raise EsegError(f"{ann}: annotation is {lab.shape[1]}x{lab.shape[0]} but its image {img.name} is "
                        f"{w}x{h}; annotations must match their images")
    if lab.size and lab.max() > len(ADE20K_CLASSES):
        raise EsegError(f"{ann}: annotation value {int(lab.max())} is outside 0..150 (0 = other, 1..150 = "
                        "classes); re-extract ADEChallengeData2016")
    return np.bincount(lab.ravel(), minlength=256)


def _pair_by_stem(img_dir: Path, label_dir: Path, label: str) -> tuple[dict, dict]:
    """Images (.jpg/.jpeg/.png) and ``label`` PNGs of two folders by file stem; an image without its ``label``,
    or a ``label`` without its image, is an error naming the first one and the count."""
    imgs = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    labs = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() == ".png"}
    for stem in sorted(set(imgs) - set(labs)):
        raise EsegError(f"{imgs[stem]}: no {label} {stem}.png in {label_dir}; add it or remove the image "
                        f"({len(set(imgs) - set(labs))} image(s) without {label})")
    for stem in sorted(set(labs) - set(imgs)):
        raise EsegError(f"{labs[stem]}: {label} without an image {stem}.jpg in {img_dir}; add the image "
                        f"or remove the {label} ({len(set(labs) - set(imgs))} such {label}(s))")
    return imgs, labs


def scan_ade20k(root) -> tuple[Path, list[tuple[str, Path, Path]]]:
    """Locate ``ADEChallengeData2016`` under ``root`` and pair images with annotations."""
    root = Path(root)
    if not root.is_dir():
        raise EsegError(f"'root' {root} does not exist or is not a folder; point it at ADEChallengeData2016 "
                        "or the folder holding it", field="root")
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    present = [s for s in ADE_SPLITS if (base / "images" / s).is_dir() or (base / "annotations" / s).is_dir()]
    if not present:
        raise EsegError(f"{base}: expected images/{{training,validation}} and annotations/{{training,validation}} "
                        "(the ADEChallengeData2016 layout)")
    rows = []
    for s in present:
        img_dir, ann_dir = base / "images" / s, base / "annotations" / s
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise EsegError(f"{d} not found: both images/{s} and annotations/{s} are needed")
        imgs, anns = _pair_by_stem(img_dir, ann_dir, "annotation")
        rows += [(ADE_SPLITS[s], imgs[k], anns[k]) for k in sorted(imgs)]
    return base, rows


def prepare_ade20k(root, workers: int = 1, on_event: OnEvent | None = None) -> dict:
    """Check an ADE20K SceneParsing copy (pairs, sizes, values, readability); returns counts."""
    t0 = time.perf_counter()
    base, rows = scan_ade20k(root)
    results = _run([(img, ann) for _, img, ann in rows], _check_ade, workers, on_event)
    counts = np.zeros(256, np.int64)
    per_split: dict[str, dict[str, int]] = {}
    for (split, _, _), c in zip(rows, results, strict=True):
        per_split.setdefault(split, {"images": 0})["images"] += 1
        counts += c
    return {
        "dataset": "ade20k",
        "root": str(base),
        "splits": per_split,
        "files": len(rows),
        "reduce_zero_label": True,
        "classes_seen": [n for i, n in enumerate(ADE20K_CLASSES) if counts[i + 1] > 0],
        "other_pixels": int(counts[0]),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def default_workers() -> int:
    """Workers for preparation when not given: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


# ----------------------------------------------------------------------------------------------------------
# Mapillary Vistas v1.2
# ----------------------------------------------------------------------------------------------------------

def _check_mapillary(job) -> np.ndarray:
    img, lab, n_labels = job
    w, h = _image_size(img)
    arr = _read_label_array(lab)
    if arr.shape != (h, w):
        raise EsegError(f"{lab}: label is {arr.shape[1]}x{arr.shape[0]} but its image {img.name} is {w}x{h}; "
                        "labels must match their images")
    if arr.size and arr.max() >= n_labels:
        raise EsegError(f"{lab}: label value {int(arr.max())} is outside the {n_labels} labels of the dataset's "
                        "config; re-extract the v1.2 labels")
    return np.bincount(arr.ravel(), minlength=256)


def scan_mapillary(root) -> tuple[list[dict], list[tuple[str, Path, Path]]]:
    """The label definitions and ``(split, image, label)`` rows of a Mapillary Vistas v1.2 copy."""
    root = Path(root)
    if not root.is_dir():
        raise EsegError(f"'root' {root} does not exist or is not a folder; point it at the Mapillary Vistas root "
                        "(the folder holding training/, validation/ and config_v1.2.json)", field="root")
    labels = read_mapillary_config(root)
    present = [s for s in ("training", "validation") if (root / s).is_dir()]
    if not present:
        raise EsegError(f"{root}: expected training/ and validation/ (the Mapillary Vistas layout)")
    rows = []
    for sub in present:
        split = {v: k for k, v in MapillaryDataset.SPLITS.items() if k in ("train", "val")}[sub]
        img_dir, lab_dir = mapillary_split_dirs(root, split)
        imgs, labs = _pair_by_stem(img_dir, lab_dir, "label")
        if not imgs:
            raise EsegError(f"{img_dir}: no images found")
        rows += [(split, imgs[k], labs[k]) for k in sorted(imgs)]
    return labels, rows


def prepare_mapillary(root, workers: int = 1, on_event: OnEvent | None = None) -> dict:
    """Check a Mapillary Vistas v1.2 copy (config, pairs, sizes, label values, readability); returns counts.
    Labels are mapped by the dataset reader (65 classes, or Cityscapes' 19), so nothing is written."""
    t0 = time.perf_counter()
    labels, rows = scan_mapillary(root)
    results = _run([(img, lab, len(labels)) for _, img, lab in rows], _check_mapillary, workers, on_event)
    counts = np.zeros(256, np.int64)
    per_split: dict[str, dict[str, int]] = {}
    for (split, _, _), c in zip(rows, results, strict=True):
        per_split.setdefault(split, {"images": 0})["images"] += 1
        counts += c
    evaluated = [lab for lab in labels if lab.get("evaluate", True)]
    mapped = sum(int(counts[i]) for i, lab in enumerate(labels) if lab["name"] in MAPILLARY_TO_CITYSCAPES)
    return {
        "dataset": "mapillary",
        "root": str(Path(root)),
        "splits": per_split,
        "files": len(rows),
        "labels": len(labels),
        "classes": len(evaluated),
        "classes_seen": [lab["name"] for i, lab in enumerate(labels) if counts[i] > 0],
        "cityscapes_mapped_pixels": round(mapped / max(int(counts.sum()), 1), 4),
        "seconds": round(time.perf_counter() - t0, 2),
    }
