"""The canvas of a synthetic scene: an image and its trainId label painted together, the noise fields and
textures (brightness patterns characteristic of a class) that surfaces are painted with, and colour draws."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from eseg_cli.data.classes import IGNORE_INDEX

Texture = Callable[[np.ndarray, np.ndarray, "Scene"], np.ndarray]  # (ys, xs, scene) -> HxW multiplier


class Scene:
    """An RGB float image and a trainId label drawn together, painter's-algorithm style."""

    def __init__(self, h: int, w: int, rng: np.random.Generator):
        self.h, self.w, self.rng = h, w, rng
        self.img = np.zeros((h, w, 3), np.float32)
        self.lbl = np.full((h, w), IGNORE_INDEX, np.uint8)
        self.fine = rng.standard_normal((h, w)).astype(np.float32)
        self.smooth = smooth_noise(rng, h, w, 8)
        self.blotch = smooth_noise(rng, h, w, 24)

    def _bbox(self, xs, ys, pad=1.0):
        x0 = max(int(math.floor(min(xs) - pad)), 0)
        y0 = max(int(math.floor(min(ys) - pad)), 0)
        x1 = min(int(math.ceil(max(xs) + pad)) + 1, self.w)
        y1 = min(int(math.ceil(max(ys) + pad)) + 1, self.h)
        return x0, y0, x1, y1

    def paint_mask(self, mask: np.ndarray, x0: int, y0: int, label: int, color, texture: Texture | None = None):
        """Paint ``color`` (times the texture) where ``mask`` (a box at x0, y0) is set."""
        if not mask.any():
            return
        hh, ww = mask.shape
        ys = np.arange(y0, y0 + hh)[:, None]  # broadcast index grids: textures index the noise fields
        xs = np.arange(x0, x0 + ww)[None, :]
        col = np.asarray(color, np.float32)
        region = self.img[y0:y0 + hh, x0:x0 + ww]
        where = mask[..., None]
        if texture is not None:
            np.copyto(region, col * texture(ys, xs, self)[..., None], where=where)
        else:
            np.copyto(region, col, where=where)
        if label is not None:
            np.copyto(self.lbl[y0:y0 + hh, x0:x0 + ww], np.uint8(label), where=mask)

    def _draw(self, xs, ys, fn, label, color, texture, pad=1.0):
        x0, y0, x1, y1 = self._bbox(xs, ys, pad)
        if x1 <= x0 or y1 <= y0:
            return
        m = Image.new("L", (x1 - x0, y1 - y0), 0)
        fn(ImageDraw.Draw(m), x0, y0)
        self.paint_mask(np.asarray(m, dtype=bool), x0, y0, label, color, texture)

    def polygon(self, pts, label, color, texture=None):
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        self._draw(xs, ys, lambda d, x0, y0: d.polygon([(x - x0, y - y0) for x, y in pts], fill=1, outline=1),
                   label, color, texture)

    def polygons(self, polys, label, color, texture=None):
        """Several polygons painted as one shape (one mask, one texture pass)."""
        if not polys:
            return
        xs = [p[0] for pts in polys for p in pts]
        ys = [p[1] for pts in polys for p in pts]

        def fn(d, x0, y0):
            for pts in polys:
                d.polygon([(x - x0, y - y0) for x, y in pts], fill=1, outline=1)

        self._draw(xs, ys, fn, label, color, texture)

    def ellipse(self, cx, cy, rx, ry, label, color, texture=None, width=0):
        rx, ry = max(rx, 0.6), max(ry, 0.6)

        def fn(d, x0, y0):
            box = (cx - rx - x0, cy - ry - y0, cx + rx - x0, cy + ry - y0)
            if width:
                d.ellipse(box, outline=1, width=max(int(round(width)), 1))
            else:
                d.ellipse(box, fill=1)

        self._draw([cx - rx, cx + rx], [cy - ry, cy + ry], fn, label, color, texture)

    def line(self, pts, width, label, color, texture=None):
        w = max(int(round(width)), 1)
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        self._draw(xs, ys, lambda d, x0, y0: d.line([(x - x0, y - y0) for x, y in pts], fill=1, width=w),
                   label, color, texture, pad=w)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    gh, gw = max(h // cell, 2), max(w // cell, 2)
    g = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((w, h), Image.BILINEAR))



# textures: multiplicative brightness patterns, each characteristic of a class
def tex_noise(amount: float) -> Texture:
    return lambda ys, xs, s: 1.0 + amount * s.fine[ys, xs]


def tex_smooth(amount: float, fine: float = 0.03) -> Texture:
    return lambda ys, xs, s: 1.0 + amount * s.smooth[ys, xs] + fine * s.fine[ys, xs]


def tex_leaves(amount: float = 0.35) -> Texture:
    # high-contrast speckle with blotches: foliage
    def f(ys, xs, s):
        speck = (np.sin(xs * 1.7 + s.blotch[ys, xs] * 9) * np.sin(ys * 2.1 + s.smooth[ys, xs] * 7))
        return 1.0 + amount * speck + 0.25 * s.blotch[ys, xs] + 0.12 * s.fine[ys, xs]
    return f


def tex_tiles(period: float, phase: float) -> Texture:
    def f(ys, xs, s):
        grout = ((xs + ys * 0.3 + phase) % period < 1.2) | ((ys + phase) % (period * 0.6) < 1.0)
        return np.where(grout, 0.65, 1.0) + 0.05 * s.fine[ys, xs]
    return f


def tex_bricks(period: float) -> Texture:
    def f(ys, xs, s):
        row = np.floor(ys / period)
        mortar = (ys % period < 1.0) | (((xs + row * period) % (period * 2.2)) < 1.0)
        return np.where(mortar, 0.7, 1.0) + 0.06 * s.fine[ys, xs] + 0.08 * s.smooth[ys, xs]
    return f


def tex_slats(period: float, duty: float) -> Texture:
    def f(ys, xs, s):
        gap = (xs % period) > period * duty
        return np.where(gap, 0.55, 1.05) + 0.04 * s.fine[ys, xs]
    return f


def tex_vgradient(top: float, bottom: float, y0: float, y1: float, cloud: float) -> Texture:
    def f(ys, xs, s):
        a = np.clip((ys - y0) / max(y1 - y0, 1.0), 0, 1)
        return top + (bottom - top) * a + cloud * np.maximum(s.blotch[ys, xs], 0) + 0.015 * s.fine[ys, xs]
    return f


# colours
def hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))


def any_color(rng, vmin=0.15, vmax=0.95, smax=0.9):
    return hsv(rng.uniform(), rng.uniform(0, smax), rng.uniform(vmin, vmax))


def grey(rng, lo, hi, tint=0.08):
    v = rng.uniform(lo, hi)
    return hsv(rng.uniform(), rng.uniform(0, tint), v)
