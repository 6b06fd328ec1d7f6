"""Small helpers shared by the library layers (no CLI imports here)."""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from eseg_cli.errors import EsegError, write_error


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A crash leaves either the old file or the new one, never a half-written file. A failed write (full or
    read-only disk, a folder in the way) raises :class:`~eseg_cli.errors.EsegError` naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise write_error(path, IsADirectoryError(21, "is a folder", str(path)))
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        chmod_default(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from e
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cache_dir() -> Path:
    """Where eseg keeps what it can remake (the built-in synthetic set, params/FLOPs measurements):
    ``$ESEG_CACHE_DIR``, or ``~/.cache/eseg``."""
    return Path(os.environ.get("ESEG_CACHE_DIR") or Path.home() / ".cache" / "eseg")


def chmod_default(path: str | os.PathLike) -> None:
    """Give a file made by ``mkstemp`` (mode 0600) the usual permissions: 0666 minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


#: the largest side accepted for any size (crop, image, profiling input); larger ones exhaust memory
MAX_SIDE = 8192


def parse_size(text: str, what: str = "size", max_side: int = MAX_SIDE) -> tuple[int, int]:
    """Parse ``"HxW"`` (or a single ``"S"`` for a square) into ``(H, W)``.

    Raises :class:`~eseg_cli.errors.EsegError` naming ``what`` for anything else, and for sides above
    ``max_side`` (checked before anything of that size is allocated).
    """
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) <= 0:
        raise EsegError(f"{what} must look like HEIGHTxWIDTH with positive integers (e.g. 1024x2048), got {text!r}")
    check_size(nums, what, max_side)
    return nums[0], nums[1]


def check_size(hw, what: str = "size", max_side: int = MAX_SIDE, field: str | None = None) -> None:
    """Refuse a size ``(H, W)`` with a side above ``max_side`` before anything that large is allocated."""
    if max(int(v) for v in hw) > max_side:
        raise EsegError(f"{what} {int(hw[0])}x{int(hw[1])} is too large: at most {max_side} pixels per side "
                        "(larger sizes exhaust memory)", field=field)


def check_finite(value, what: str, field: str | None = None) -> None:
    """Refuse a NaN or infinite number: every float a user gives (a config value, a flag, one of a list) must be
    a real number, or a result changes in silence (a NaN threshold passes every comparison)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise EsegError(f"{what} must be a finite number, got {value!r}", field=field)


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """``"0.5,1,1.5"`` -> ``(0.5, 1.0, 1.5)``: at least one number, each finite and positive; else an
    :class:`~eseg_cli.errors.EsegError` naming ``what``."""
    try:
        values = tuple(float(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise EsegError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise EsegError(f"{what} needs at least one number, got {text!r}")
    for v in values:
        check_finite(v, what)
    if min(values) <= 0:
        raise EsegError(f"{what} must be positive numbers, got {text!r}")
    return values


def path_component(value: str, what: str, field: str | None = None) -> str:
    """A user value that becomes one folder or file name: refused when empty, ``.``/``..``, or holding a path
    separator (it would write outside the folder it is meant to be in)."""
    text = str(value)
    if text in ("", ".", "..") or "/" in text or "\\" in text or os.sep in text or "\0" in text:
        raise EsegError(f"{what} must be a plain folder name (no '/', '..' or empty), got {text!r}", field=field)
    return text


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved, so links and ``..`` count)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, busy: str):
    """Hold ``FOLDER/.lock`` for as long as the block runs; an EsegError saying ``busy`` if another process holds
    it. One process at a time writes a training run's folder or a prediction folder.

    An OS lock (``flock``): it goes away with the process, so a killed process never leaves it behind.
    Where the OS has no ``flock`` (Windows), nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EsegError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def check_output_apart(out: str | os.PathLike, folders, files, field: str = "out") -> None:
    """Refuse an output folder that is an input folder or lies inside one (the outputs would replace the inputs,
    or be read as inputs by the next run), and one that holds an input file."""
    for folder in folders:
        if is_within(out, folder):
            raise EsegError(f"'{field}' {out} is the input folder {folder} or lies inside it; the outputs would mix "
                            "with the inputs: choose an output folder outside them", field=field)
    for f in files:
        if is_within(f, out):
            raise EsegError(f"input {f} lies inside the output folder {out} ('{field}'); choose an output folder "
                            "apart from the inputs", field=field)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, busy: str):
    """:func:`folder_lock` on an output folder; a folder this call made is removed again when nothing but the
    lock file ended up in it (a command refused before it wrote anything leaves no trace)."""
    folder = Path(folder)
    made = not folder.exists()
    with folder_lock(folder, busy):
        try:
            yield
        finally:
            if made:  # only the holder of the lock removes it (a refused process leaves the folder alone)
                remove_if_only_lock(folder)


def remove_if_only_lock(folder: str | os.PathLike) -> bool:
    """Delete ``folder`` if nothing but its ``.lock`` file is in it."""
    folder = Path(folder)
    if not folder.is_dir() or any(p.name != ".lock" for p in folder.iterdir()):
        return False
    (folder / ".lock").unlink(missing_ok=True)
    folder.rmdir()
    return True


def same_content(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two files hold the same bytes (a hard link of the other, or an equal copy)."""
    a, b = Path(a), Path(b)
    if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
        return False
    return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)


def read_jsonl(path: str | os.PathLike) -> tuple[list, bool]:
    """The rows of a JSON-lines file and whether its last line was cut short (a process killed mid-write: the
    normal state of a killed run, so that line is left out). A damaged line before the last is an
    :class:`~eseg_cli.errors.EsegError` naming the file and line. A missing file has no rows."""
    path = Path(path)
    if not path.is_file():
        return [], False
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EsegError(f"{path} is not UTF-8 text (byte {e.start}); it is damaged: restore or delete it") from None
    lines = text.splitlines()
    rows, cut = [], bool(text) and not text.endswith("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if n < len(lines):
                raise EsegError(f"{path}: line {n} is damaged (not JSON); delete that line, or restore the file") \
                    from None
            cut = True
    return rows, cut
