"""nasnet_det.data.cifar: sources, split, dataset and transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.data import CIFAR_NPZ

from nasnet_det.data import (
    ArrayDataset,
    Cutout,
    cifar_transforms,
    holdout_split,
    load_cifar10,
    load_cifar10_npz,
    load_cifar_source,
    synthetic_cifar,
)


def test_npz_subset_loads_as_uint8_nhwc():
    x, y = load_cifar10_npz(CIFAR_NPZ)
    assert x.shape == (2000, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and set(np.unique(y)) <= set(range(10))
    x2, y2 = load_cifar_source(f"npz:{CIFAR_NPZ}")
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_npz_missing_key_is_named(tmp_path):
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(KeyError, match="y_train"):
        load_cifar10_npz(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        load_cifar10_npz(tmp_path / "nothere.npz")


def test_npz_wrong_dtype_or_labels_is_a_clear_error(tmp_path):
    y = np.arange(4) % 10
    np.savez(tmp_path / "float.npz", x_train=np.random.default_rng(0).random((4, 32, 32, 3)), y_train=y)
    with pytest.raises(ValueError, match=r"float\.npz.*uint8"):  # would otherwise become black images
        load_cifar10_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "labels.npz", x_train=np.zeros((4, 32, 32, 3), np.uint8), y_train=np.array([0, 1, 10, 3]))
    with pytest.raises(ValueError, match=r"labels\.npz.*0\.\.9"):
        load_cifar10_npz(tmp_path / "labels.npz")
    np.savez(tmp_path / "flabels.npz", x_train=np.zeros((4, 32, 32, 3), np.uint8), y_train=y.astype(float))
    with pytest.raises(ValueError, match="integer class labels"):
        load_cifar10_npz(tmp_path / "flabels.npz")
    x, y2 = load_cifar10_npz(_save(tmp_path / "ok.npz", y.reshape(-1, 1)))  # (N, 1) labels are fine
    assert x.dtype == np.uint8 and y2.tolist() == y.tolist() and y2.dtype == np.int64


def _save(path, y):
    np.savez(path, x_train=np.zeros((len(y), 32, 32, 3), np.uint8), y_train=y)
    return path


def test_folder_without_batches_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("spec", ["npz", "cifar:/x", "synthetic:many", ""])
def test_bad_source_specs(spec):
    with pytest.raises(ValueError, match="data source"):
        load_cifar_source(spec)


def test_synthetic_is_deterministic_and_class_dependent():
    x, y = synthetic_cifar(400, seed=3, size=16)
    assert x.shape == (400, 16, 16, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    x2, y2 = load_cifar_source("synthetic:400")
    assert x2.shape == (400, 32, 32, 3)
    assert np.array_equal(synthetic_cifar(400, seed=3, size=16)[0], x)
    # class mean colours differ far more than the within-class noise of the mean: learnable
    means = np.stack([x[y == c].reshape(-1, 3).mean(0) for c in range(10)])
    assert np.ptp(means, axis=0).max() > 50


def test_holdout_split_is_deterministic_and_disjoint():
    tr, va = holdout_split(100, 20, seed=1)
    assert len(tr) == 80 and len(va) == 20 and not set(tr) & set(va)
    assert np.array_equal(va, holdout_split(100, 20, seed=1)[1])
    assert not np.array_equal(va, holdout_split(100, 20, seed=2)[1])
    with pytest.raises(ValueError, match="val_size"):
        holdout_split(10, 10)


def test_array_dataset_with_transforms():
    x, y = synthetic_cifar(8, seed=0)
    ds = ArrayDataset(x, y, cifar_transforms(train=True, cutout=8))
    img, label = ds[3]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and label == int(y[3])
    ev = ArrayDataset(x, y, cifar_transforms(train=False))[0][0]
    # the evaluation transform has no randomness
    assert torch.equal(ev, ArrayDataset(x, y, cifar_transforms(train=False))[0][0])
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(x, y[:3])


def test_cutout_zeroes_a_square():
    img = torch.ones(3, 32, 32)
    out = Cutout(8, torch.Generator().manual_seed(0))(img)
    zeros = (out == 0).all(0).sum().item()
    assert 16 <= zeros <= 64 and img.min() == 1  # input untouched
