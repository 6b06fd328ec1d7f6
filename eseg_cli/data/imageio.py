"""Reading images as they are: the one place that turns an image file (or a PIL image) into the RGB pixels the
models see, and that says which failures to read a file mean a bad file.

- **Orientation**: a photo's EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), as image viewers,
  browsers and annotation tools show it; a phone photo is not seen sideways. Labels are read the same way, so an
  image and its mask stay aligned.
- **16-bit images** are scaled to 8 bits over their full range (``round(v * 255 / 65535)``), not clipped at 255
  (which turned every pixel above 255 white). 16-bit colour PNGs are already scaled by Pillow (the high byte).
  Floating-point and 32-bit integer images beyond 16 bits have no agreed range and are refused with a message.
- **Unreadable files** (truncated, not an image, a decompression bomb) raise an :class:`EsegError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from eseg_cli.errors import EsegError

#: what PIL raises for a file it cannot decode (DecompressionBombError: an image too large to decode safely)
UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)

#: the file suffixes read as images (image folders, predict, pseudo-label, folder datasets)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)  # the EXIF orientations that turn the image by 90 degrees


def describe(path: Path, e: BaseException) -> str:
    """Why ``path`` could not be read, in words (a decompression bomb says its size)."""
    if isinstance(e, Image.DecompressionBombError):
        return f"it is too large to decode safely ({e}); resize it first"
    return str(e)


@contextlib.contextmanager
def open_image(path: str | Path, what: str = "image"):
    """``Image.open`` whose failures (any of :data:`UNREADABLE`) are an EsegError naming ``path``."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            yield im
    except EsegError:
        raise
    except FileNotFoundError:
        raise EsegError(f"{path}: {what} not found; check the path") from None
    except UNREADABLE as e:
        raise EsegError(f"{path}: cannot read the {what} ({describe(path, e)}); replace or remove the file") \
            from None


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """``(width, height)`` as the image is shown (after its EXIF orientation), from the header only."""
    w, h = im.size
    with contextlib.suppress(Exception):  # a damaged EXIF block: the image is shown as stored
        if im.getexif().get(_EXIF_ORIENTATION) in _SWAPS_SIDES:
            return h, w
    return w, h


def upright(im: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (the same image when it has none)."""
    try:
        return ImageOps.exif_transpose(im)
    except UNREADABLE:  # a damaged EXIF block: the pixels as stored
        return im


def to_rgb(im: Image.Image, name: str = "image") -> np.ndarray:
    """A PIL image -> a contiguous HxWx3 uint8 RGB array, upright, 16-bit data scaled (module docstring)."""
    im = upright(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise EsegError(f"{name}: a {im.mode} image with values outside 0..65535 has no agreed brightness range; "
                            "save it as an 8- or 16-bit image")
        grey = (arr.astype(np.float64) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if im.mode == "F":
        raise EsegError(f"{name}: a floating-point image has no agreed brightness range; save it as an 8- or "
                        "16-bit image")
    return np.ascontiguousarray(np.array(im.convert("RGB")))


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB, upright (see the module docstring); bad files raise naming ``path``."""
    with open_image(path) as im:
        return _decoded(path, lambda: to_rgb(im, str(path)))


def read_upright(path: str | Path, what: str = "label") -> Image.Image:
    """An image file decoded in full and turned upright, in its own mode (for labels: the indices kept)."""
    with open_image(path, what) as im:
        return _decoded(path, lambda: _load_upright(im), what)


def _load_upright(im: Image.Image) -> Image.Image:
    im.load()
    return upright(im)


def _decoded(path, decode, what: str = "image"):
    """Run ``decode`` (which reads the pixels); a file that fails only there (truncated) is named too."""
    try:
        return decode()
    except EsegError:
        raise
    except UNREADABLE as e:
        raise EsegError(f"{path}: cannot read the {what} ({describe(Path(path), e)}); replace or remove the file") \
            from None


def as_rgb(image) -> np.ndarray:
    """A path, a PIL image or an HxW(x3) uint8 array -> a contiguous HxWx3 uint8 RGB array (files and PIL images
    read as :func:`read_rgb` and :func:`to_rgb` do)."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise EsegError(f"image {path} does not exist")
        return read_rgb(path)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise EsegError(f"an image array must be HxWx3 (RGB), got shape {image.shape}")
        if image.dtype != np.uint8:
            raise EsegError(f"an image array must be uint8 (0..255), got {image.dtype}")
        if min(image.shape[:2]) < 1:
            raise EsegError(f"an image array must not be empty, got shape {image.shape}")
        return np.ascontiguousarray(image)
    raise EsegError(f"expected an image path, a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")
