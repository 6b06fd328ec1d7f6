"""Data: class tables, dataset readers, augmentation pipelines, preparation and the synthetic set."""

from eseg_cli.data.classes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABELS,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    TRAINID_TO_LABELID,
)
from eseg_cli.data.datasets import (
    ADE20KDataset,
    CityscapesDataset,
    FolderDataset,
    SegmentationDataset,
    SyntheticDataset,
    build_dataset,
    dataset_class,
    list_datasets,
    register_dataset,
)
from eseg_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "ADE20K_CLASSES", "ADE20K_PALETTE", "CITYSCAPES_CLASSES", "CITYSCAPES_LABELS", "CITYSCAPES_PALETTE",
    "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "TRAINID_TO_LABELID", "ADE20KDataset",
    "CityscapesDataset", "FolderDataset", "SegmentationDataset", "SyntheticDataset", "build_dataset", "dataset_class",
    "build_transforms", "list_datasets", "register_dataset",
]
