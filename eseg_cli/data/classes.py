"""Class tables and palettes: the one place where dataset label facts live.

* ``CITYSCAPES_LABELS``: the official 35-entry Cityscapes label table (cityscapesScripts ``labels.py``):
  name, id (labelIds), trainId (255 = ignored in training/eval), category, hasInstances, ignoreInEval, colour.
* ``CITYSCAPES_CLASSES`` / ``CITYSCAPES_PALETTE``: the 19 training classes, in trainId order.
* ``ADE20K_CLASSES`` / ``ADE20K_PALETTE``: the 150 SceneParsing classes (after reduce-zero-label, class k
  is annotation value k+1).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE_INDEX = 255


class CityscapesLabel(NamedTuple):
    """One row of the official Cityscapes label table."""

    name: str
    id: int
    train_id: int
    category: str
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


_L = CityscapesLabel
# Order and values as in the official table; polygons are rasterised with these ids.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    _L("unlabeled", 0, 255, "void", False, True, (0, 0, 0)),
    _L("ego vehicle", 1, 255, "void", False, True, (0, 0, 0)),
    _L("rectification border", 2, 255, "void", False, True, (0, 0, 0)),
    _L("out of roi", 3, 255, "void", False, True, (0, 0, 0)),
    _L("static", 4, 255, "void", False, True, (0, 0, 0)),
    _L("dynamic", 5, 255, "void", False, True, (111, 74, 0)),
    _L("ground", 6, 255, "void", False, True, (81, 0, 81)),
    _L("road", 7, 0, "flat", False, False, (128, 64, 128)),
    _L("sidewalk", 8, 1, "flat", False, False, (244, 35, 232)),
    _L("parking", 9, 255, "flat", False, True, (250, 170, 160)),
    _L("rail track", 10, 255, "flat", False, True, (230, 150, 140)),
    _L("building", 11, 2, "construction", False, False, (70, 70, 70)),
    _L("wall", 12, 3, "construction", False, False, (102, 102, 156)),
    _L("fence", 13, 4, "construction", False, False, (190, 153, 153)),
    _L("guard rail", 14, 255, "construction", False, True, (180, 165, 180)),
    _L("bridge", 15, 255, "construction", False, True, (150, 100, 100)),
    _L("tunnel", 16, 255, "construction", False, True, (150, 120, 90)),
    _L("pole", 17, 5, "object", False, False, (153, 153, 153)),
    _L("polegroup", 18, 255, "object", False, True, (153, 153, 153)),
    _L("traffic light", 19, 6, "object", False, False, (250, 170, 30)),
    _L("traffic sign", 20, 7, "object", False, False, (220, 220, 0)),
    _L("vegetation", 21, 8, "nature", False, False, (107, 142, 35)),
    _L("terrain", 22, 9, "nature", False, False, (152, 251, 152)),
    _L("sky", 23, 10, "sky", False, False, (70, 130, 180)),
    _L("person", 24, 11, "human", True, False, (220, 20, 60)),
    _L("rider", 25, 12, "human", True, False, (255, 0, 0)),
    _L("car", 26, 13, "vehicle", True, False, (0, 0, 142)),
    _L("truck", 27, 14, "vehicle", True, False, (0, 0, 70)),
    _L("bus", 28, 15, "vehicle", True, False, (0, 60, 100)),
    _L("caravan", 29, 255, "vehicle", True, True, (0, 0, 90)),
    _L("trailer", 30, 255, "vehicle", True, True, (0, 0, 110)),
    _L("train", 31, 16, "vehicle", True, False, (0, 80, 100)),
    _L("motorcycle", 32, 17, "vehicle", True, False, (0, 0, 230)),
    _L("bicycle", 33, 18, "vehicle", True, False, (119, 11, 32)),
    _L("license plate", -1, -1, "vehicle", False, True, (0, 0, 142)),
)
del _L

CITYSCAPES_NAME_TO_LABEL: dict[str, CityscapesLabel] = {lb.name: lb for lb in CITYSCAPES_LABELS}
CITYSCAPES_ID_TO_LABEL: dict[int, CityscapesLabel] = {lb.id: lb for lb in CITYSCAPES_LABELS if lb.id >= 0}

_TRAIN = sorted((lb for lb in CITYSCAPES_LABELS if 0 <= lb.train_id < IGNORE_INDEX), key=lambda lb: lb.train_id)
CITYSCAPES_CLASSES: list[str] = [lb.name for lb in _TRAIN]
CITYSCAPES_PALETTE: list[tuple[int, int, int]] = [lb.color for lb in _TRAIN]
#: trainId -> labelId, for test-server submissions (predictions must be written as labelIds).
TRAINID_TO_LABELID: dict[int, int] = {lb.train_id: lb.id for lb in _TRAIN}
del _TRAIN


def cityscapes_id_to_trainid_lut() -> np.ndarray:
    """A 256-entry uint8 lookup table labelId -> trainId (unknown ids -> 255)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lb in CITYSCAPES_LABELS:
        if lb.id >= 0:
            lut[lb.id] = lb.train_id if 0 <= lb.train_id < 256 else IGNORE_INDEX
    return lut


def cityscapes_trainid_to_labelid_lut() -> np.ndarray:
    """A 256-entry uint8 lookup table trainId -> labelId (255 -> 0 'unlabeled'): ``lut[mask]`` turns a trainId
    mask into the official labelIds (the Cityscapes test server's format)."""
    lut = np.zeros(256, dtype=np.uint8)
    for t, i in TRAINID_TO_LABELID.items():
        lut[t] = i
    return lut


ADE20K_CLASSES: list[str] = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]

# The SceneParsing benchmark colours (color150), one hex triple per class.
_ADE20K_HEX = (
    "787878 b47878 06e6e6 503232 04c803 787850 8c8c8c cc05ff e6e6e6 04fa07 e005ff ebff07 96053d 787846 "
    "08ff33 ff0652 8fff8c ccff04 ff3307 cc4603 0066c8 3de6fa ff0633 0b66ff ff0747 ff09e0 0907e6 dcdcdc "
    "ff095c 7009ff 08ffd6 07ffe0 ffb806 0aff47 ff290a 07ffff e0ff08 6608ff ff3d06 ffc207 ff7a08 00ff14 "
    "ff0829 ff0599 0633ff eb0cff a09614 00a3ff 8c8c8c fa0a0f 14ff00 1fff00 ff1f00 ffe000 99ff00 0000ff "
    "ff4700 00ebff 00adff 1f00ff 0bc8c8 ff5200 00fff5 003dff 00ff70 00ff85 ff0000 ffa300 ff6600 c2ff00 "
    "008fff 33ff00 0052ff 00ff29 00ffad 0a00ff adff00 00ff99 ff5c00 ff00ff ff00f5 ff0066 ffad00 ff0014 "
    "ffb8b8 001fff 00ff3d 0047ff ff00cc 00ffc2 00ff52 000aff 0070ff 3300ff 00c2ff 007aff 00ffa3 ff9900 "
    "00ff0a ff7000 8fff00 5200ff a3ff00 ffeb00 08b8aa 8500ff 00ff5c b800ff ff001f 00b8ff 00d6ff ff0070 "
    "5cff00 00e0ff 70e0ff 46b8a0 a300ff 9900ff 47ff00 ff00a3 ffcc00 ff008f 00ffeb 85ff00 ff00eb f500ff "
    "ff007a fff500 0abed4 d6ff00 00ccff 1400ff ffff00 0099ff 0029ff 00ffcc 2900ff 29ff00 ad00ff 00f5ff "
    "4700ff 7a00ff 00ffb8 005cff b8ff00 0085ff ffd600 19c2c2 66ff00 5c00ff"
)
ADE20K_PALETTE: list[tuple[int, int, int]] = [
    (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)) for h in _ADE20K_HEX.split()
]
del _ADE20K_HEX

assert len(CITYSCAPES_LABELS) == 35 and len(CITYSCAPES_CLASSES) == 19
assert len(ADE20K_CLASSES) == 150 and len(ADE20K_PALETTE) == 150


def palette_array(palette: list[tuple[int, int, int]], ignore_color=(0, 0, 0)) -> np.ndarray:
    """A 256x3 uint8 colour table for ``palette`` (index 255 and unused entries -> ``ignore_color``)."""
    out = np.zeros((256, 3), dtype=np.uint8)
    out[:] = ignore_color
    out[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return out


def colorize(mask: np.ndarray, palette) -> np.ndarray:
    """A label map as an HxWx3 uint8 colour image (``palette`` a list of RGB or a :func:`palette_array`; ids past
    255 are drawn as 255). The one colouring of labels: colour masks, overlays, previews, report samples."""
    colors = palette if isinstance(palette, np.ndarray) and palette.shape == (256, 3) else palette_array(palette)
    mask = np.asarray(mask)
    return colors[mask] if mask.dtype == np.uint8 else colors[np.clip(mask, 0, 255)]


def overlay(image: np.ndarray, mask: np.ndarray, palette, alpha: float = 0.5,
            ignore_index: int | None = None) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colorize(mask)`` as uint8 (``image`` HxWx3 uint8); with ``ignore_index``,
    its pixels are shown darkened instead."""
    out = image.astype(np.float32) * (1 - alpha) + colorize(mask, palette).astype(np.float32) * alpha
    if ignore_index is not None:
        ign = np.asarray(mask) == ignore_index
        out[ign] = image[ign].astype(np.float32) * 0.35
    return (out + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Mapillary Vistas v1.2 -> Cityscapes trainIds (for pretraining a Cityscapes model on Mapillary)
# ----------------------------------------------------------------------------------------------------------

# Mapillary Vistas v1.2 label name -> Cityscapes trainId; every other label is ignored (255). Cityscapes
# counts lane markings, manholes and crosswalks as road, curbs as sidewalk, sign frames and street lights
# as poles; it leaves parking, rail track, guard rails, bridges, tunnels, caravans, trailers and the backs
# of traffic signs out of its 19 classes (void), so they are ignored here too.
MAPILLARY_TO_CITYSCAPES: dict[str, int] = {
    "construction--flat--road": 0, "construction--flat--bike-lane": 0, "construction--flat--service-lane": 0,
    "construction--flat--crosswalk-plain": 0, "marking--crosswalk-zebra": 0, "marking--general": 0,
    "object--manhole": 0, "object--catch-basin": 0, "object--pothole": 0,
    "construction--flat--sidewalk": 1, "construction--flat--pedestrian-area": 1, "construction--flat--curb-cut": 1,
    "construction--barrier--curb": 1,
    "construction--structure--building": 2,
    "construction--barrier--wall": 3,
    "construction--barrier--fence": 4,
    "object--support--pole": 5, "object--support--utility-pole": 5, "object--support--traffic-sign-frame": 5,
    "object--street-light": 5,
    "object--traffic-light": 6,
    "object--traffic-sign--front": 7,
    "nature--vegetation": 8,
    "nature--terrain": 9, "nature--sand": 9,
    "nature--sky": 10,
    "human--person": 11,
    "human--rider--bicyclist": 12, "human--rider--motorcyclist": 12, "human--rider--other-rider": 12,
    "object--vehicle--car": 13,
    "object--vehicle--truck": 14,
    "object--vehicle--bus": 15,
    "object--vehicle--on-rails": 16,
    "object--vehicle--motorcycle": 17,
    "object--vehicle--bicycle": 18,
}
