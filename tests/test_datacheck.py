"""The data check before training: finds bad pairs, lists the first few, caches good pairs by size+mtime."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from eseg_cli.data import build_dataset
from eseg_cli.data.check import check_batchable, check_dataset
from eseg_cli.errors import EsegError


def _folder(root, n=6, size=(16, 16)):
    for split in ("train",):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((*size, 3), 40 * i % 255, np.uint8)).save(root / "images" / split / f"{i}.png")
            Image.fromarray(np.full(size, i % 2, np.uint8)).save(root / "masks" / split / f"{i}.png")
    (root / "classes.txt").write_text("a\nb\n")
    return root


def test_good_pairs_are_cached_and_a_change_is_rechecked(tmp_path):
    root = _folder(tmp_path / "ds")
    ds = build_dataset("folder", root, "train")
    cache = tmp_path / "cache"
    first = check_dataset(ds, cache_dir=cache, workers=1)
    assert first["pairs"] == 6 and first["checked"] == 6 and first["cached"] == 0
    again = check_dataset(ds, cache_dir=cache, workers=1)
    assert again["checked"] == 0 and again["cached"] == 6
    bad = root / "masks" / "train" / "3.png"
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(bad)
    st = os.stat(bad)
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime even on coarse clocks
    with pytest.raises(EsegError, match="3.png") as info:
        check_dataset(ds, cache_dir=cache, workers=1)
    assert "1 of 6" in str(info.value)


def test_many_bad_pairs_are_listed_first_few_in_one_message_in_parallel(tmp_path):
    root = _folder(tmp_path / "ds", n=40)
    for i in range(0, 40, 4):  # 10 truncated images
        p = root / "images" / "train" / f"{i}.png"
        p.write_bytes(p.read_bytes()[:40])
    ds = build_dataset("folder", root, "train")
    with pytest.raises(EsegError) as info:
        check_dataset(ds, cache_dir=tmp_path / "cache", workers=2)
    msg = str(info.value)
    assert "10 of 40" in msg and "(and 5 more)" in msg and "\n" not in msg


def test_variable_sizes_refused_only_for_batches(tmp_path):
    root = _folder(tmp_path / "ds", n=2)
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(root / "images" / "train" / "1.png")
    ds = build_dataset("folder", root, "train")
    check_batchable(ds, 1)
    with pytest.raises(EsegError, match="1.png"):
        check_batchable(ds, 2)
