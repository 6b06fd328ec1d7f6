"""Data-loading throughput: images/s of a training pipeline through a torch DataLoader."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader


def loading_throughput(dataset, *, batch_size: int = 8, workers: int = 2, batches: int = 30,
                       warmup: int = 3, threads: int | None = 1) -> dict:
    """Time ``batches`` batches (after ``warmup``) of ``dataset`` through a DataLoader with ``workers``
    worker processes; the dataset is cycled if it is shorter. Returns images/s and batch timings."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, worker_init_fn=_one_thread if threads == 1 else None)
    need = warmup + batches
    seen = 0
    t0 = None
    shapes = None
    while seen < need:
        for img, mask in loader:
            seen += 1
            shapes = (tuple(img.shape), tuple(mask.shape), str(img.dtype), str(mask.dtype))
            if seen == warmup:
                t0 = time.perf_counter()
            if seen >= need:
                break
    if t0 is None:  # warmup == 0
        raise ValueError("warmup must be >= 1 (the first batch includes starting the workers)")
    dt = time.perf_counter() - t0
    return {
        "images_per_s": round(batches * batch_size / dt, 2),
        "seconds": round(dt, 3),
        "batches": batches,
        "batch_size": batch_size,
        "workers": workers,
        "batch_shape": shapes[0],
        "mask_shape": shapes[1],
        "dtypes": shapes[2:],
    }


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)
