"""A learnable in-memory dataset for engine tests (importable from tests: the folder is on sys.path)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class Toy(Dataset):
    """The class is a function of the first two channels; the first ``ignore_rows`` rows are ignore (255)."""

    num_classes, ignore_index, classes = 3, 255, ["a", "b", "c"]

    def __init__(self, n, seed=0, size=64, ignore_rows=2):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0.5).long()
        self.y[:, :ignore_rows] = 255

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def decompression_bomb(path, side: int = 30000):
    """A valid PNG header declaring a ``side`` x ``side`` image (900M pixels: a decompression bomb) in a few
    bytes; PIL refuses it on open."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) +
                     chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path
