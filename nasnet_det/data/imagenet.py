"""ImageNet-style ImageFolder data for pretraining: checks, Inception-style transforms, corrupt-image skipping.

Layout: ``TRAIN_DIR/<class>/<image>`` and ``VAL_DIR/<class>/<image>`` with the same class folders
(torchvision ``ImageFolder``; class index = position of the folder name in sorted order; hidden folders
such as ``.ipynb_checkpoints`` are not classes).
:func:`make_sample_image_folder` writes the embedded CIFAR-10 sample (real photos) as such a folder, for smoke
runs; :func:`make_fake_imagenet` writes a tiny folder of generated JPEG files, for tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import default_collate
from torchvision import datasets
from torchvision import transforms as T

from nasnet_det.utils.images import to_rgb8
from nasnet_det.utils.io import atomic_directory, remove_stale_tmp

INCEPTION_MEAN = (0.5, 0.5, 0.5)  # Inception preprocessing maps pixels to [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)
IMG_EXTENSIONS = datasets.folder.IMG_EXTENSIONS


class CorruptImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


def class_folders(root: str | Path, role: str = "image") -> list[str]:
    """Sorted class folder names under ``root``; clear errors for a missing or empty folder."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{role} folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{role} folder {root} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{role} folder {root} has no class sub-folders; expected {root}/<class>/<image>.jpg")
    empty = [c for c in classes if not any(f.suffix.lower() in IMG_EXTENSIONS
                                           for f in (root / c).rglob("*") if f.is_file())]
    if empty:
        raise ValueError(f"{role} folder {root}: {len(empty)} class folder(s) hold no images "
                         f"({', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}); "
                         f"image extensions are {', '.join(IMG_EXTENSIONS)}")
    return classes


def check_image_folders(train_dir: str | Path, val_dir: str | Path) -> list[str]:
    """The class list shared by the train and val folders; raises if either is bad or they differ."""
    train_classes = class_folders(train_dir, "train")
    val_classes = class_folders(val_dir, "val")
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise ValueError(
            f"class folders differ between train {train_dir} ({len(train_classes)} classes) and val {val_dir} "
            f"({len(val_classes)} classes), so label indices would not match: only in train: "
            f"{only_train[:5] or '-'}{' ...' if len(only_train) > 5 else ''}; only in val: "
            f"{only_val[:5] or '-'}{' ...' if len(only_val) > 5 else ''}")
    return train_classes


class SkippingImageFolder(datasets.ImageFolder):
    """``ImageFolder`` that skips undecodable images instead of crashing the run.

    A corrupt file is replaced by the next readable one (so batch sizes stay equal across DDP processes),
    a :class:`CorruptImageWarning` names it once, and :attr:`skipped` lists it (per process / worker).
    Samples are ``(image, label, skipped_paths)``; :func:`collate_skipping` turns a batch of them into
    ``(images, labels, skipped_paths)`` so the training loop can count skips made in worker processes.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, max_tries: int = 10):
        super().__init__(str(root), transform=transform)
        self.max_tries = max_tries
        self.skipped: list[str] = []

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        # torchvision counts every folder, hidden ones (.ipynb_checkpoints) included, which would shift the
        # labels against check_image_folders' list; use that one list so labels and the check agree.
        classes = class_folders(directory)
        return classes, {name: i for i, name in enumerate(classes)}

    def _load(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # a full decode, so truncated files fail here
            img = to_rgb8(img, path)  # 16-bit and other modes scaled to 8 bits, not clipped to white
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def __getitem__(self, index: int) -> tuple[Any, int, tuple[str, ...]]:
        bad: list[str] = []
        for attempt in range(self.max_tries):
            i = (index + attempt) % len(self.samples)
            try:
                img, target = self._load(i)
                return img, target, tuple(bad)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                path = self.samples[i][0]
                bad.append(path)
                if path not in self.skipped:
                    self.skipped.append(path)
                    warnings.warn(f"skipping corrupt image {path}: {exc}", CorruptImageWarning, stacklevel=2)
        raise RuntimeError(f"{self.max_tries} consecutive unreadable images starting at "
                           f"{self.samples[index][0]}; is the dataset folder damaged?")


def collate_skipping(batch: list[tuple[Any, int, tuple[str, ...]]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, labels = default_collate([(b[0], b[1]) for b in batch])
    return images, labels, [p for b in batch for p in b[2]]


def imagenet_transforms(train: bool, image_size: int = 224, val_crop_fraction: float = 0.875,
                        min_crop_area: float = 0.08, color_jitter: float = 0.0) -> Callable:
    """Inception-style preprocessing: train = RandomResizedCrop + flip (+ optional colour jitter), val =
    resize to ``image_size / val_crop_fraction`` + center crop; both scale pixels to [-1, 1] (mean = std = 0.5)."""
    normalize = [T.ToTensor(), T.Normalize(INCEPTION_MEAN, INCEPTION_STD)]
    if train:
        steps: list[Any] = [T.RandomResizedCrop(image_size, scale=(min_crop_area, 1.0)), T.RandomHorizontalFlip()]
        if color_jitter > 0:
            steps.append(T.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
        return T.Compose(steps + normalize)
    resize = int(round(image_size / val_crop_fraction))
    return T.Compose([T.Resize(resize), T.CenterCrop(image_size), *normalize])


def build_imagenet_datasets(train_dir: str | Path, val_dir: str | Path, image_size: int = 224,
                            val_crop_fraction: float = 0.875, min_crop_area: float = 0.08,
                            color_jitter: float = 0.0) -> tuple[SkippingImageFolder, SkippingImageFolder]:
    """Checked train/val ImageFolder datasets with the standard transforms."""
    check_image_folders(train_dir, val_dir)
    train = SkippingImageFolder(train_dir, imagenet_transforms(True, image_size, val_crop_fraction,
                                                               min_crop_area, color_jitter))
    val = SkippingImageFolder(val_dir, imagenet_transforms(False, image_size, val_crop_fraction))
    return train, val


SAMPLE_IMAGE_FOLDERS = ("cifar10",)  # the embedded samples DATA.IMAGE_SAMPLE can name


def make_sample_image_folder(root: str | Path, sample: str, train_per_class: int,
                             val_per_class: int) -> tuple[Path, Path]:
    """Write ``root/train`` and ``root/val`` ImageFolder trees (PNG, lossless) of an embedded real-photo sample:
    ``cifar10`` = the first ``train_per_class`` and the next ``val_per_class`` images of each class of the
    2000-image CIFAR-10 sample (200 per class), one folder per class name. Built atomically, as
    :func:`make_fake_imagenet`. Returns (train_dir, val_dir)."""
    from nasnet_det.data.cifar import CIFAR10_CLASSES, load_cifar10_npz
    from nasnet_det.data.sample import cifar10_npz

    if sample not in SAMPLE_IMAGE_FOLDERS:
        raise ValueError(f"DATA.IMAGE_SAMPLE must be one of {', '.join(SAMPLE_IMAGE_FOLDERS)}, got {sample!r}")
    x, y = load_cifar10_npz(cifar10_npz())
    per_class = int(np.bincount(y, minlength=len(CIFAR10_CLASSES)).min())
    if train_per_class < 1 or val_per_class < 1 or train_per_class + val_per_class > per_class:
        raise ValueError(f"DATA.SAMPLE_TRAIN_PER_CLASS + DATA.SAMPLE_VAL_PER_CLASS must be <= {per_class} (the "
                         f"sample's images per class), each >= 1; got {train_per_class} + {val_per_class}")
    root = Path(root)
    remove_stale_tmp(root.parent)
    with atomic_directory(root) as tmp:
        for c, name in enumerate(CIFAR10_CLASSES):
            rows = np.flatnonzero(y == c)
            for split, part in (("train", rows[:train_per_class]),
                                ("val", rows[train_per_class:train_per_class + val_per_class])):
                folder = tmp / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in part:
                    Image.fromarray(x[i]).save(folder / f"{sample}_{i:05d}.png")
    return root / "train", root / "val"


def make_fake_imagenet(root: str | Path, num_classes: int = 3, train_per_class: int = 8,
                       val_per_class: int = 2, size: int = 48, seed: int = 0) -> tuple[Path, Path]:
    """Write ``root/train`` and ``root/val`` ImageFolder trees of real JPEG files whose class is learnable
    (each class has its own colour and stripe direction, plus noise). Returns (train_dir, val_dir).

    The folder is built under a temporary name and renamed to ``root`` when complete (replacing an old
    ``root``), so a kill while generating never leaves a partial ``root``; leftovers of killed runs are removed."""
    root = Path(root)
    remove_stale_tmp(root.parent)
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1234).uniform(40, 215, size=(num_classes, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    with atomic_directory(root) as tmp:
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            for c in range(num_classes):
                folder = tmp / split / f"n{c:08d}"
                folder.mkdir(parents=True, exist_ok=True)
                angle = np.pi * c / num_classes
                for i in range(per_class):
                    stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 0.5 + rng.uniform(0, 6.3))
                    img = palette[c] + 40 * stripes[..., None] + rng.normal(0, 20, size=(size, size, 3))
                    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                        folder / f"{split}_{i:04d}.JPEG", quality=90)
    return root / "train", root / "val"
