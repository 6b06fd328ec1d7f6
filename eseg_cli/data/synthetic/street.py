"""The street painters: a pinhole camera over a street in world metres, and the things along it (sky and
skyline, road and sidewalks, building facades, walls, fences and hedges, trees, poles, lights and signs,
people, bicycles, motorcycles, cars, trucks, buses and trams), each painted with its class's geometry and
texture and a colour drawn per instance."""

from __future__ import annotations

from eseg_cli.data.classes import CITYSCAPES_CLASSES
from eseg_cli.data.synthetic.canvas import (
    Scene,
    any_color,
    grey,
    hsv,
    tex_bricks,
    tex_leaves,
    tex_noise,
    tex_slats,
    tex_smooth,
    tex_tiles,
    tex_vgradient,
)

# trainIds, from the one class table
(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS, TRAIN,
 MOTORCYCLE, BICYCLE) = (CITYSCAPES_CLASSES.index(name) for name in (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain",
    "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"))


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


def paint_sky_and_far(scene: Scene, cam: Camera, rng):
    kind = rng.choice(["blue", "grey", "dusk", "pale"], p=[0.45, 0.25, 0.15, 0.15])
    color = {"blue": hsv(rng.uniform(0.53, 0.62), rng.uniform(0.3, 0.7), rng.uniform(0.7, 0.95)),
             "grey": grey(rng, 0.55, 0.85, 0.1),
             "dusk": hsv(rng.uniform(0.02, 0.12), rng.uniform(0.3, 0.6), rng.uniform(0.7, 0.95)),
             "pale": hsv(rng.uniform(0.5, 0.6), rng.uniform(0.05, 0.25), rng.uniform(0.8, 1.0))}[kind]
    scene.polygon([(0, 0), (scene.w, 0), (scene.w, cam.hz + 2), (0, cam.hz + 2)], SKY, color,
                  tex_vgradient(0.8, 1.15, 0, cam.hz, rng.uniform(0.0, 0.35)))
    # distant skyline and tree line at the horizon
    x = -10.0
    while x < scene.w:
        bw = rng.uniform(6, 30)
        if rng.uniform() < 0.7:
            bh = rng.uniform(4, 30) * (cam.h / 256)
            scene.polygon([(x, cam.hz + 1), (x, cam.hz - bh), (x + bw, cam.hz - bh), (x + bw, cam.hz + 1)],
                          BUILDING, grey(rng, 0.3, 0.75, 0.25), tex_noise(0.05))
        else:
            r = rng.uniform(4, 12) * (cam.h / 256)
            scene.ellipse(x + bw / 2, cam.hz - r * 0.4, bw / 2 + 2, r, VEG,
                          hsv(rng.uniform(0.18, 0.35), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.5)),
                          tex_leaves(0.25))
        x += bw


def paint_ground(scene: Scene, cam: Camera, rng, layout):
    road_l, road_r, side_w_l, side_w_r, strip_l, strip_r = layout
    scene.polygon([(0, cam.hz), (scene.w, cam.hz), (scene.w, scene.h), (0, scene.h)], TERRAIN,
                  hsv(rng.uniform(0.12, 0.3), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.6)), tex_smooth(0.25, 0.1))
    asphalt = grey(rng, 0.22, 0.55, 0.12)
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
        col = any_color(rng, 0.4, 0.85, 0.35)
        x0, x1 = sorted((edge, outer))
        scene.polygon(_ground_quad(cam, x0, x1), SIDEWALK, col, tex_tiles(rng.uniform(5, 9), rng.uniform(0, 5)))
        kerb = sorted((edge, edge + sign * 0.25))
        scene.polygon(_ground_quad(cam, *kerb), SIDEWALK, tuple(c * 0.8 for c in col), tex_noise(0.05))
        if strip > 0:
            a, b = sorted((outer, outer + sign * strip))
            scene.polygon(_ground_quad(cam, a, b), TERRAIN,
                          hsv(rng.uniform(0.08, 0.3), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.65)),
                          tex_smooth(0.3, 0.12))


def _draw_building(scene: Scene, cam: Camera, rng, x, z0, z1, height):
    quad = _facade(cam, x, z0, z1, 0, height)
    col = any_color(rng, 0.3, 0.9, 0.5)
    tex = tex_noise(0.04) if rng.uniform() < 0.5 else tex_bricks(rng.uniform(3, 5))
    scene.polygon(quad, BUILDING, col, tex)
    # a grid of windows, each a small quad on the facade (part of the building class)
    floors = max(int(height / rng.uniform(2.8, 3.6)), 1)
    cols = max(int((z1 - z0) / rng.uniform(2.5, 4.0)), 1)
    glass = hsv(rng.uniform(0.5, 0.7), rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.45))
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


def paint_street_side(scene: Scene, cam: Camera, rng, x_front, sign):
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
            scene.polygon(_facade(cam, x, z, z + length, 0, h), WALL, any_color(rng, 0.25, 0.85, 0.5),
                          tex_bricks(rng.uniform(2.5, 4)) if rng.uniform() < 0.6 else tex_smooth(0.15, 0.06))
        elif kind == "fence":
            h = rng.uniform(1.3, 2.5)
            quad = _facade(cam, x, z, z + length, 0, h)
            scene.polygon(quad, FENCE, any_color(rng, 0.2, 0.9, 0.6), tex_slats(rng.uniform(3, 6), 0.55))
        elif kind == "hedge":
            h = rng.uniform(0.8, 1.8)
            scene.polygon(_facade(cam, x, z, z + length, 0, h), VEG,
                          hsv(rng.uniform(0.17, 0.38), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.55)), tex_leaves())
        z += length + rng.uniform(0, 4)


def paint_tree(scene, cam, rng, x, z):
    ppm = cam.ppm(z)
    cx, cy = cam.px(x, 0, z)
    sp = Sprite(scene, cx, cy, ppm, 1)
    trunk_h = rng.uniform(2.0, 3.5)
    sp.rect(-0.15, 0, 0.15, trunk_h + 0.5, VEG, hsv(rng.uniform(0.05, 0.1), 0.5, rng.uniform(0.15, 0.4)),
            tex_noise(0.08))
    leaf = (hsv(rng.uniform(0.15, 0.4), rng.uniform(0.35, 0.85), rng.uniform(0.2, 0.6))
            if rng.uniform() < 0.85 else hsv(rng.uniform(0.02, 0.12), 0.7, rng.uniform(0.4, 0.8)))
    r = rng.uniform(1.3, 2.6)
    for _ in range(rng.integers(3, 6)):
        u, v = rng.uniform(-r * 0.6, r * 0.6), trunk_h + r + rng.uniform(-r * 0.4, r * 0.5)
        sp.circle(u, v, r * rng.uniform(0.6, 1.0), VEG, leaf, tex_leaves())


def paint_pole_thing(scene, cam, rng, x, z, kind):
    sp = Sprite(scene, *cam.px(x, 0, z), cam.ppm(z), 1 if rng.uniform() < 0.5 else -1)
    pole_col = grey(rng, 0.25, 0.7, 0.15)
    if kind == "light":
        h = rng.uniform(3.0, 4.5)
        sp.rect(-0.13, 0, 0.13, h, POLE, pole_col, tex_noise(0.05))
        box = grey(rng, 0.08, 0.35, 0.3) if rng.uniform() < 0.8 else (0.7, 0.6, 0.1)
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
            sp.rect(0.9, h - 0.05, 1.5, h + 0.15, POLE, grey(rng, 0.6, 0.95, 0.2))


def paint_person(sp: Sprite, rng, label=PERSON, seated=False):
    skin = hsv(rng.uniform(0.03, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    shirt = any_color(rng, 0.15, 0.95)
    pants = any_color(rng, 0.1, 0.7, 0.6)
    if seated:  # on a bike: hips on the seat, hands on the bars, feet at the crank
        sp.poly([(-0.3, 1.05), (-0.05, 1.05), (0.15, 0.6), (0.02, 0.3), (-0.1, 0.3), (-0.05, 0.6)], label, pants)
        sp.poly([(-0.35, 1.0), (-0.1, 1.0), (0.15, 1.6), (-0.1, 1.65)], label, shirt, tex_noise(0.05))
        sp.line([(0.05, 1.5), (0.45, 1.15)], 0.1, label, shirt)
        sp.circle(0.07, 1.78, 0.13, label, skin)
        if rng.uniform() < 0.5:  # helmet
            sp.circle(0.07, 1.83, 0.13, label, any_color(rng))
        return
    step = rng.uniform(-0.25, 0.25)
    sp.poly([(-0.12, 0.95), (0.02, 0.95), (step * 0.5 + 0.03, 0), (step * 0.5 - 0.1, 0)], label, pants)
    sp.poly([(-0.02, 0.95), (0.12, 0.95), (-step * 0.5 + 0.1, 0), (-step * 0.5 - 0.03, 0)], label, pants)
    sp.poly([(-0.17, 0.9), (0.17, 0.9), (0.2, 1.45), (-0.2, 1.45)], label, shirt, tex_noise(0.05))
    sp.line([(-0.18, 1.42), (-0.25 - step * 0.3, 0.85)], 0.09, label, shirt)
    sp.line([(0.18, 1.42), (0.25 + step * 0.3, 0.85)], 0.09, label, shirt)
    sp.circle(0, 1.6, 0.13, label, skin)
    if rng.uniform() < 0.3:  # a bag or a coat hem
        sp.rect(0.15, 0.9, 0.32, 1.2, label, any_color(rng))


def paint_bicycle(sp: Sprite, rng):
    col = any_color(rng, 0.1, 0.9)
    tyre = (0.08, 0.08, 0.08)
    for u in (-0.55, 0.55):
        sp.circle(u, 0.34, 0.34, BICYCLE, tyre, ring=0.1)
    frame = [(-0.55, 0.34), (-0.15, 0.95), (0.45, 0.95), (0.0, 0.34), (-0.55, 0.34)]
    sp.line(frame, 0.09, BICYCLE, col)
    sp.line([(0.0, 0.34), (-0.15, 0.95)], 0.09, BICYCLE, col)
    sp.line([(0.45, 0.95), (0.55, 0.34)], 0.09, BICYCLE, col)
    sp.line([(0.4, 1.15), (0.5, 1.15), (0.45, 0.95)], 0.09, BICYCLE, col)
    sp.rect(-0.28, 0.95, -0.05, 1.02, BICYCLE, (0.1, 0.1, 0.1))


def paint_motorcycle(sp: Sprite, rng):
    col = any_color(rng, 0.15, 0.95)
    for u in (-0.7, 0.7):
        sp.circle(u, 0.33, 0.33, MOTORCYCLE, (0.07, 0.07, 0.07))
        sp.circle(u, 0.33, 0.13, MOTORCYCLE, grey(rng, 0.5, 0.8))
    sp.poly([(-0.75, 0.55), (-0.2, 0.45), (0.45, 0.45), (0.7, 0.8), (0.35, 0.95), (-0.3, 0.95), (-0.8, 0.8)],
            MOTORCYCLE, col, tex_smooth(0.2, 0.03))
    sp.rect(-0.2, 0.3, 0.35, 0.5, MOTORCYCLE, grey(rng, 0.2, 0.5))  # engine
    sp.line([(0.55, 0.85), (0.5, 1.2)], 0.06, MOTORCYCLE, (0.15, 0.15, 0.15))


def _wheels(sp, us, r, label, rng):
    for u in us:
        sp.circle(u, r, r, label, (0.06, 0.06, 0.06))
        sp.circle(u, r, r * 0.45, label, grey(rng, 0.45, 0.8))


def paint_car(sp: Sprite, rng):
    col = any_color(rng, 0.1, 0.95)
    glass = hsv(rng.uniform(0.5, 0.65), rng.uniform(0, 0.4), rng.uniform(0.1, 0.4))
    L = rng.uniform(1.9, 2.4)
    sp.poly([(-L, 0.3), (L, 0.3), (L + 0.05, 0.85), (0.9, 1.0), (0.45, 1.45), (-1.2, 1.45), (-1.7, 1.0),
             (-L - 0.05, 0.9)], CAR, col, tex_smooth(0.12, 0.03))
    sp.poly([(0.8, 1.0), (0.4, 1.38), (-0.35, 1.38), (-0.35, 1.0)], CAR, glass)
    sp.poly([(-0.45, 1.0), (-0.45, 1.38), (-1.1, 1.38), (-1.5, 1.0)], CAR, glass)
    sp.rect(L - 0.1, 0.7, L + 0.03, 0.8, CAR, (1.0, 0.95, 0.7))
    _wheels(sp, (-L + 0.65, L - 0.65), 0.33, CAR, rng)


def paint_truck(sp: Sprite, rng):
    cab = any_color(rng, 0.15, 0.95)
    box = any_color(rng, 0.3, 0.95, 0.5)
    sp.poly([(1.5, 0.5), (3.1, 0.5), (3.1, 2.2), (2.7, 2.9), (1.5, 2.9)], TRUCK, cab, tex_smooth(0.1, 0.03))
    sp.poly([(2.3, 1.8), (2.95, 1.8), (2.65, 2.6), (2.3, 2.6)], TRUCK, (0.15, 0.2, 0.3))
    sp.rect(-3.8, 0.6, 1.4, rng.uniform(3.2, 3.9), TRUCK, box, tex_slats(rng.uniform(6, 12), 0.93))
    sp.rect(-3.8, 0.45, 3.1, 0.65, TRUCK, (0.12, 0.12, 0.12))
    _wheels(sp, (-2.9, -1.8, 2.2), 0.5, TRUCK, rng)


def paint_bus(sp: Sprite, rng):
    col = any_color(rng, 0.3, 0.95, 0.9)
    glass = hsv(rng.uniform(0.5, 0.65), rng.uniform(0, 0.4), rng.uniform(0.08, 0.3))
    L = rng.uniform(5.0, 6.0)
    sp.poly([(-L, 0.35), (L, 0.35), (L, 2.9), (L - 0.3, 3.15), (-L, 3.15)], BUS, col, tex_smooth(0.08, 0.02))
    n = int(L * 2 / 1.6)
    for i in range(n):
        u0 = -L + 0.3 + i * (2 * L - 0.6) / n
        sp.rect(u0 + 0.1, 1.55, u0 + (2 * L - 0.6) / n - 0.1, 2.6, BUS, glass)
    sp.rect(L - 1.3, 0.5, L - 0.5, 2.5, BUS, glass)  # door
    sp.rect(-L, 1.0, L, 1.2, BUS, any_color(rng))  # livery stripe
    _wheels(sp, (-L + 1.3, L - 1.8), 0.5, BUS, rng)


def paint_train(sp: Sprite, rng):
    col = any_color(rng, 0.4, 0.95, 0.8)
    glass = hsv(rng.uniform(0.5, 0.65), rng.uniform(0, 0.3), rng.uniform(0.05, 0.3))
    L = rng.uniform(10, 16)
    sp.poly([(-L, 0.25), (L - 1.2, 0.25), (L, 1.2), (L, 2.8), (L - 0.6, 3.4), (-L, 3.4)], TRAIN, col,
            tex_smooth(0.06, 0.02))
    sp.rect(-L, 0.25, L - 1.0, 0.7, TRAIN, (0.15, 0.15, 0.17), tex_noise(0.08))  # skirt hides the wheels
    stripe = any_color(rng)
    sp.rect(-L, 1.0, L, 1.25, TRAIN, stripe)
    u = -L + 0.6
    while u < L - 2.5:
        sp.rect(u, 1.7, u + 1.4, 2.8, TRAIN, glass)
        u += 2.0
    sp.poly([(L - 1.0, 1.6), (L - 0.1, 1.6), (L - 0.1, 2.7), (L - 0.6, 3.2), (L - 1.0, 3.2)], TRAIN, glass)
    # pantograph
    sp.line([(-2, 3.4), (-1.2, 4.3), (-0.4, 3.4)], 0.08, TRAIN, (0.2, 0.2, 0.2))
    sp.line([(-1.8, 4.3), (-0.6, 4.3)], 0.08, TRAIN, (0.2, 0.2, 0.2))
