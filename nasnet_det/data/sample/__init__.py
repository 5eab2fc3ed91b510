"""The small real data sample shipped inside the package (see README.md here for where it came from).

* :func:`cifar10_npz`: 2000 CIFAR-10 training images (200 per class), ``x_train`` / ``y_train`` like the
  ``npz:PATH`` data sources; the configs name it ``npz:builtin``.
* :func:`coco_sample`: 32 COCO train2017 photos with their boxes (COCO json + image folder); detection
  configs name it as the dataset ``coco_sample`` (registered by ``nasnet_det.detection.data``).
* :func:`coco_sample_person`: its person boxes only, on the 13 photos that have any (one class): the set the
  smoke pipeline's detector fits and is scored on (``coco_sample_person``).

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


PERSON = "person"


def coco_sample_person() -> tuple[Path, Path]:
    """(annotations json, image folder) of the sample's person boxes: ``person_subset`` of :func:`coco_sample`'s
    json, shipped as ``coco_sample/person.json`` (56 boxes on 13 photos, one category)."""
    root = SAMPLE_DIR / "coco_sample"
    return root / "person.json", root / "images"


def person_subset(coco: dict) -> dict:
    """The COCO dict ``coco`` with only its ``person`` category, that category's boxes, and the images that have
    at least one of them (what ``coco_sample/person.json`` holds, from ``annotations.json``)."""
    cats = [c for c in coco["categories"] if c["name"] == PERSON]
    boxes = [a for a in coco["annotations"] if cats and a["category_id"] == cats[0]["id"]]
    photos = {a["image_id"] for a in boxes}
    images = [i for i in coco["images"] if i["id"] in photos]
    return {**coco, "categories": cats, "annotations": boxes, "images": images}


# The datasets shipped here, by the name detection configs use in DATASETS.TRAIN / TEST: (json, images) getters.
# coco_sample_train and coco_sample_val are the same 32 photos (the smoke runs check the chain, not
# generalisation); coco_sample_person is for training and scoring alike (a fit of those photos).
COCO_DATASETS = {"coco_sample_train": coco_sample, "coco_sample_val": coco_sample,
                 "coco_sample_person": coco_sample_person}


def coco_dataset_files(name: str) -> tuple[Path, Path] | None:
    """(annotations json, image folder) of the embedded COCO dataset ``name``; None for any other name."""
    getter = COCO_DATASETS.get(name)
    return getter() if getter else None
