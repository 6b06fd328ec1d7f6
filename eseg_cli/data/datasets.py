"""Dataset readers (Cityscapes, ADE20K, synthetic, generic folder) and the name registry.

Every dataset yields ``(image, mask)``: a normalized float32 tensor 3xHxW and an int64 tensor HxW whose
ignored pixels are 255, and exposes ``classes``, ``palette``, ``ignore_index``, ``num_classes`` and
``files`` (a list of ``(image_path, label_path)``).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from eseg_cli.data.classes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    MAPILLARY_TO_CITYSCAPES,
    cityscapes_id_to_trainid_lut,
)
from eseg_cli.data.imageio import IMAGE_EXTS, open_image, read_rgb, read_upright
from eseg_cli.data.synthetic import ensure_default
from eseg_cli.data.transforms import build_transforms
from eseg_cli.errors import EsegError
from eseg_cli.utils import path_component

_DATASETS: dict[str, type[SegmentationDataset]] = {}


def register_dataset(name: str) -> Callable[[type], type]:
    """Class decorator: make a dataset reachable as ``build_dataset(name, ...)``."""
    def deco(cls):
        _DATASETS[name] = cls
        cls.name = name
        return cls
    return deco


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return list(_DATASETS)


def dataset_class(name: str) -> type[SegmentationDataset]:
    """The registered class for ``name`` (for its ``classes``, ``palette`` and registered ``name``), spelled
    loosely: any case, with or without ``-``/``_``, ``ade`` for ``ade20k``."""
    def norm(n: str) -> str:
        return n.strip().lower().replace("-", "").replace("_", "")

    key = {"ade": "ade20k"}.get(norm(str(name)), norm(str(name)))
    key = {norm(k): k for k in _DATASETS}.get(key, key)
    if key not in _DATASETS:
        close = difflib.get_close_matches(key, list(_DATASETS), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise EsegError(f"unknown dataset {name!r}.{hint} Available: {', '.join(_DATASETS)}")
    return _DATASETS[key]


def build_dataset(name: str, root, split: str, transform=None, **kw) -> SegmentationDataset:
    """Build a registered dataset: ``build_dataset("cityscapes", "data/cityscapes", "train", t)``.

    ``transform`` is an albumentations pipeline from :func:`~eseg_cli.data.build_transforms`; when
    ``None``, images are only normalized. For ``"synthetic"``, ``root=None`` means the default set
    (generated once into the cache); every other dataset needs its root.
    """
    cls = dataset_class(name)
    path_component(split, "'split'", field="split")  # a folder name: '../x' would read another tree
    if (root is None or str(root) == "") and not cls.builtin_root:
        raise EsegError(f"dataset {cls.name!r} needs its root folder ('data_root'); only synthetic has a built-in set",
                        field=("data_root", "root"))
    return cls(root, split, transform=transform, **kw)


def read_image(path: Path) -> np.ndarray:
    """An RGB image as HxWx3 uint8, upright, 16-bit data scaled (:mod:`eseg_cli.data.imageio`); unreadable files
    raise EsegError naming them."""
    return read_rgb(path)


def read_label(path: Path) -> np.ndarray:
    """A single-channel label image as HxW uint8 (palette PNGs keep their indices), turned as its EXIF
    orientation says (as its image is)."""
    im = read_upright(path, "label")
    if im.mode not in ("L", "P", "I", "I;16"):
        raise EsegError(f"{path}: a label must be a single-channel PNG (mode L/P), got mode {im.mode}; "
                        "convert it to class indices")
    arr = np.array(im)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise EsegError(f"{path}: label values outside 0..255; labels must be class indices")
        arr = arr.astype(np.uint8)
    return arr


class SegmentationDataset(Dataset):
    """Common behaviour: pairs of files, a label mapping, the transform, tensors out."""

    name = "base"
    classes: list[str] = []
    palette: list[tuple[int, int, int]] = []
    ignore_index = IGNORE_INDEX
    #: whether ``root=None`` means a built-in set (only the synthetic one)
    builtin_root = False

    def __init__(self, files: list[tuple[Path, Path]], transform=None):
        self.files = files
        self._decoded: list[tuple[np.ndarray, np.ndarray]] | None = None  # from preload()
        if transform is None:
            transform = build_transforms(train=False)
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def map_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        """Raw label file values -> training indices (0..num_classes-1, ignore 255)."""
        return label

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw ``(image HxWx3 uint8, mask HxW uint8)`` pair, before the transform (a copy of the decoded pair
        after :meth:`preload`, so that no transform can change what the next epoch reads)."""
        if self._decoded is not None:
            img, mask = self._decoded[index]
            return img.copy(), mask.copy()
        return self.read_pair(index)

    def read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``load`` from the files: decode, map and check one pair."""
        ip, lp = self.files[index]
        img = read_image(ip)
        mask = self.map_label(read_label(lp), lp)
        if img.shape[:2] != mask.shape:
            raise EsegError(f"{lp}: label is {mask.shape[1]}x{mask.shape[0]} but its image {ip.name} is "
                            f"{img.shape[1]}x{img.shape[0]}; labels must match their images pixel for pixel")
        self.check_label_values(mask, lp)
        return img, mask

    def decoded_bytes(self) -> int:
        """The memory every pair takes decoded (image RGB + label), from the image headers alone."""
        total = 0
        for ip, _ in self.files:
            with open_image(ip) as im:
                total += im.width * im.height * 4
        return total

    def preload(self) -> int:
        """Decode every pair into memory once; :meth:`load` then serves copies of them (no file is read again,
        and DataLoader workers share the arrays with the process that forked them). Returns the bytes held."""
        self._decoded = None
        decoded = [self.read_pair(i) for i in range(len(self))]
        self._decoded = decoded
        return sum(img.nbytes + mask.nbytes for img, mask in decoded)

    def check_label_values(self, mask: np.ndarray, path: Path) -> None:
        """Refuse (naming ``path``) a mapped label with values that are neither a class index nor the ignore
        index; otherwise the loss fails with an IndexError (a device assert on CUDA) far from the cause."""
        n = self.num_classes
        if n >= 256 or mask.size == 0:
            return
        top = int(mask.max())
        if top < n:
            return
        vals = np.unique(mask)
        bad = vals[(vals >= n) & (vals != self.ignore_index)]
        if bad.size:
            raise EsegError(f"{path}: label values {bad.tolist()[:8]} are outside 0..{n - 1} (and "
                            f"{self.ignore_index} = ignore) for the {n} classes of {self.name}; fix the label, or "
                            "prepare the dataset (labelIds must be converted to trainIds)")

    def _reseed_in_worker(self) -> None:
        # albumentations keeps its own generators, which forked DataLoader workers would all inherit in the
        # same state (identical augmentations in every worker, repeated every epoch). torch.initial_seed()
        # differs per worker and per epoch and follows torch.manual_seed, so reseed from it once per worker.
        info = torch.utils.data.get_worker_info()
        if info is None or not hasattr(self.transform, "set_random_seed"):
            return
        seed = torch.initial_seed() % 2**32
        if getattr(self, "_worker_seed", None) != seed:
            self.transform.set_random_seed(seed)
            self._worker_seed = seed

    def __getitem__(self, index: int):
        self._reseed_in_worker()
        img, mask = self.load(index)
        out = self.transform(image=img, mask=mask)
        m = out["mask"]
        m = torch.as_tensor(np.asarray(m)) if not isinstance(m, torch.Tensor) else m
        return out["image"], m.long()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {self.num_classes} classes)"


def _pair_files(images: list[Path], label_for: Callable[[Path], Path], hint: str):
    """Pair images with labels; any image without its label is an error naming it."""
    files = []
    for ip in images:
        lp = label_for(ip)
        if not lp.is_file():
            raise EsegError(f"{ip}: no label {lp.name} for this image in {lp.parent}; {hint}")
        files.append((ip, lp))
    return files


@register_dataset("cityscapes")
class CityscapesDataset(SegmentationDataset):
    """Cityscapes in its official layout; reads ``*_gtFine_labelTrainIds.png`` (from ``eseg
    prepare-data cityscapes``), or converts ``*_gtFine_labelIds.png`` on the fly where those are absent."""

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def __init__(self, root, split: str = "train", transform=None):
        root = Path(root)
        img_dir = root / "leftImg8bit" / split
        if not img_dir.is_dir():
            raise EsegError(f"{img_dir} not found: expected the Cityscapes layout leftImg8bit/{split}/<city>/"
                            f"*_leftImg8bit.png under {root}")
        images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise EsegError(f"{img_dir}: no *_leftImg8bit.png images found in its city folders")
        self.root, self.split = root, split
        self._lut = cityscapes_id_to_trainid_lut()
        super().__init__(_pair_files(images, self._label_path,
                                     "prepare the labels (eseg prepare-data cityscapes) or add the gtFine files"),
                         transform)

    def _label_path(self, ip: Path) -> Path:
        stem = ip.name[: -len("_leftImg8bit.png")]
        d = self.root / "gtFine" / self.split / ip.parent.name
        p = d / f"{stem}_gtFine_labelTrainIds.png"
        return p if p.is_file() or not (d / f"{stem}_gtFine_labelIds.png").is_file() else \
            d / f"{stem}_gtFine_labelIds.png"

    def map_label(self, label, path):
        if path.name.endswith("_labelIds.png"):
            return self._lut[label]
        return label


@register_dataset("synthetic")
class SyntheticDataset(CityscapesDataset):
    """The generated street scenes (Cityscapes layout and trainIds). ``root=None``: the default set (the one
    place that resolves it; ``ds.root`` tells where it is)."""

    builtin_root = True

    def __init__(self, root=None, split: str = "train", transform=None):
        if root is None or str(root) == "":
            root = ensure_default()
        root = Path(root)
        if not (root / "leftImg8bit").is_dir():
            raise EsegError(f"{root} holds no synthetic set; generate one there (eseg prepare-data synthetic), or "
                            "give no root for the built-in set")
        super().__init__(root, split, transform)


@register_dataset("ade20k")
class ADE20KDataset(SegmentationDataset):
    """ADE20K SceneParsing (``ADEChallengeData2016``) with reduce-zero-label: annotation 0 ("other")
    becomes ignore (255) and class k becomes k-1, giving the 150 benchmark classes."""

    classes = ADE20K_CLASSES
    palette = ADE20K_PALETTE
    reduce_zero_label = True
    SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}

    def __init__(self, root, split: str = "train", transform=None):
        root = Path(root)
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        if split not in self.SPLITS:
            raise EsegError(f"ADE20K split must be train or val, got {split!r}")
        sub = self.SPLITS[split]
        img_dir, ann_dir = root / "images" / sub, root / "annotations" / sub
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise EsegError(f"{d} not found: expected ADEChallengeData2016/{{images,annotations}}/{sub}")
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not images:
            raise EsegError(f"{img_dir}: no images found")
        self.root, self.split = root, split
        self._lut = np.arange(256, dtype=np.uint8) - 1  # 0 -> 255 by uint8 wrap-around, k -> k-1
        self._lut[255] = IGNORE_INDEX
        super().__init__(_pair_files(images, lambda ip: ann_dir / f"{ip.stem}.png",
                                     "every image needs its annotation PNG"), transform)

    def map_label(self, label, path):
        return self._lut[label] if self.reduce_zero_label else label


@register_dataset("folder")
class FolderDataset(SegmentationDataset):
    """A generic folder: ``images/<split>/*.{png,jpg}``, ``masks/<split>/<same stem>.png`` (class
    indices, 255 = ignore) and ``classes.txt`` (one class per line, optionally ``name R G B``)."""

    def __init__(self, root, split: str = "train", transform=None, classes=None):
        root = Path(root)
        self.root, self.split = root, split
        img_dir, mask_dir = root / "images" / split, root / "masks" / split
        for d in (img_dir, mask_dir):
            if not d.is_dir():
                raise EsegError(f"{d} not found: a folder dataset needs images/<split>/ and masks/<split>/")
        names, palette = self._read_classes(root / "classes.txt") if classes is None else (list(classes), [])
        self.classes = names
        self.palette = palette or _auto_palette(len(names))
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not images:
            raise EsegError(f"{img_dir}: no images found")
        super().__init__(_pair_files(images, lambda ip: mask_dir / f"{ip.stem}.png",
                                     "every image needs a mask PNG with the same name"), transform)

    @staticmethod
    def _read_classes(path: Path):
        if not path.is_file():
            raise EsegError(f"{path} not found: list the class names, one per line (optionally 'name R G B')")
        names, palette = [], []
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise EsegError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
        except OSError as e:
            raise EsegError(f"{path} cannot be read ({e.strerror or e})") from None
        for line in text.splitlines():
            parts = line.strip().split()
            if not parts:
                continue
            if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
                names.append(" ".join(parts[:-3]))
                palette.append(tuple(int(p) for p in parts[-3:]))
            else:
                names.append(" ".join(parts))
        if not names:
            raise EsegError(f"{path}: no class names")
        if palette and len(palette) != len(names):
            raise EsegError(f"{path}: give a colour on every line or on none")
        return names, palette

    def map_label(self, label, path):
        bad = label[(label >= self.num_classes) & (label != IGNORE_INDEX)]
        if bad.size:
            raise EsegError(f"{path}: label value {int(bad.max())} is outside 0..{self.num_classes - 1} "
                            f"(and 255 = ignore) for the {self.num_classes} classes of classes.txt")
        return label


def _auto_palette(n: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(12345)
    return [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(n)]


def read_mapillary_config(root: Path) -> list[dict]:
    """The ``labels`` of a Mapillary Vistas ``config_v1.2.json`` (or v1.2's ``config.json``) under ``root``."""
    for name in ("config_v1.2.json", "config.json"):
        path = root / name
        if path.is_file():
            break
    else:
        raise EsegError(f"{root}: no config_v1.2.json or config.json; the Mapillary Vistas root holds the label "
                        "definitions there")
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
        if not all(isinstance(lab, dict) and isinstance(lab["name"], str) for lab in labels):
            raise TypeError("every label needs a name")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise EsegError(f"{path}: not a Mapillary Vistas config ({type(e).__name__}: {e}); expected "
                        '{"labels": [{"name": ..., "color": [r, g, b], "evaluate": true}, ...]}') from None
    if not labels or len(labels) > 255:
        raise EsegError(f"{path}: expected 1..255 labels, found {len(labels)}")
    return labels


def mapillary_split_dirs(root: Path, split: str) -> tuple[Path, Path]:
    """``(images, labels)`` folders of a split: ``training|validation/images`` and ``.../v1.2/labels``
    (the v2.0 download) or ``.../labels`` (the v1.2 download)."""
    sub = MapillaryDataset.SPLITS.get(split)
    if sub is None:
        raise EsegError(f"Mapillary Vistas split must be train or val (training/validation), got {split!r}")
    img_dir = root / sub / "images"
    lab_dir = root / sub / "v1.2" / "labels"
    if not lab_dir.is_dir():
        lab_dir = root / sub / "labels"
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise EsegError(f"{d} not found: expected the Mapillary Vistas v1.2 layout {sub}/images/*.jpg and "
                            f"{sub}/v1.2/labels/*.png under {root}")
    return img_dir, lab_dir


@register_dataset("mapillary")
class MapillaryDataset(SegmentationDataset):
    """Mapillary Vistas v1.2: its evaluated classes (65) from the dataset's config, the others ignored (255).

    ``dataset: mapillary-cityscapes`` (:class:`MapillaryCityscapesDataset`) maps the labels to Cityscapes'
    19 trainIds instead, for pretraining a Cityscapes model."""

    SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}

    def __init__(self, root, split: str = "train", transform=None):
        root = Path(root)
        self.root, self.split = root, split
        self.labels = read_mapillary_config(root)
        self._setup_classes()
        img_dir, lab_dir = mapillary_split_dirs(root, split)
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not images:
            raise EsegError(f"{img_dir}: no images found")
        super().__init__(_pair_files(images, lambda ip: lab_dir / f"{ip.stem}.png",
                                     "every image needs its v1.2 label PNG"), transform)

    def _setup_classes(self) -> None:
        kept = [i for i, lab in enumerate(self.labels) if lab.get("evaluate", True)]
        self.classes = [self.labels[i].get("readable") or self.labels[i]["name"] for i in kept]
        self.palette = [tuple(int(c) for c in self.labels[i].get("color") or (0, 0, 0)) for i in kept]
        self._lut = np.full(256, IGNORE_INDEX, np.uint8)
        self._lut[kept] = np.arange(len(kept), dtype=np.uint8)

    def map_label(self, label, path):
        bad = label[label >= len(self.labels)]
        if bad.size:
            raise EsegError(f"{path}: label value {int(bad.max())} is outside the {len(self.labels)} labels of the "
                            "dataset's config")
        return self._lut[label]


@register_dataset("mapillary-cityscapes")
class MapillaryCityscapesDataset(MapillaryDataset):
    """Mapillary Vistas v1.2 with its labels mapped to Cityscapes' 19 trainIds
    (:data:`~eseg_cli.data.classes.MAPILLARY_TO_CITYSCAPES`; unmapped labels are ignored)."""

    def _setup_classes(self) -> None:
        self.classes, self.palette = CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
        self._lut = np.full(256, IGNORE_INDEX, np.uint8)
        for i, lab in enumerate(self.labels):
            self._lut[i] = MAPILLARY_TO_CITYSCAPES.get(lab["name"], IGNORE_INDEX)
