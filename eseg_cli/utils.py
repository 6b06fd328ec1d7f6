"""Small helpers shared by the library layers (no CLI imports here)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A crash leaves either the old file or the new one, never a half-written file. A failed write (full or
    read-only disk, a folder in the way) raises :class:`~eseg_cli.errors.EsegError` naming ``path``.
    """
    from eseg_cli.errors import write_error

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
    from eseg_cli.errors import EsegError

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


def check_size(hw, what: str = "size", max_side: int = MAX_SIDE) -> None:
    """Refuse a size ``(H, W)`` with a side above ``max_side`` before anything that large is allocated."""
    from eseg_cli.errors import EsegError

    if max(int(v) for v in hw) > max_side:
        raise EsegError(f"{what} {int(hw[0])}x{int(hw[1])} is too large: at most {max_side} pixels per side "
                        "(larger sizes exhaust memory)")
