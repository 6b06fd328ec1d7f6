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

Modules: :mod:`.canvas` (the image and label painted together, textures, colours), :mod:`.street` (the camera
and the painters of each class), :mod:`.scene` (one scene composed, lit and noised) and :mod:`.generate`
(samples, writing a set, the cached default set).
"""

from eseg_cli.data.synthetic.generate import (
    CITY,
    DEFAULT,
    GENERATOR_VERSION,
    SyntheticParams,
    ensure_default,
    generate,
    render_sample,
    sample_paths,
)
from eseg_cli.data.synthetic.scene import render_scene

__all__ = ["CITY", "DEFAULT", "GENERATOR_VERSION", "SyntheticParams", "ensure_default", "generate", "render_sample",
           "render_scene", "sample_paths"]
