"""The small real data sample shipped inside the package (see README.md here for where it came from).

* :func:`cifar10_npz`: 2000 CIFAR-10 training images (200 per class), ``x_train`` / ``y_train`` like the
  ``npz:PATH`` data sources; the configs name it ``npz:builtin``.
* :func:`coco_sample`: 32 COCO train2017 photos with their boxes (COCO json + image folder); detection
  configs name it as the dataset ``coco_sample`` (registered by ``nasnet_det.detection.data``).

The smoke configs, ``make run`` and the tests use these, so nothing outside the repository is needed.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent
BUILTIN = "builtin"  # the word a data source uses for the embedded sample: "npz:builtin"


def cifar10_npz() -> Path:
    """Path of the embedded CIFAR-10 sample (``x_train`` (2000, 32, 32, 3) uint8, ``y_train`` (2000,))."""
    return SAMPLE_DIR / "cifar10_sample.npz"


def coco_sample() -> tuple[Path, Path]:
    """(annotations json, image folder) of the embedded 32-photo COCO sample (80 COCO categories)."""
    root = SAMPLE_DIR / "coco_sample"
    return root / "annotations.json", root / "images"
