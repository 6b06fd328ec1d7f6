"""albumentations pipelines for training and evaluation (numpy HxWx3 uint8 image + HxW mask -> tensors)."""

from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from eseg_cli.data.classes import IGNORE_INDEX
from eseg_cli.errors import EsegError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(train: bool, *, crop_size=None, scale_range=None, hflip: bool = True,
                     photometric: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     ignore_index: int = IGNORE_INDEX, resize=None, seed: int | None = None,
                     normalize: bool = True) -> A.Compose:
    """The recipe's pipelines as one albumentations ``Compose``.

    train: [resize] -> random scale in ``scale_range`` -> pad to ``crop_size`` (image 0, mask
    ``ignore_index``) -> random crop of exactly ``crop_size`` -> horizontal flip -> photometric jitter ->
    normalize -> tensors. ``crop_size`` and ``scale_range`` are required (the recipe's ``crop_size`` and
    ``scale_range``). The fixed crop makes every sample the same size, so batches stack.
    val: [resize the image (not the mask) to ``resize`` = (H, W)] -> normalize -> tensors. The mask keeps
    its size so that scores are computed on the original labels: the evaluator resizes the predictions back.
    ``normalize=False`` leaves the image uint8 (3xHxW): inference normalises it itself (the Predictor's
    :func:`~eseg_cli.inference.predictor.normalize_uint8`, with the checkpoint's mean/std).

    Call as ``out = t(image=img, mask=mask)``; ``out["image"]`` is float32 3xHxW, ``out["mask"]`` a
    uint8/int tensor HxW (the datasets turn it into int64). ``seed`` fixes the random draws (for
    previews and tests; albumentations re-seeds per DataLoader worker).
    """
    ops: list = []
    if resize is not None:
        rh, rw = _pair(resize, "resize")
        if train:
            ops.append(A.Resize(rh, rw, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
        else:
            ops.append(ResizeImage(rh, rw))
    if train:
        if crop_size is None or scale_range is None:
            raise TypeError("training transforms need crop_size and scale_range (the recipe's)")
        ch, cw = _pair(crop_size, "crop_size")
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo <= hi:
            raise EsegError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        if (lo, hi) != (1.0, 1.0):
            # albumentations draws the factor as 1 + uniform(limit)
            ops.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                                     mask_interpolation=cv2.INTER_NEAREST, p=1.0))
        ops += [
            A.PadIfNeeded(min_height=ch, min_width=cw, position="random", border_mode=cv2.BORDER_CONSTANT,
                          fill=0, fill_mask=ignore_index),
            A.RandomCrop(height=ch, width=cw),
        ]
        if hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        if photometric:
            ops.append(A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.05, p=0.8))
    if normalize:
        ops.append(A.Normalize(mean=mean, std=std, max_pixel_value=255.0))
    ops.append(ToTensorV2())
    return A.Compose(ops, seed=seed)


class ResizeImage(A.ImageOnlyTransform):
    """Resize the image only (bilinear); the mask is left at its original size."""

    def __init__(self, height: int, width: int, p: float = 1.0):
        super().__init__(p=p)
        self.height, self.width = int(height), int(width)

    def apply(self, img, **params):
        return cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_LINEAR)

    def get_transform_init_args_names(self):
        return ("height", "width")


def _pair(v, what) -> tuple[int, int]:
    if isinstance(v, int):
        v = (v, v)
    try:
        h, w = int(v[0]), int(v[1])
    except (TypeError, ValueError, IndexError):
        raise EsegError(f"{what} must be (height, width), got {v!r}") from None
    if h <= 0 or w <= 0:
        raise EsegError(f"{what} must be positive, got {v!r}")
    return h, w
