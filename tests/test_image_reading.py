"""Images read as they are (issue 20): EXIF orientation applied, 16-bit data scaled (not clipped to white), bad
files named -- by every reader: datasets (training, eval, pseudo-label) and the Predictor (predict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toydata import decompression_bomb

from eseg_cli.data.datasets import read_image as dataset_read_image
from eseg_cli.data.datasets import read_label
from eseg_cli.data.imageio import as_rgb as predictor_read_image
from eseg_cli.errors import EsegError

READERS = {"datasets": dataset_read_image, "predictor": predictor_read_image}


def _photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)


def _with_orientation(path: Path, stored: np.ndarray, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif)
    return path


# stored pixels and the EXIF orientation tag -> the upright picture a viewer shows
ORIENTATIONS = {
    3: lambda a: np.rot90(a, 2),    # stored upside down
    6: lambda a: np.rot90(a, -1),   # a phone held upright: stored turned 90 degrees
    8: lambda a: np.rot90(a, 1),
    2: lambda a: a[:, ::-1],        # mirrored
}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_exif_orientation_is_applied(reader, orientation, tmp_path):
    stored = _photo()
    path = _with_orientation(tmp_path / "phone.png", stored, orientation)
    np.testing.assert_array_equal(READERS[reader](path), ORIENTATIONS[orientation](stored))


def test_a_label_turns_with_its_image(tmp_path):
    mask = np.arange(60, dtype=np.uint8).reshape(6, 10) % 5
    path = _with_orientation(tmp_path / "mask.png", mask, 6)
    np.testing.assert_array_equal(read_label(path), np.rot90(mask, -1))


@pytest.mark.parametrize("reader", list(READERS))
def test_a_16_bit_png_is_scaled_not_clipped(reader, tmp_path):
    grey16 = np.array([[0, 257, 32768, 65535], [1000, 20000, 40000, 60000]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "depth.png")
    got = READERS[reader](tmp_path / "depth.png")
    want = np.round(grey16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(got[:, :, 0], want)
    assert (got[:, :, 0] == got[:, :, 2]).all() and got[0, 2, 0] == 128  # mid-grey stays mid-grey


def test_a_16_bit_pil_image_given_to_the_predictor_is_scaled(tmp_path):
    img = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert predictor_read_image(img).max() == 255 and predictor_read_image(img).min() == 255


def test_a_floating_point_image_is_refused(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(EsegError, match="f.tif.*floating-point"):
        dataset_read_image(tmp_path / "f.tif")


@pytest.mark.parametrize("reader", list(READERS))
def test_a_decompression_bomb_is_named(reader, tmp_path):
    with pytest.raises(EsegError, match=r"bomb.png.*too large to decode safely"):
        READERS[reader](decompression_bomb(tmp_path / "bomb.png"))
