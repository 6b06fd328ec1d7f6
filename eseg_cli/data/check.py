"""A fast check of a dataset before training: every image/label pair is read, decoded and compared.

Each pair is checked for readability (the whole file is decoded, so truncated files are found), matching
sizes, and label values (after the dataset's label mapping, every value must be a class index or the
ignore index). Pairs are checked in parallel processes; pairs found good are remembered in a cache keyed
by both files' size and modification time, so a second run only reads what changed. One
:class:`~eseg_cli.errors.EsegError` lists the first few bad files.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from eseg_cli import utils
from eseg_cli.data.imageio import open_image, oriented_size
from eseg_cli.errors import EsegError
from eseg_cli.events import Emitter, OnEvent
from eseg_cli.utils import atomic_write_json

#: bad files listed in the error message
SHOWN = 5
#: below this many unchecked pairs, worker processes cost more than they save
_PARALLEL_MIN = 32

_DS = None  # the dataset inside a worker process


def _signature(ip: Path, lp: Path) -> list[int] | None:
    try:
        a, b = os.stat(ip), os.stat(lp)
    except OSError:
        return None
    return [a.st_size, a.st_mtime_ns, b.st_size, b.st_mtime_ns]


def _init(ds) -> None:
    global _DS
    _DS = ds


def _check_pair(index: int) -> tuple[int, str | None, tuple[int, int] | None]:
    """``(index, problem or None, (height, width))``: the dataset's own reader, so its checks apply."""
    try:
        img, mask = _DS.load(index)
    except EsegError as e:
        return index, str(e), None
    except Exception as e:  # noqa: BLE001 - any failure to read a pair is a finding about that pair
        ip, lp = _DS.files[index]
        return index, f"{ip} / {lp}: {type(e).__name__}: {e}", None
    return index, None, (int(mask.shape[0]), int(mask.shape[1]))


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` as the image is shown (EXIF orientation applied), from the file header only."""
    with open_image(path) as im:
        w, h = oriented_size(im)
    return h, w


def check_batchable(ds, batch_size: int, what: str = "validation",
                    fix: str = "set val_batch_size to 1, or val_resize to one size") -> None:
    """Refuse ``batch_size`` > 1 when the images of ``ds`` differ in size (they cannot be stacked into one
    batch). Reads headers only; a transform that resizes every image to one size makes any size fine."""
    if batch_size <= 1 or len(ds) < 2 or _resizes(ds):
        return
    first = None
    for ip, _ in ds.files:
        hw = image_size(ip)
        if first is None:
            first = (ip, hw)
        elif hw != first[1]:
            raise EsegError(f"the {what} images differ in size ({first[0].name} is {first[1][1]}x{first[1][0]}, "
                            f"{ip} is {hw[1]}x{hw[0]}), so a {what} batch size of {batch_size} cannot stack "
                            f"them; {fix}")


def _resizes(ds) -> bool:
    tf = getattr(ds, "transform", None)
    return any(type(t).__name__ in ("ResizeImage", "Resize") for t in getattr(tf, "transforms", []) or [])


def _cache_path(ds, cache_dir: Path | None) -> Path:
    # the verdict depends on the reader (class, label mapping, class count) as well as on the files
    key = json.dumps([type(ds).__module__, type(ds).__name__, getattr(ds, "num_classes", None),
                      getattr(ds, "ignore_index", None), str(getattr(ds, "root", "")), getattr(ds, "split", "")])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(cache_dir if cache_dir is not None else utils.cache_dir()) / "datacheck" / f"{digest}.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def check_dataset(ds, *, workers: int | None = None, cache_dir: str | Path | None = None, what: str = "dataset",
                  on_event: OnEvent | None = None) -> dict:
    """Check every image/label pair of ``ds`` (a :class:`~eseg_cli.data.datasets.SegmentationDataset`).
    ``on_event`` gets progress events (task ``check``, one step per pair not found in the cache).

    Raises :class:`EsegError` listing the first few bad pairs. Returns ``{"pairs", "checked", "cached",
    "seconds"}``. Good pairs are cached in ``<cache_dir>/datacheck/`` by file size and modification time.
    """
    t0 = time.perf_counter()
    files = list(getattr(ds, "files", []) or [])
    cpath = _cache_path(ds, cache_dir)
    cache = _read_cache(cpath)
    todo, sigs = [], {}
    for i, (ip, lp) in enumerate(files):
        key = f"{ip}|{lp}"
        sig = _signature(Path(ip), Path(lp))
        sigs[i] = (key, sig)
        if sig is None or cache.get(key) != sig:
            todo.append(i)
    results: list[tuple[int, str | None, tuple[int, int] | None]] = []
    workers = workers if workers is not None else max(1, min(8, os.cpu_count() or 1))
    # nothing to read (every pair unchanged since the last check): no progress to show
    emit = Emitter(on_event if todo else None, "check", total=len(todo))
    emit("start", 0)
    if workers > 1 and len(todo) >= _PARALLEL_MIN:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init, initargs=(ds,)) as ex:
            for n, r in enumerate(ex.map(_check_pair, todo, chunksize=max(1, min(16, len(todo) // (4 * workers)))),
                                  1):
                results.append(r)
                emit("advance", n)
    else:
        _init(ds)
        for n, i in enumerate(todo, 1):
            results.append(_check_pair(i))
            emit("advance", n)
    emit("end", len(todo))
    bad = [(i, msg) for i, msg, _ in results if msg]
    good = {sigs[i][0]: sigs[i][1] for i, msg, _ in results if not msg and sigs[i][1] is not None}
    if good:
        keep = {sigs[i][0]: sigs[i][1] for i in range(len(files)) if cache.get(sigs[i][0]) == sigs[i][1]}
        try:
            atomic_write_json(cpath, {**keep, **good})
        except EsegError:
            pass  # an unwritable cache only costs the next run a full check
    if bad:
        shown = "; ".join(msg for _, msg in bad[:SHOWN])
        more = f" (and {len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
        raise EsegError(f"{len(bad)} of {len(files)} {what} image/label pairs are bad: {shown}{more}. Fix or "
                        "remove these files (the check can be turned off with check_data: false)")
    return {"pairs": len(files), "checked": len(todo), "cached": len(files) - len(todo),
            "seconds": round(time.perf_counter() - t0, 3)}
