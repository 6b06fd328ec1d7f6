"""Scene composition: one random street laid out in world metres, painted far to near, then lit, colour-cast,
blurred and noised as a whole image."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from eseg_cli.data.synthetic.canvas import Scene
from eseg_cli.data.synthetic.street import (
    RIDER,
    Camera,
    Sprite,
    paint_bicycle,
    paint_bus,
    paint_car,
    paint_ground,
    paint_motorcycle,
    paint_person,
    paint_pole_thing,
    paint_sky_and_far,
    paint_street_side,
    paint_train,
    paint_tree,
    paint_truck,
)


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
    paint_sky_and_far(scene, cam, rng)
    paint_ground(scene, cam, rng, (road_l, road_r, side_l, side_r, strip_l, strip_r))
    front_l, front_r = road_l - side_l - strip_l, road_r + side_r + strip_r
    paint_street_side(scene, cam, rng, front_l, -1)
    paint_street_side(scene, cam, rng, front_r, 1)

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
        add(z, lambda x=x, z=z: paint_tree(scene, cam, rng, x, z))
    for kind, n in (("light", rng.integers(1, 3)), ("sign", rng.integers(1, 4)), ("pole", rng.integers(1, 4))):
        for _ in range(n):
            sign = -1 if rng.uniform() < 0.5 else 1
            x = (road_l if sign < 0 else road_r) + sign * rng.uniform(0.3, 0.7)
            z = rng.uniform(4, 25)
            add(z, lambda x=x, z=z, kind=kind: paint_pole_thing(scene, cam, rng, x, z, kind))
    for _ in range(rng.integers(2, 7)):  # pedestrians on the sidewalks, sometimes crossing
        sign = -1 if rng.uniform() < 0.5 else 1
        x = on_side(sign) if rng.uniform() < 0.8 else rng.uniform(road_l, road_r)
        z = rng.uniform(4, 20)
        add(z, lambda x=x, z=z: paint_person(Sprite(scene, *cam.px(x, 0, z), cam.ppm(z),
                                               1 if rng.uniform() < 0.5 else -1), rng))

    def vehicle(x, z, kind):
        def draw():
            sp = Sprite(scene, *cam.px(x, 0, z), cam.ppm(z), 1 if rng.uniform() < 0.5 else -1)
            if kind in ("bicycle", "motorcycle"):
                (paint_bicycle if kind == "bicycle" else paint_motorcycle)(sp, rng)
                if rng.uniform() < 0.85:
                    paint_person(sp, rng, RIDER, seated=True)
            else:
                {"car": paint_car, "truck": paint_truck, "bus": paint_bus, "train": paint_train}[kind](sp, rng)
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
