"""Preview grids: what the model is fed (augmentations included), with labels overlaid in colour."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.patches import Patch

from eseg_cli.data.classes import overlay
from eseg_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from eseg_cli.errors import EsegError
from eseg_cli.utils import atomic_write_bytes


def denormalize(image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """A normalized 3xHxW tensor back to HxWx3 uint8."""
    arr = image.detach().cpu().float().numpy().transpose(1, 2, 0)
    arr = arr * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)


def preview_grid(dataset, n: int, out_path, *, cols: int | None = None, seed: int = 0, alpha: float = 0.55,
                 title: str | None = None, side_by_side: bool = True) -> dict:
    """Write a PNG grid of ``n`` samples of ``dataset`` (through its transform) with overlaid labels and
    a legend of the classes shown; ``side_by_side`` puts the plain input left of each overlay.
    Returns ``{"path", "indices", "classes"}``."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if n < 1:
        raise EsegError(f"'n' must be at least 1, got {n}", field="n")
    if len(dataset) == 0:
        raise EsegError("the dataset is empty; nothing to preview")
    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(dataset), size=min(n, len(dataset)), replace=False).tolist())
    tiles, seen = [], set()
    for i in idx:
        img, mask = dataset[i]
        m = mask.numpy()
        rgb = denormalize(img)
        tile = overlay(rgb, m, dataset.palette, alpha, ignore_index=dataset.ignore_index)
        if side_by_side:
            gap = np.full((rgb.shape[0], max(rgb.shape[1] // 64, 2), 3), 255, np.uint8)
            tile = np.concatenate([rgb, gap, tile], axis=1)
        tiles.append(tile)
        seen.update(int(v) for v in np.unique(m) if v != dataset.ignore_index)
    cols = cols or min(2 if side_by_side else 4, len(tiles))
    rows = -(-len(tiles) // cols)
    h, w = tiles[0].shape[:2]
    fig_w = 16.0
    fig_h = fig_w / cols * rows * h / w + 1.6
    fig, axes = plt.subplots(rows, cols, figsize=(fig_w, fig_h), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, tile, i in zip(axes.ravel(), tiles, idx, strict=False):
        ax.imshow(tile)
        ax.set_title(f"#{i}", fontsize=8)
    names = [c for c in sorted(seen) if c < len(dataset.classes)]
    handles = [Patch(color=np.asarray(dataset.palette[c]) / 255, label=dataset.classes[c]) for c in names]
    fig.legend(handles=handles, loc="lower center", ncol=min(10, max(len(handles), 1)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97 if title else 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    path = atomic_write_bytes(Path(out_path), buf.getvalue())
    return {"path": str(path), "indices": idx, "classes": [dataset.classes[c] for c in names]}
