"""Datasets of a classification run, built from the config (CIFAR-10 arrays or ImageNet-style folders)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset, default_collate

from nasnet_det.data import ArrayDataset, cifar_transforms, holdout_split, load_cifar10, load_cifar_source
from nasnet_det.data.imagenet import (
    IMG_EXTENSIONS,
    build_imagenet_datasets,
    collate_skipping,
    make_fake_imagenet,
    make_sample_image_folder,
)
from nasnet_det.engine.distributed import barrier
from nasnet_det.utils.errors import BadInputError

logger = logging.getLogger(__name__)


@dataclass
class ClassificationData:
    train: Dataset
    val: Dataset
    num_classes: int
    image_size: int
    collate_fn: Callable
    description: str


def check_not_flat(folder: str | Path, key: str) -> None:
    """Raise one line naming ``key`` when ``folder`` holds images directly and no class sub-folders: ImageNet's
    validation archive unpacks so (50,000 JPEGs, labels in the devkit), and the labels need one folder per class."""
    root = Path(folder)
    if not root.is_dir() or any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return  # missing folders and class layouts are checked with the datasets (nasnet_det/data/imagenet.py)
    images = sum(p.is_file() and p.suffix.lower() in IMG_EXTENSIONS for p in root.iterdir())
    if images:
        raise BadInputError(
            f"{key} {root} holds {images} images directly and no class sub-folders; it must hold one sub-folder "
            "per class, named as in DATA.TRAIN_DIR (n01440764/ ...): move each image into its class folder first "
            "(the usual ImageNet valprep step; e.g. torchvision.datasets.ImageNet(ROOT, split='val') with "
            "ILSVRC2012_img_val.tar and the devkit in ROOT writes ROOT/val/<class>/)")


def build_data(cfg, output_dir: str | Path, is_main: bool = True) -> ClassificationData:
    """Train and evaluation datasets for ``cfg.DATA``.

    CIFAR-10 from ``folder:ROOT`` is evaluated on the official test split; from ``npz:`` / ``synthetic:`` on a
    held-out split of ``DATA.VAL_SIZE`` images (seed 0, so every run holds out the same images).
    """
    d = cfg.DATA
    if d.DATASET == "cifar10":
        kind, _, arg = d.SOURCE.partition(":")
        if kind == "folder":
            if d.DOWNLOAD:
                # One download: rank 0 fetches the archive while the other processes wait, then all read it.
                if is_main:
                    load_cifar10(arg, train=True, download=True)
                barrier()
            x, y = load_cifar10(arg, train=True)
            x_val, y_val = load_cifar10(arg, train=False)
            where = f"CIFAR-10 {arg} (train {len(x)}, test split {len(x_val)})"
        else:
            x, y = load_cifar_source(d.SOURCE)
            train_idx, val_idx = holdout_split(len(x), d.VAL_SIZE, seed=0)
            x_val, y_val, x, y = x[val_idx], y[val_idx], x[train_idx], y[train_idx]
            where = f"{d.SOURCE} (train {len(x)}, held-out {len(x_val)})"
        if d.LIMIT_TRAIN > 0:
            x, y = x[: d.LIMIT_TRAIN], y[: d.LIMIT_TRAIN]
            where += f", first {len(x)} train images"
        if x.shape[1:3] != (32, 32):
            raise ValueError(f"{d.SOURCE}: CIFAR training expects 32x32 images, got {x.shape[1]}x{x.shape[2]}")
        return ClassificationData(ArrayDataset(x, y, cifar_transforms(True, d.CUTOUT)),
                                  ArrayDataset(x_val, y_val, cifar_transforms(False)),
                                  10, 32, default_collate, where)
    train_dir, val_dir = d.TRAIN_DIR, d.VAL_DIR
    if not train_dir and d.IMAGE_SAMPLE:  # the embedded real photos as an ImageFolder
        root = Path(output_dir) / "sample_images"
        if is_main and not (root / "val").is_dir():
            make_sample_image_folder(root, d.IMAGE_SAMPLE, d.SAMPLE_TRAIN_PER_CLASS, d.SAMPLE_VAL_PER_CLASS)
        barrier()  # other ranks wait until rank 0 has written it
        train_dir, val_dir = root / "train", root / "val"
    elif not train_dir:
        root = Path(output_dir) / "fake_imagenet"
        if is_main and not (root / "val").is_dir():
            make_fake_imagenet(root, d.FAKE_CLASSES, d.FAKE_TRAIN_PER_CLASS, d.FAKE_VAL_PER_CLASS,
                               size=max(48, d.IMAGE_SIZE + d.IMAGE_SIZE // 2), seed=0)
        barrier()  # other ranks wait until rank 0 has written the fake folder
        train_dir, val_dir = root / "train", root / "val"
    elif not val_dir:
        raise ValueError("DATA.VAL_DIR is empty; give the ImageNet validation folder (one sub-folder per class)")
    else:
        check_not_flat(train_dir, "DATA.TRAIN_DIR")
        check_not_flat(val_dir, "DATA.VAL_DIR")
    train, val = build_imagenet_datasets(train_dir, val_dir, d.IMAGE_SIZE, d.VAL_CROP_FRACTION,
                                         d.MIN_CROP_AREA, d.COLOR_JITTER)
    where = (f"ImageFolder train {train_dir} ({len(train)} images), val {val_dir} ({len(val)}), "
             f"{len(train.classes)} classes")
    return ClassificationData(train, val, len(train.classes), d.IMAGE_SIZE, collate_skipping, where)
