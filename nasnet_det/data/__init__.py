"""Datasets shared by the search and training code (CIFAR-10 arrays, transforms, splits)."""

from nasnet_det.data.cifar import (
    CIFAR_MEAN,
    CIFAR_STD,
    ArrayDataset,
    Cutout,
    cifar_transforms,
    holdout_split,
    load_cifar10,
    load_cifar10_npz,
    load_cifar_source,
    synthetic_cifar,
)

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "ArrayDataset", "Cutout", "cifar_transforms", "holdout_split",
           "load_cifar10", "load_cifar10_npz", "load_cifar_source", "synthetic_cifar"]
