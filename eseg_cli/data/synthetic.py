"""A procedurally generated street-scene dataset in the Cityscapes layout (19 trainIds).

Scenes are drawn through a pinhole camera: a road and two sidewalks run to a vanishing point, building
facades with windows line the street, and walls, fences, hedges, trees, poles, traffic lights and signs,
parked or passing cars, trucks, buses and trams, pedestrians and riders on bicycles and motorcycles
stand at random depths (farther = smaller and higher). Each class keeps its geometry, position and
texture (tiles on sidewalks, bricks on walls, slats on fences, leaves on vegetation, windows on
buildings, wheels on vehicles) while colours are drawn per instance from wide ranges, and lighting,
colour cast, blur and noise vary per image, so colour alone does not solve the task.

The default set (:data:`DEFAULT`: 400 train + 100 val images at 256x512, seed 0) generates in well
under a minute on two cores and is what ``eseg train`` uses when no dataset is given
(:func:`ensure_default`). Every image depends only on ``(seed, split, index)``, so a set is identical
for any number of workers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from eseg_cli import utils
from eseg_cli.data.classes import CITYSCAPES_CLASSES, IGNORE_INDEX, cityscapes_trainid_to_labelid_lut
from eseg_cli.errors import EsegError
from eseg_cli.utils import atomic_write_json, check_size, chmod_default

#: Bumped whenever the drawing changes, so cached default sets are regenerated.
GENERATOR_VERSION = 3
CITY = "synthetic"

# trainIds
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)


@dataclass(frozen=True)
class SyntheticParams:
    """What defines a generated set; the default cache folder name is derived from it."""

    num_train: int = 400
    num_val: int = 100
    size: tuple[int, int] = (256, 512)
    seed: int = 0

    def tag(self) -> str:
        h, w = self.size
        return f"synthetic-v{GENERATOR_VERSION}-{h}x{w}-n{self.num_train}-{self.num_val}-s{self.seed}"


DEFAULT = SyntheticParams()


# ----------------------------------------------------------------------------------------------------------
# drawing primitives
# ----------------------------------------------------------------------------------------------------------

Texture = Callable[[np.ndarray, np.ndarray, "Scene"], np.ndarray]  # (ys, xs, scene) -> HxW multiplier


class Scene:
    """An RGB float image and a trainId label drawn together, painter's-algorithm style."""

    def __init__(self, h: int, w: int, rng: np.random.Generator):
        self.h, self.w, self.rng = h, w, rng
        self.img = np.zeros((h, w, 3), np.float32)
        self.lbl = np.full((h, w), IGNORE_INDEX, np.uint8)
        self.fine = rng.standard_normal((h, w)).astype(np.float32)
        self.smooth = _smooth_noise(rng, h, w, 8)
        self.blotch = _smooth_noise(rng, h, w, 24)

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


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------------------
# colours
# ----------------------------------------------------------------------------------------------------------

def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys
    return colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))


def _any_color(rng, vmin=0.15, vmax=0.95, smax=0.9):
    return _hsv(rng.uniform(), rng.uniform(0, smax), rng.uniform(vmin, vmax))


def _grey(rng, lo, hi, tint=0.08):
    v = rng.uniform(lo, hi)
    return _hsv(rng.uniform(), rng.uniform(0, tint), v)


# ----------------------------------------------------------------------------------------------------------
# the scene
# ----------------------------------------------------------------------------------------------------------

class Camera:
    """Pinhole camera: world (X right, Y up, Z depth, metres) -> pixels. ``t`` = Z0 / Z is the scale."""

    def __init__(self, h, w, rng):
        self.h, self.w = h, w
        self.hz = h * rng.uniform(0.36, 0.5)          # horizon row
        self.vpx = w * rng.uniform(0.4, 0.6)          # vanishing point column
        self.cam_h = rng.uniform(1.3, 1.7)            # camera height (m)
        self.k = (h - self.hz) / self.cam_h           # pixels per metre at t = 1
        self.z0 = 6.0                                 # depth imaged at t = 1 (bottom row)

    def t(self, z):
        return self.z0 / z

    def ppm(self, z):
        return self.k * self.t(z)

    def px(self, x, y, z):
        s = self.ppm(z)
        return self.vpx + x * s, self.hz + (self.cam_h - y) * s


def _ground_quad(cam, x0, x1, z_near=2.5, z_far=4000.0):
    return [cam.px(x0, 0, z_far), cam.px(x1, 0, z_far), cam.px(x1, 0, z_near), cam.px(x0, 0, z_near)]


def _facade(cam, x, z0, z1, y0, y1):
    """A vertical plane parallel to the street (constant X) from depth z0 to z1, heights y0..y1."""
    return [cam.px(x, y0, z0), cam.px(x, y1, z0), cam.px(x, y1, z1), cam.px(x, y0, z1)]


def _bilerp(quad, u, v):
    """Point at (u, v) in [0,1]^2 of a quad given as [bottom-near, top-near, top-far, bottom-far]."""
    (ax, ay), (bx, by), (cx, cy), (dx, dy) = quad
    nx, ny = ax + (bx - ax) * v, ay + (by - ay) * v     # near edge
    fx, fy = dx + (cx - dx) * v, dy + (cy - dy) * v     # far edge
    return nx + (fx - nx) * u, ny + (fy - ny) * u


class Sprite:
    """Shapes in a local side-view frame (u forward, v up, metres) placed at a ground point."""

    def __init__(self, scene: Scene, cx: float, cy: float, ppm: float, facing: int):
        self.s, self.cx, self.cy, self.ppm, self.f = scene, cx, cy, ppm, facing

    def p(self, u, v):
        return self.cx + self.f * u * self.ppm, self.cy - v * self.ppm

    def poly(self, pts, label, color, texture=None):
        self.s.polygon([self.p(u, v) for u, v in pts], label, color, texture)

    def rect(self, u0, v0, u1, v1, label, color, texture=None):
        self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], label, color, texture)

    def circle(self, u, v, r, label, color, texture=None, ring=0.0):
        x, y = self.p(u, v)
        self.s.ellipse(x, y, r * self.ppm, r * self.ppm, label, color, texture,
                       width=max(ring * self.ppm, 1.5) if ring else 0)

    def line(self, pts, width, label, color):
        self.s.line([self.p(u, v) for u, v in pts], max(width * self.ppm, 1.5), label, color)


def _draw_sky_and_far(scene: Scene, cam: Camera, rng):
    kind = rng.choice(["blue", "grey", "dusk", "pale"], p=[0.45, 0.25, 0.15, 0.15])
    color = {"blue": _hsv(rng.uniform(0.53, 0.62), rng.uniform(0.3, 0.7), rng.uniform(0.7, 0.95)),
             "grey": _grey(rng, 0.55, 0.85, 0.1),
             "dusk": _hsv(rng.uniform(0.02, 0.12), rng.uniform(0.3, 0.6), rng.uniform(0.7, 0.95)),
             "pale": _hsv(rng.uniform(0.5, 0.6), rng.uniform(0.05, 0.25), rng.uniform(0.8, 1.0))}[kind]
    scene.polygon([(0, 0), (scene.w, 0), (scene.w, cam.hz + 2), (0, cam.hz + 2)], SKY, color,
                  tex_vgradient(0.8, 1.15, 0, cam.hz, rng.uniform(0.0, 0.35)))
    # distant skyline and tree line at the horizon
    x = -10.0
    while x < scene.w:
        bw = rng.uniform(6, 30)
        if rng.uniform() < 0.7:
            bh = rng.uniform(4, 30) * (cam.h / 256)
            scene.polygon([(x, cam.hz + 1), (x, cam.hz - bh), (x + bw, cam.hz - bh), (x + bw, cam.hz + 1)],
                          BUILDING, _grey(rng, 0.3, 0.75, 0.25), tex_noise(0.05))
        else:
            r = rng.uniform(4, 12) * (cam.h / 256)
            scene.ellipse(x + bw / 2, cam.hz - r * 0.4, bw / 2 + 2, r, VEG,
                          _hsv(rng.uniform(0.18, 0.35), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.5)),
                          tex_leaves(0.25))
        x += bw


def _draw_ground(scene: Scene, cam: Camera, rng, layout):
    road_l, road_r, side_w_l, side_w_r, strip_l, strip_r = layout
    scene.polygon([(0, cam.hz), (scene.w, cam.hz), (scene.w, scene.h), (0, scene.h)], TERRAIN,
                  _hsv(rng.uniform(0.12, 0.3), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.6)), tex_smooth(0.25, 0.1))
    asphalt = _grey(rng, 0.22, 0.55, 0.12)
    scene.polygon(_ground_quad(cam, road_l, road_r), ROAD, asphalt, tex_smooth(0.12, 0.08))
    # lane markings are road
    mark = (0.95, 0.95, 0.9) if rng.uniform() < 0.7 else (0.9, 0.75, 0.2)
    for xm in ([(road_l + road_r) / 2] + ([road_l + 0.3, road_r - 0.3] if rng.uniform() < 0.6 else [])):
        dashed = rng.uniform() < 0.6
        z = 3.0
        while z < 300:
            seg = 3.0 if dashed else 400
            q = [cam.px(xm - 0.08, 0, z), cam.px(xm + 0.08, 0, z), cam.px(xm + 0.08, 0, z + seg),
                 cam.px(xm - 0.08, 0, z + seg)]
            scene.polygon(q, ROAD, mark, tex_noise(0.05))
            z += seg + (4.0 if dashed else 0)
    # sidewalks: tiles, kerb
    for sign, width, strip in ((-1, side_w_l, strip_l), (1, side_w_r, strip_r)):
        edge = road_l if sign < 0 else road_r
        outer = edge + sign * width
        col = _any_color(rng, 0.4, 0.85, 0.35)
        x0, x1 = sorted((edge, outer))
        scene.polygon(_ground_quad(cam, x0, x1), SIDEWALK, col, tex_tiles(rng.uniform(5, 9), rng.uniform(0, 5)))
        kerb = sorted((edge, edge + sign * 0.25))
        scene.polygon(_ground_quad(cam, *kerb), SIDEWALK, tuple(c * 0.8 for c in col), tex_noise(0.05))
        if strip > 0:
            a, b = sorted((outer, outer + sign * strip))
            scene.polygon(_ground_quad(cam, a, b), TERRAIN,
                          _hsv(rng.uniform(0.08, 0.3), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.65)),
                          tex_smooth(0.3, 0.12))


def _draw_building(scene: Scene, cam: Camera, rng, x, z0, z1, height):
    quad = _facade(cam, x, z0, z1, 0, height)
    col = _any_color(rng, 0.3, 0.9, 0.5)
    tex = tex_noise(0.04) if rng.uniform() < 0.5 else tex_bricks(rng.uniform(3, 5))
    scene.polygon(quad, BUILDING, col, tex)
    # a grid of windows, each a small quad on the facade (part of the building class)
    floors = max(int(height / rng.uniform(2.8, 3.6)), 1)
    cols = max(int((z1 - z0) / rng.uniform(2.5, 4.0)), 1)
    glass = _hsv(rng.uniform(0.5, 0.7), rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.45))
    frame = rng.uniform(0.2, 0.35)
    windows = []
    for i in range(cols):
        for j in range(floors):
            u0, u1 = (i + frame) / cols, (i + 1 - frame) / cols
            v0, v1 = (j + 0.3) / floors, (j + 0.8) / floors
            if j == 0 and rng.uniform() < 0.4:
                v0 = 0.0  # shop fronts / doors at street level
            windows.append([_bilerp(quad, u0, v0), _bilerp(quad, u0, v1), _bilerp(quad, u1, v1),
                            _bilerp(quad, u1, v0)])
    scene.polygons(windows, BUILDING, glass, tex_smooth(0.3, 0.04))


def _draw_street_side(scene: Scene, cam: Camera, rng, x_front, sign):
    """Buildings (with gaps: trees, walls), plus walls/fences/hedges at the front line."""
    z = rng.uniform(3, 8)
    while z < 250:
        length = rng.uniform(8, 25)
        if rng.uniform() < 0.8:
            setback = rng.uniform(0, 3) * sign
            _draw_building(scene, cam, rng, x_front + setback, z, z + length, rng.uniform(7, 25))
        z += length
    # low structures along the property line, drawn after (in front of) the facades
    z = rng.uniform(2.5, 6)
    while z < 150:
        length = rng.uniform(6, 25)
        kind = rng.choice(["wall", "fence", "hedge", "none"], p=[0.35, 0.35, 0.15, 0.15])
        x = x_front - sign * 0.2
        if kind == "wall":
            h = rng.uniform(1.2, 3.0)
            scene.polygon(_facade(cam, x, z, z + length, 0, h), WALL, _any_color(rng, 0.25, 0.85, 0.5),
                          tex_bricks(rng.uniform(2.5, 4)) if rng.uniform() < 0.6 else tex_smooth(0.15, 0.06))
        elif kind == "fence":
            h = rng.uniform(1.3, 2.5)
            quad = _facade(cam, x, z, z + length, 0, h)
            scene.polygon(quad, FENCE, _any_color(rng, 0.2, 0.9, 0.6), tex_slats(rng.uniform(3, 6), 0.55))
        elif kind == "hedge":
            h = rng.uniform(0.8, 1.8)
            scene.polygon(_facade(cam, x, z, z + length, 0, h), VEG,
                          _hsv(rng.uniform(0.17, 0.38), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.55)), tex_leaves())
        z += length + rng.uniform(0, 4)


def _tree(scene, cam, rng, x, z):
    ppm = cam.ppm(z)
    cx, cy = cam.px(x, 0, z)
    sp = Sprite(scene, cx, cy, ppm, 1)
    trunk_h = rng.uniform(2.0, 3.5)
    sp.rect(-0.15, 0, 0.15, trunk_h + 0.5, VEG, _hsv(rng.uniform(0.05, 0.1), 0.5, rng.uniform(0.15, 0.4)),
            tex_noise(0.08))
    leaf = (_hsv(rng.uniform(0.15, 0.4), rng.uniform(0.35, 0.85), rng.uniform(0.2, 0.6))
            if rng.uniform() < 0.85 else _hsv(rng.uniform(0.02, 0.12), 0.7, rng.uniform(0.4, 0.8)))
    r = rng.uniform(1.3, 2.6)
    for _ in range(rng.integers(3, 6)):
        u, v = rng.uniform(-r * 0.6, r * 0.6), trunk_h + r + rng.uniform(-r * 0.4, r * 0.5)
        sp.circle(u, v, r * rng.uniform(0.6, 1.0), VEG, leaf, tex_leaves())


def _pole_thing(scene, cam, rng, x, z, kind):
    sp = Sprite(scene, *cam.px(x, 0, z), cam.ppm(z), 1 if rng.uniform() < 0.5 else -1)
    pole_col = _grey(rng, 0.25, 0.7, 0.15)
    if kind == "light":
        h = rng.uniform(3.0, 4.5)
        sp.rect(-0.13, 0, 0.13, h, POLE, pole_col, tex_noise(0.05))
        box = _grey(rng, 0.08, 0.35, 0.3) if rng.uniform() < 0.8 else (0.7, 0.6, 0.1)
        sp.rect(-0.35, h - 0.1, 0.35, h + 1.5, LIGHT, box, tex_noise(0.05))
        lit = rng.integers(0, 3)
        for i, c in enumerate([(1, 0.1, 0.1), (1, 0.75, 0.1), (0.1, 1, 0.4)]):
            sp.circle(0, h + 1.2 - i * 0.45, 0.17, LIGHT, c if i == lit else tuple(v * 0.25 for v in c))
    elif kind == "sign":
        h = rng.uniform(2.0, 3.0)
        sp.rect(-0.11, 0, 0.11, h, POLE, pole_col, tex_noise(0.05))
        shape = rng.choice(["circle", "triangle", "rect", "diamond"])
        col = [(0.8, 0.1, 0.1), (0.1, 0.25, 0.8), (0.95, 0.8, 0.1), (0.9, 0.9, 0.9), (0.1, 0.55, 0.25)][
            rng.integers(0, 5)]
        border = (0.95, 0.95, 0.95) if col != (0.9, 0.9, 0.9) else (0.8, 0.1, 0.1)
        r = rng.uniform(0.5, 0.75)
        if shape == "circle":
            sp.circle(0, h + r, r, SIGN, border)
            sp.circle(0, h + r, r * 0.75, SIGN, col)
        elif shape == "triangle":
            sp.poly([(-r, h), (r, h), (0, h + 1.7 * r)], SIGN, border)
            sp.poly([(-r * 0.65, h + 0.2 * r), (r * 0.65, h + 0.2 * r), (0, h + 1.3 * r)], SIGN, col)
        elif shape == "diamond":
            sp.poly([(0, h), (r, h + r), (0, h + 2 * r), (-r, h + r)], SIGN, border)
            sp.poly([(0, h + 0.25 * r), (0.75 * r, h + r), (0, h + 1.75 * r), (-0.75 * r, h + r)], SIGN, col)
        else:
            sp.rect(-r * 1.3, h, r * 1.3, h + r * 1.4, SIGN, col, tex_noise(0.04))
            sp.rect(-r * 1.0, h + r * 0.55, r * 1.0, h + r * 0.8, SIGN, border)
    else:  # street lamp / plain pole
        h = rng.uniform(4.5, 8.0)
        sp.rect(-0.16, 0, 0.16, h, POLE, pole_col, tex_noise(0.05))
        if rng.uniform() < 0.6:
            sp.line([(0, h), (1.2, h + 0.2)], 0.15, POLE, pole_col)
            sp.rect(0.9, h - 0.05, 1.5, h + 0.15, POLE, _grey(rng, 0.6, 0.95, 0.2))


def _person(sp: Sprite, rng, label=PERSON, seated=False):
    skin = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    shirt = _any_color(rng, 0.15, 0.95)
    pants = _any_color(rng, 0.1, 0.7, 0.6)
    if seated:  # on a bike: hips on the seat, hands on the bars, feet at the crank
        sp.poly([(-0.3, 1.05), (-0.05, 1.05), (0.15, 0.6), (0.02, 0.3), (-0.1, 0.3), (-0.05, 0.6)], label, pants)
        sp.poly([(-0.35, 1.0), (-0.1, 1.0), (0.15, 1.6), (-0.1, 1.65)], label, shirt, tex_noise(0.05))
        sp.line([(0.05, 1.5), (0.45, 1.15)], 0.1, label, shirt)
        sp.circle(0.07, 1.78, 0.13, label, skin)
        if rng.uniform() < 0.5:  # helmet
            sp.circle(0.07, 1.83, 0.13, label, _any_color(rng))
        return
    step = rng.uniform(-0.25, 0.25)
    sp.poly([(-0.12, 0.95), (0.02, 0.95), (step * 0.5 + 0.03, 0), (step * 0.5 - 0.1, 0)], label, pants)
    sp.poly([(-0.02, 0.95), (0.12, 0.95), (-step * 0.5 + 0.1, 0), (-step * 0.5 - 0.03, 0)], label, pants)
    sp.poly([(-0.17, 0.9), (0.17, 0.9), (0.2, 1.45), (-0.2, 1.45)], label, shirt, tex_noise(0.05))
    sp.line([(-0.18, 1.42), (-0.25 - step * 0.3, 0.85)], 0.09, label, shirt)
    sp.line([(0.18, 1.42), (0.25 + step * 0.3, 0.85)], 0.09, label, shirt)
    sp.circle(0, 1.6, 0.13, label, skin)
    if rng.uniform() < 0.3:  # a bag or a coat hem
        sp.rect(0.15, 0.9, 0.32, 1.2, label, _any_color(rng))


def _bicycle(sp: Sprite, rng):
    col = _any_color(rng, 0.1, 0.9)
    tyre = (0.08, 0.08, 0.08)
    for u in (-0.55, 0.55):
        sp.circle(u, 0.34, 0.34, BICYCLE, tyre, ring=0.1)
    frame = [(-0.55, 0.34), (-0.15, 0.95), (0.45, 0.95), (0.0, 0.34), (-0.55, 0.34)]
    sp.line(frame, 0.09, BICYCLE, col)
    sp.line([(0.0, 0.34), (-0.15, 0.95)], 0.09, BICYCLE, col)
    sp.line([(0.45, 0.95), (0.55, 0.34)], 0.09, BICYCLE, col)
    sp.line([(0.4, 1.15), (0.5, 1.15), (0.45, 0.95)], 0.09, BICYCLE, col)
    sp.rect(-0.28, 0.95, -0.05, 1.02, BICYCLE, (0.1, 0.1, 0.1))


def _motorcycle(sp: Sprite, rng):
    col = _any_color(rng, 0.15, 0.95)
    for u in (-0.7, 0.7):
        sp.circle(u, 0.33, 0.33, MOTORCYCLE, (0.07, 0.07, 0.07))
        sp.circle(u, 0.33, 0.13, MOTORCYCLE, _grey(rng, 0.5, 0.8))
    sp.poly([(-0.75, 0.55), (-0.2, 0.45), (0.45, 0.45), (0.7, 0.8), (0.35, 0.95), (-0.3, 0.95), (-0.8, 0.8)],
            MOTORCYCLE, col, tex_smooth(0.2, 0.03))
    sp.rect(-0.2, 0.3, 0.35, 0.5, MOTORCYCLE, _grey(rng, 0.2, 0.5))  # engine
    sp.line([(0.55, 0.85), (0.5, 1.2)], 0.06, MOTORCYCLE, (0.15, 0.15, 0.15))


def _wheels(sp, us, r, label, rng):
    for u in us:
        sp.circle(u, r, r, label, (0.06, 0.06, 0.06))
        sp.circle(u, r, r * 0.45, label, _grey(rng, 0.45, 0.8))


def _car(sp: Sprite, rng):
    col = _any_color(rng, 0.1, 0.95)
    glass = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0, 0.4), rng.uniform(0.1, 0.4))
    L = rng.uniform(1.9, 2.4)
    sp.poly([(-L, 0.3), (L, 0.3), (L + 0.05, 0.85), (0.9, 1.0), (0.45, 1.45), (-1.2, 1.45), (-1.7, 1.0),
             (-L - 0.05, 0.9)], CAR, col, tex_smooth(0.12, 0.03))
    sp.poly([(0.8, 1.0), (0.4, 1.38), (-0.35, 1.38), (-0.35, 1.0)], CAR, glass)
    sp.poly([(-0.45, 1.0), (-0.45, 1.38), (-1.1, 1.38), (-1.5, 1.0)], CAR, glass)
    sp.rect(L - 0.1, 0.7, L + 0.03, 0.8, CAR, (1.0, 0.95, 0.7))
    _wheels(sp, (-L + 0.65, L - 0.65), 0.33, CAR, rng)


def _truck(sp: Sprite, rng):
    cab = _any_color(rng, 0.15, 0.95)
    box = _any_color(rng, 0.3, 0.95, 0.5)
    sp.poly([(1.5, 0.5), (3.1, 0.5), (3.1, 2.2), (2.7, 2.9), (1.5, 2.9)], TRUCK, cab, tex_smooth(0.1, 0.03))
    sp.poly([(2.3, 1.8), (2.95, 1.8), (2.65, 2.6), (2.3, 2.6)], TRUCK, (0.15, 0.2, 0.3))
    sp.rect(-3.8, 0.6, 1.4, rng.uniform(3.2, 3.9), TRUCK, box, tex_slats(rng.uniform(6, 12), 0.93))
    sp.rect(-3.8, 0.45, 3.1, 0.65, TRUCK, (0.12, 0.12, 0.12))
    _wheels(sp, (-2.9, -1.8, 2.2), 0.5, TRUCK, rng)


def _bus(sp: Sprite, rng):
    col = _any_color(rng, 0.3, 0.95, 0.9)
    glass = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0, 0.4), rng.uniform(0.08, 0.3))
    L = rng.uniform(5.0, 6.0)
    sp.poly([(-L, 0.35), (L, 0.35), (L, 2.9), (L - 0.3, 3.15), (-L, 3.15)], BUS, col, tex_smooth(0.08, 0.02))
    n = int(L * 2 / 1.6)
    for i in range(n):
        u0 = -L + 0.3 + i * (2 * L - 0.6) / n
        sp.rect(u0 + 0.1, 1.55, u0 + (2 * L - 0.6) / n - 0.1, 2.6, BUS, glass)
    sp.rect(L - 1.3, 0.5, L - 0.5, 2.5, BUS, glass)  # door
    sp.rect(-L, 1.0, L, 1.2, BUS, _any_color(rng))  # livery stripe
    _wheels(sp, (-L + 1.3, L - 1.8), 0.5, BUS, rng)


def _train(sp: Sprite, rng):
    col = _any_color(rng, 0.4, 0.95, 0.8)
    glass = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0, 0.3), rng.uniform(0.05, 0.3))
    L = rng.uniform(10, 16)
    sp.poly([(-L, 0.25), (L - 1.2, 0.25), (L, 1.2), (L, 2.8), (L - 0.6, 3.4), (-L, 3.4)], TRAIN, col,
            tex_smooth(0.06, 0.02))
    sp.rect(-L, 0.25, L - 1.0, 0.7, TRAIN, (0.15, 0.15, 0.17), tex_noise(0.08))  # skirt hides the wheels
    stripe = _any_color(rng)
    sp.rect(-L, 1.0, L, 1.25, TRAIN, stripe)
    u = -L + 0.6
    while u < L - 2.5:
        sp.rect(u, 1.7, u + 1.4, 2.8, TRAIN, glass)
        u += 2.0
    sp.poly([(L - 1.0, 1.6), (L - 0.1, 1.6), (L - 0.1, 2.7), (L - 0.6, 3.2), (L - 1.0, 3.2)], TRAIN, glass)
    # pantograph
    sp.line([(-2, 3.4), (-1.2, 4.3), (-0.4, 3.4)], 0.08, TRAIN, (0.2, 0.2, 0.2))
    sp.line([(-1.8, 4.3), (-0.6, 4.3)], 0.08, TRAIN, (0.2, 0.2, 0.2))


def _light_and_noise(img: np.ndarray, rng) -> np.ndarray:
    h, w, _ = img.shape
    gain = rng.uniform(0.6, 1.25)
    cast = np.asarray([rng.uniform(0.85, 1.15) for _ in range(3)], np.float32)
    gamma = rng.uniform(0.75, 1.3)
    ys, xs = np.ogrid[0:h, 0:w]
    ang = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(0, 0.3)
    light = (1.0 + slope * ((xs / w - 0.5) * np.cos(ang) + (ys / h - 0.5) * np.sin(ang))).astype(np.float32)
    out = np.clip(img * gain * cast * light[..., None], 0, 1) ** gamma
    out += rng.uniform(0.005, 0.04) * rng.standard_normal(out.shape, dtype=np.float32)
    out8 = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
    if rng.uniform() < 0.4:
        out8 = np.asarray(Image.fromarray(out8).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0))))
    return out8


def render_scene(size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene; returns ``(image HxWx3 uint8, trainIds HxW uint8)``."""
    h, w = size
    scene = Scene(h, w, rng)
    cam = Camera(h, w, rng)
    # the street in world metres (X = 0 is the camera)
    lanes = rng.integers(2, 4)
    road_w = lanes * rng.uniform(3.0, 3.8)
    road_l = -rng.uniform(0.3, 0.7) * road_w
    road_r = road_l + road_w
    side_l, side_r = rng.uniform(2.0, 4.5), rng.uniform(2.0, 4.5)
    strip_l = rng.uniform(1.5, 5) if rng.uniform() < 0.5 else 0.0
    strip_r = rng.uniform(1.5, 5) if rng.uniform() < 0.5 else 0.0
    _draw_sky_and_far(scene, cam, rng)
    _draw_ground(scene, cam, rng, (road_l, road_r, side_l, side_r, strip_l, strip_r))
    front_l, front_r = road_l - side_l - strip_l, road_r + side_r + strip_r
    _draw_street_side(scene, cam, rng, front_l, -1)
    _draw_street_side(scene, cam, rng, front_r, 1)

    # everything standing in the street, drawn far to near
    items: list[tuple[float, Callable[[], None]]] = []

    def add(z, fn):
        items.append((z, fn))

    def on_side(sign):
        edge = road_l if sign < 0 else road_r
        width = side_l if sign < 0 else side_r
        return edge + sign * rng.uniform(0.4, width - 0.3)

    for _ in range(rng.integers(1, 4)):  # trees on sidewalks or terrain strips
        sign = -1 if rng.uniform() < 0.5 else 1
        x = on_side(sign)
        z = rng.uniform(6, 40)
        add(z, lambda x=x, z=z: _tree(scene, cam, rng, x, z))
    for kind, n in (("light", rng.integers(1, 3)), ("sign", rng.integers(1, 4)), ("pole", rng.integers(1, 4))):
        for _ in range(n):
            sign = -1 if rng.uniform() < 0.5 else 1
            x = (road_l if sign < 0 else road_r) + sign * rng.uniform(0.3, 0.7)
            z = rng.uniform(4, 25)
            add(z, lambda x=x, z=z, kind=kind: _pole_thing(scene, cam, rng, x, z, kind))
    for _ in range(rng.integers(2, 7)):  # pedestrians on the sidewalks, sometimes crossing
        sign = -1 if rng.uniform() < 0.5 else 1
        x = on_side(sign) if rng.uniform() < 0.8 else rng.uniform(road_l, road_r)
        z = rng.uniform(4, 20)
        add(z, lambda x=x, z=z: _person(Sprite(scene, *cam.px(x, 0, z), cam.ppm(z),
                                               1 if rng.uniform() < 0.5 else -1), rng))

    def vehicle(x, z, kind):
        def draw():
            sp = Sprite(scene, *cam.px(x, 0, z), cam.ppm(z), 1 if rng.uniform() < 0.5 else -1)
            if kind in ("bicycle", "motorcycle"):
                (_bicycle if kind == "bicycle" else _motorcycle)(sp, rng)
                if rng.uniform() < 0.85:
                    _person(sp, rng, RIDER, seated=True)
            else:
                {"car": _car, "truck": _truck, "bus": _bus, "train": _train}[kind](sp, rng)
        add(z, draw)

    lane_x = [road_l + (i + 0.5) * road_w / lanes for i in range(lanes)]
    for _ in range(rng.integers(1, 5)):
        vehicle(rng.choice(lane_x) + rng.uniform(-0.5, 0.5), rng.uniform(9, 45), "car")
    for _ in range(rng.integers(1, 3)):  # parked cars at the kerb
        sign = -1 if rng.uniform() < 0.5 else 1
        vehicle((road_l + 1.0) if sign < 0 else (road_r - 1.0), rng.uniform(8, 30), "car")
    for kind, p in (("truck", 0.45), ("bus", 0.4), ("train", 0.3), ("bicycle", 0.7), ("motorcycle", 0.6)):
        if rng.uniform() < p:
            far = kind in ("truck", "bus", "train")
            vehicle(rng.choice(lane_x) + rng.uniform(-0.5, 0.5), rng.uniform(12 if far else 6, 40 if far else 18),
                    kind)
    for _z, fn in sorted(items, key=lambda it: -it[0]):
        fn()

    img = _light_and_noise(scene.img, rng)
    return img, scene.lbl


# ----------------------------------------------------------------------------------------------------------
# writing a set
# ----------------------------------------------------------------------------------------------------------

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def sample_paths(root: Path, split: str, index: int) -> tuple[Path, Path, Path]:
    """(image, labelTrainIds, labelIds) paths of one generated sample."""
    stem = f"{CITY}_{index // 1000:06d}_{index % 1000:06d}"
    img = root / "leftImg8bit" / split / CITY / f"{stem}_leftImg8bit.png"
    lab = root / "gtFine" / split / CITY / f"{stem}_gtFine_labelTrainIds.png"
    ids = root / "gtFine" / split / CITY / f"{stem}_gtFine_labelIds.png"
    return img, lab, ids


def render_sample(seed: int, split: str, index: int, size: tuple[int, int]):
    """The sample ``index`` of ``split`` for ``seed``: independent of order and worker count."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]))
    return render_scene(size, rng)


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=1)
        chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _job(args) -> tuple[bool, np.ndarray]:
    root, seed, split, index, size, force = args
    ip, lp, idp = sample_paths(Path(root), split, index)
    if not force and ip.is_file() and lp.is_file() and idp.is_file():
        # deterministic: an existing sample of the same parameters is already right
        with Image.open(lp) as im:
            lbl = np.asarray(im)
        if lbl.shape == tuple(size):
            return True, np.bincount(lbl.ravel(), minlength=256)
    img, lbl = render_sample(seed, split, index, size)
    _write_png(ip, img)
    _write_png(idp, cityscapes_trainid_to_labelid_lut()[lbl])
    _write_png(lp, lbl)  # after labelIds: prepare-data cityscapes then sees trainIds as up to date
    return False, np.bincount(lbl.ravel(), minlength=256)


def generate(out_dir, num_train: int = DEFAULT.num_train, num_val: int = DEFAULT.num_val,
             size: tuple[int, int] = DEFAULT.size, seed: int = 0, workers: int = 1,
             progress: Callable[[int, int], None] | None = None, force: bool = False) -> dict:
    """Generate a synthetic set under ``out_dir`` in the Cityscapes layout; returns a summary dict.

    Writes ``leftImg8bit/{train,val}/synthetic/*_leftImg8bit.png`` with ``*_gtFine_labelTrainIds.png``
    and ``*_gtFine_labelIds.png`` beside each label, and ``synthetic.json`` (parameters, class pixel
    counts) last. ``progress(done, total)`` is called after each image. Samples already on disk are
    kept (generation is deterministic) unless ``force``; a folder holding a set made with other
    parameters is refused unless ``force``.
    """
    h, w = (int(size[0]), int(size[1]))
    if h < 32 or w < 32:
        raise EsegError(f"--size must be at least 32x32 for street scenes, got {h}x{w}")
    check_size((h, w), "size")
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise EsegError(f"--num-train/--num-val must be >= 0 and not both 0 (got {num_train}, {num_val})")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise EsegError(f"{root} exists and is not a folder; choose another --out")
    params = SyntheticParams(num_train, num_val, (h, w), int(seed))
    meta = root / "synthetic.json"
    if meta.is_file() and not force:
        try:
            old = json.loads(meta.read_text())["params"]
            same = (old["size"] == [h, w] and old["seed"] == int(seed)
                    and old.get("generator_version", GENERATOR_VERSION) == GENERATOR_VERSION)
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        if not same:
            raise EsegError(f"{root} already holds a synthetic set made with other parameters ({meta}); "
                            "pass --force to regenerate it, or choose another --out")
    elif root.is_dir() and not meta.is_file() and not force and any(
            p.name not in ("leftImg8bit", "gtFine") for p in root.iterdir()):
        raise EsegError(f"{root} is a non-empty folder that is not a synthetic set; choose an empty or new "
                        "--out (or pass --force to write into it anyway)")
    if not force and not meta.is_file():
        # a real dataset in the Cityscapes layout (cities other than the generator's one): never add to it
        real = [c for sub in ("leftImg8bit", "gtFine") for c in sorted((root / sub).glob("*/*"))
                if c.is_dir() and c.name != "synthetic"]
        if real:
            raise EsegError(f"{root} holds a real dataset ({real[0]} is not from the generator); choose an "
                            "empty or new --out")
    jobs = [(str(root), int(seed), split, i, (h, w), force)
            for split, n in (("train", num_train), ("val", num_val)) for i in range(n)]
    t0 = time.perf_counter()
    counts = np.zeros(256, np.int64)
    skipped = 0
    total = len(jobs)

    def take(done, res):
        nonlocal counts, skipped
        skipped += int(res[0])
        counts += res[1]
        if progress:
            progress(done, total)

    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for done, res in enumerate(ex.map(_job, jobs, chunksize=4), 1):
                take(done, res)
    else:
        for done, job in enumerate(jobs, 1):
            take(done, _job(job))
    pix = {name: int(counts[i]) for i, name in enumerate(CITYSCAPES_CLASSES)}
    summary = {
        "root": str(root),
        "generator_version": GENERATOR_VERSION,
        "params": {**asdict(params), "generator_version": GENERATOR_VERSION},
        "images": {"train": num_train, "val": num_val},
        "generated": total - skipped,
        "skipped": skipped,
        "classes_present": [n for n, c in pix.items() if c > 0],
        "class_pixels": pix,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(root / "synthetic.json", summary)
    return summary


def ensure_default(cache_dir=None, params: SyntheticParams = DEFAULT, workers: int | None = None) -> Path:
    """Return the root of the default synthetic set, generating it once into the cache if needed.

    The set is generated into a temporary sibling folder and renamed into place, so an interrupted run
    never leaves a half-made set behind that would later be taken as complete.
    """
    base = Path(cache_dir) if cache_dir is not None else utils.cache_dir()
    root = base / params.tag()
    if (root / "synthetic.json").is_file():
        return root
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{params.tag()}.", dir=base))
    try:
        if workers is None:
            workers = min(2, os.cpu_count() or 1)
        generate(tmp, params.num_train, params.num_val, params.size, params.seed, workers=workers)
        try:
            os.replace(tmp, root)
        except OSError:
            if not (root / "synthetic.json").is_file():  # another process may have won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
