"""CIFAR-10 as numpy arrays, plus the standard augmentation.

Stable API (used by the architecture search and by CIFAR training):

* images are ``uint8`` arrays of shape ``(N, H, W, 3)`` (NHWC, RGB, 0..255), labels ``int64`` of shape ``(N,)``;
* :func:`load_cifar10` reads the torchvision folder (``ROOT/cifar-10-batches-py``),
  :func:`load_cifar10_npz` an ``.npz`` with ``x_train``/``y_train``, :func:`synthetic_cifar` makes a learnable
  stand-in, and :func:`load_cifar_source` dispatches on ``"folder:ROOT"``, ``"npz:PATH"`` or ``"synthetic:N"``;
* :func:`holdout_split` is the deterministic train / held-out validation split;
* :class:`ArrayDataset` + :func:`cifar_transforms` give a ``torch.utils.data.Dataset`` with the paper's
  augmentation (pad 4 + random crop, horizontal flip, optional cutout, normalisation).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_BATCH_DIR = "cifar-10-batches-py"


def load_cifar10(root: str | Path, train: bool = True, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The CIFAR-10 train (50k) or test (10k) split from torchvision's folder layout under ``root``."""
    import torchvision

    root = Path(root)
    if not download and not (root / _BATCH_DIR).is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 not found: expected the folder {root / _BATCH_DIR} (torchvision's python batches "
            "data_batch_1..5 and test_batch); pass download=True or point ROOT at the folder containing it")
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(f"CIFAR-10 under {root} is missing or corrupted ({e})") from None
    return np.ascontiguousarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)


def load_cifar10_npz(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from an ``.npz`` with keys ``x_train`` (N,H,W,3 uint8) and ``y_train`` (N,) integer
    labels in ``0..num_classes-1``. Anything else is a ``ValueError`` naming the file (a float array would
    otherwise be silently cast to near-black uint8 images)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR npz file {path} does not exist")
    with np.load(path) as data:
        missing = [k for k in ("x_train", "y_train") if k not in data.files]
        if missing:
            raise KeyError(f"{path}: missing key(s) {missing}; expected 'x_train' (N,H,W,3 uint8) and "
                           f"'y_train' (N,), found {data.files}")
        x, y = data["x_train"], data["y_train"]
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if x.ndim != 4 or x.shape[-1] != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{path}: x_train must be (N,H,W,3) with one label per image; got x {x.shape}, "
                         f"y {y.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: x_train must be uint8 pixels 0..255, got dtype {x.dtype} (if they are "
                         "floats in [0, 1], store (x * 255).round().astype(np.uint8))")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: y_train must hold integer class labels, got dtype {y.dtype}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{path}: y_train labels must be in 0..{num_classes - 1}, got "
                         f"{int(y.min())}..{int(y.max())}")
    return np.ascontiguousarray(x), y.astype(np.int64)


def synthetic_cifar(n: int, num_classes: int = 10, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy images whose class is learnable: each class has its own mean colour and stripe
    orientation/frequency, with per-image noise and random offsets (for tests and smoke runs)."""
    if n <= 0 or num_classes <= 0:
        raise ValueError(f"synthetic_cifar needs n > 0 and num_classes > 0, got n={n}, num_classes={num_classes}")
    rng = np.random.default_rng(seed)
    class_rng = np.random.default_rng(12345)  # class appearance does not depend on the sample seed
    colours = class_rng.uniform(60, 200, size=(num_classes, 3))
    angles = np.linspace(0, np.pi, num_classes, endpoint=False)
    freqs = 2 * np.pi * (2 + np.arange(num_classes) % 3) / size
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=n)
    proj = (np.cos(angles[y])[:, None, None] * xx + np.sin(angles[y])[:, None, None] * yy)
    stripes = np.sin(freqs[y][:, None, None] * proj + phase[:, None, None])
    img = colours[y][:, None, None, :] + 40.0 * stripes[..., None] + rng.normal(0, 25, size=(n, size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8), y


def holdout_split(n: int, val_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic shuffled split of ``range(n)`` into (train indices, ``val_size`` held-out indices)."""
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in 1..{n - 1} for {n} images, got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def load_cifar_source(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """Training images from ``"npz:PATH"`` (``"npz:builtin"``: the embedded 2000-image sample),
    ``"folder:ROOT"`` (torchvision layout, train split) or
    ``"synthetic:N"`` (N generated images, see :func:`synthetic_cifar`)."""
    kind, sep, arg = str(spec).partition(":")
    if not sep or not arg:
        raise ValueError(f"data source {spec!r}: expected 'npz:PATH', 'folder:ROOT' or 'synthetic:N'")
    if kind == "npz":
        if arg == "builtin":  # the sample shipped inside the package (nasnet_det/data/sample)
            from nasnet_det.data.sample import cifar10_npz

            return load_cifar10_npz(cifar10_npz())
        return load_cifar10_npz(arg)
    if kind == "folder":
        return load_cifar10(arg, train=True)
    if kind == "synthetic":
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"data source {spec!r}: N in 'synthetic:N' must be an integer") from None
        return synthetic_cifar(n)
    raise ValueError(f"data source {spec!r}: unknown kind {kind!r}; expected npz, folder or synthetic")


class Cutout:
    """Zero a random ``size`` x ``size`` square (DeVries & Taylor 2017) of a CHW tensor."""

    def __init__(self, size: int, generator: torch.Generator | None = None):
        self.size = int(size)
        self.generator = generator

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return img
        h, w = img.shape[-2:]
        cy, cx = (int(v) for v in torch.randint(0, max(h, w), (2,), generator=self.generator))
        cy, cx = cy % h, cx % w
        y0, y1 = max(0, cy - self.size // 2), min(h, cy + self.size // 2 + self.size % 2)
        x0, x1 = max(0, cx - self.size // 2), min(w, cx + self.size // 2 + self.size % 2)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0
        return img


def cifar_transforms(train: bool, cutout: int = 0) -> Callable[[Any], torch.Tensor]:
    """Transform for one HWC uint8 image (numpy or PIL): for training pad-4 random crop + horizontal flip,
    then tensor + CIFAR normalisation (+ cutout when ``cutout > 0``); for evaluation only the latter two."""
    from torchvision import transforms as T

    steps: list[Any] = [T.ToPILImage()]
    if train:
        steps += [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    if train and cutout > 0:
        steps.append(Cutout(cutout))
    return T.Compose(steps)


class ArrayDataset(Dataset):
    """A dataset over in-memory ``(x, y)`` arrays; ``transform`` maps one HWC image to a tensor."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: Callable[[Any], torch.Tensor] | None = None):
        if len(x) != len(y):
            raise ValueError(f"ArrayDataset: {len(x)} images but {len(y)} labels")
        self.x, self.y, self.transform = x, np.asarray(y, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.x[i]
        if self.transform is not None:
            img = self.transform(img)
        else:
            img = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)
        return img, int(self.y[i])
