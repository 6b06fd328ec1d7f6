"""Writing a synthetic set: every sample from ``(seed, split, index)`` alone, written in the Cityscapes layout,
and the built-in default set generated once into the cache."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from eseg_cli import utils
from eseg_cli.data.classes import CITYSCAPES_CLASSES, cityscapes_trainid_to_labelid_lut
from eseg_cli.data.synthetic.scene import render_scene
from eseg_cli.errors import EsegError
from eseg_cli.events import Emitter, OnEvent
from eseg_cli.utils import atomic_write_json, check_size, chmod_default

#: Bumped whenever the drawing changes, so cached default sets are regenerated.
GENERATOR_VERSION = 3
CITY = "synthetic"


@dataclass(frozen=True)
class SyntheticParams:
    """What defines a generated set; the default cache folder name is derived from it."""

    num_train: int = 400
    num_val: int = 100
    size: tuple[int, int] = (256, 512)
    seed: int = 0

    def tag(self) -> str:
        h, w = self.size
        return f"synthetic-v{GENERATOR_VERSION}-{h}x{w}-n{self.num_train}-{self.num_val}-s{self.seed}"


DEFAULT = SyntheticParams()


_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def sample_paths(root: Path, split: str, index: int) -> tuple[Path, Path, Path]:
    """(image, labelTrainIds, labelIds) paths of one generated sample."""
    stem = f"{CITY}_{index // 1000:06d}_{index % 1000:06d}"
    img = root / "leftImg8bit" / split / CITY / f"{stem}_leftImg8bit.png"
    lab = root / "gtFine" / split / CITY / f"{stem}_gtFine_labelTrainIds.png"
    ids = root / "gtFine" / split / CITY / f"{stem}_gtFine_labelIds.png"
    return img, lab, ids


def render_sample(seed: int, split: str, index: int, size: tuple[int, int]):
    """The sample ``index`` of ``split`` for ``seed``: independent of order and worker count."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]))
    return render_scene(size, rng)


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=1)
        chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _job(args) -> tuple[bool, np.ndarray]:
    root, seed, split, index, size, force = args
    ip, lp, idp = sample_paths(Path(root), split, index)
    if not force and ip.is_file() and lp.is_file() and idp.is_file():
        # deterministic: an existing sample of the same parameters is already right
        with Image.open(lp) as im:
            lbl = np.asarray(im)
        if lbl.shape == tuple(size):
            return True, np.bincount(lbl.ravel(), minlength=256)
    img, lbl = render_sample(seed, split, index, size)
    _write_png(ip, img)
    _write_png(idp, cityscapes_trainid_to_labelid_lut()[lbl])
    _write_png(lp, lbl)  # after labelIds: prepare-data cityscapes then sees trainIds as up to date
    return False, np.bincount(lbl.ravel(), minlength=256)


def generate(out_dir, num_train: int = DEFAULT.num_train, num_val: int = DEFAULT.num_val,
             size: tuple[int, int] = DEFAULT.size, seed: int = 0, workers: int = 1,
             on_event: OnEvent | None = None, force: bool = False) -> dict:
    """Generate a synthetic set under ``out_dir`` in the Cityscapes layout; returns a summary dict.

    Writes ``leftImg8bit/{train,val}/synthetic/*_leftImg8bit.png`` with ``*_gtFine_labelTrainIds.png``
    and ``*_gtFine_labelIds.png`` beside each label, and ``synthetic.json`` (parameters, class pixel
    counts) last. ``on_event`` gets progress events (task ``prepare``, one step per image). Samples
    already on disk are kept (generation is deterministic) unless ``force``; a folder holding a set made
    with other parameters is refused unless ``force``.
    """
    h, w = (int(size[0]), int(size[1]))
    if h < 32 or w < 32:
        raise EsegError(f"'size' must be at least 32x32 for street scenes, got {h}x{w}", field="size")
    check_size((h, w), "size")
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise EsegError(f"'num_train' and 'num_val' must be >= 0 and not both 0 (got {num_train}, {num_val})",
                        field=("num_train", "num_val"))
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise EsegError(f"{root} exists and is not a folder; choose another output folder")
    params = SyntheticParams(num_train, num_val, (h, w), int(seed))
    meta = root / "synthetic.json"
    if meta.is_file() and not force:
        try:
            old = json.loads(meta.read_text())["params"]
            same = (old["size"] == [h, w] and old["seed"] == int(seed)
                    and old.get("generator_version", GENERATOR_VERSION) == GENERATOR_VERSION)
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        if not same:
            raise EsegError(f"{root} already holds a synthetic set made with other parameters ({meta}); "
                            "use 'force' to regenerate it, or choose another output folder", field="force")
    elif root.is_dir() and not meta.is_file() and not force and any(
            p.name not in ("leftImg8bit", "gtFine") for p in root.iterdir()):
        raise EsegError(f"{root} is a non-empty folder that is not a synthetic set; choose an empty or new "
                        "output folder (or use 'force' to write into it anyway)", field="force")
    if not force and not meta.is_file():
        # a real dataset in the Cityscapes layout (cities other than the generator's one): never add to it
        real = [c for sub in ("leftImg8bit", "gtFine") for c in sorted((root / sub).glob("*/*"))
                if c.is_dir() and c.name != "synthetic"]
        if real:
            raise EsegError(f"{root} holds a real dataset ({real[0]} is not from the generator); choose an "
                            "empty or new output folder")
    jobs = [(str(root), int(seed), split, i, (h, w), force)
            for split, n in (("train", num_train), ("val", num_val)) for i in range(n)]
    t0 = time.perf_counter()
    counts = np.zeros(256, np.int64)
    skipped = 0
    total = len(jobs)
    emit = Emitter(on_event, "prepare", total=total)
    emit("start", 0)

    def take(done, res):
        nonlocal counts, skipped
        skipped += int(res[0])
        counts += res[1]
        emit("advance", done)

    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for done, res in enumerate(ex.map(_job, jobs, chunksize=4), 1):
                take(done, res)
    else:
        for done, job in enumerate(jobs, 1):
            take(done, _job(job))
    emit("end", total)
    pix = {name: int(counts[i]) for i, name in enumerate(CITYSCAPES_CLASSES)}
    summary = {
        "root": str(root),
        "generator_version": GENERATOR_VERSION,
        "params": {**asdict(params), "generator_version": GENERATOR_VERSION},
        "images": {"train": num_train, "val": num_val},
        "generated": total - skipped,
        "skipped": skipped,
        "classes_present": [n for n, c in pix.items() if c > 0],
        "class_pixels": pix,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(root / "synthetic.json", summary)
    return summary


def ensure_default(cache_dir=None, params: SyntheticParams = DEFAULT, workers: int | None = None) -> Path:
    """Return the root of the default synthetic set, generating it once into the cache if needed.

    The set is generated into a temporary sibling folder and renamed into place, so an interrupted run
    never leaves a half-made set behind that would later be taken as complete.
    """
    base = Path(cache_dir) if cache_dir is not None else utils.cache_dir()
    root = base / params.tag()
    if (root / "synthetic.json").is_file():
        return root
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{params.tag()}.", dir=base))
    try:
        if workers is None:
            workers = min(2, os.cpu_count() or 1)
        generate(tmp, params.num_train, params.num_val, params.size, params.seed, workers=workers)
        try:
            os.replace(tmp, root)
        except OSError:
            if not (root / "synthetic.json").is_file():  # another process may have won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
