"""What data a stage will read, found or missing, for ``nasnet-det plan``: ImageNet as class folders, CIFAR-10 in
torchvision's layout, COCO under ``DETECTRON2_DATASETS``. Each inspection returns a :class:`DataFound`: one line
for the plan's table, the training images it counted (0: not known), and the problems (each a FAIL line of the
plan) and remarks (WARN lines), naming the key and the path.

Paths are read as the stage's tool will read them: relative ones from the working directory the pipeline runs in.

Counting every image (ILSVRC-2012: 1.28M files in 1,000 folders, COCO train2017: 118k) is what ``nasnet-det plan``
does (``count=True``); the plan a pipeline prints when it starts (``count=False``) only lists the class folders
and looks for one image in each, so a start stays quick on any file system.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from nasnet_det.data.sample import coco_dataset_files
from nasnet_det.engine.scaling import DATASET_IMAGES

# The detectron2 builtin COCO 2017 datasets (detectron2/data/datasets/builtin.py, _PREDEFINED_SPLITS_COCO):
# name -> (image folder, annotation file), both under DETECTRON2_DATASETS (default "datasets").
COCO_2017 = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
    "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}
# Images of the evaluation sets a plan turns into time (val2017: COCO's 5,000 images).
COCO_EVAL_IMAGES = {"coco_2017_val": 5000, "coco_2017_val_100": 100}
CIFAR10_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
CIFAR10_TRAIN_IMAGES = DATASET_IMAGES["cifar10"]


@dataclass
class DataFound:
    summary: str
    images: int = 0  # training images found (0: not known)
    problems: list[str] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)


def shown(path: str | Path) -> str:
    """A path as given, with where it points when it is relative (the working directory decides)."""
    p = Path(path).expanduser()
    return str(path) if p.is_absolute() else f"{path} (= {p.resolve()})"


def _image_extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS  # what ImageFolder reads

    return tuple(IMG_EXTENSIONS)


def _count_images(folder: str, extensions: tuple[str, ...]) -> int:
    """Images ImageFolder would find in one class folder (it walks it recursively, following links)."""
    return sum(1 for _, _, files in os.walk(folder, followlinks=True) for f in files
               if f.lower().endswith(extensions))


def _has_image(folder: str, extensions: tuple[str, ...]) -> bool:
    """Whether ImageFolder would find an image in one class folder (recursively, following links), reading its
    entries only up to the first image: a folder of 1,300 images costs one directory read, not 1,300 names."""
    subfolders = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                subfolders.append(entry.path)
            elif entry.name.lower().endswith(extensions):
                return True
    return any(_has_image(sub, extensions) for sub in subfolders)


def _class_folders(root: Path) -> list[str]:
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def imagenet_folders(train_dir: str, val_dir: str, key: str = "DATA", count: bool = True) -> DataFound:
    """ImageNet as ImageFolder trees: ``train_dir`` and ``val_dir`` each one folder per class, the same classes.
    ILSVRC-2012's validation images come in one flat folder: they must be sorted into class folders first.
    ``count`` False: the class folders are listed and each checked for an image, not counted (the plan then uses
    ILSVRC-2012's published size)."""
    exts = _image_extensions()
    problems: list[str] = []
    counts: dict[str, tuple[list[str], int]] = {}
    for name, folder in ((f"{key}.TRAIN_DIR", train_dir), (f"{key}.VAL_DIR", val_dir)):
        root = Path(folder).expanduser()
        if not folder:
            problems.append(f"{name} is empty; expected an ImageNet folder of one sub-folder per class")
            continue
        if not root.is_dir():
            split = "val" if name.endswith("VAL_DIR") else "train"
            problems.append(f"{name} {shown(folder)} does not exist; expected ImageNet's {split} images as one "
                            f"sub-folder per class ({split}/n01440764/*.JPEG, ...)")
            continue
        classes = _class_folders(root)
        if not classes:
            flat = _count_images(str(root), exts) if count else int(_has_image(str(root), exts))
            what = (f"a flat folder of {flat:,} images" if count else "a flat folder of images") if flat else \
                "a folder without class sub-folders or images"
            problems.append(f"{name} {shown(folder)} is {what}, not one folder per class: sort the validation images "
                            "into their classes' folders (the usual valprep.sh step, by the devkit's labels)"
                            if name.endswith("VAL_DIR") else f"{name} {shown(folder)} is {what}, not one folder "
                            "per class")
            continue
        per_class = {c: _count_images(str(root / c), exts) if count else int(_has_image(str(root / c), exts))
                     for c in classes}
        empty = [c for c, n in per_class.items() if n == 0]
        if empty:
            problems.append(f"{name} {shown(folder)}: {len(empty)} class folder(s) without images (e.g. {empty[0]}); "
                            "ImageFolder refuses an empty class")
        counts[name] = (classes, sum(per_class.values()) if count else 0)
    train, val = counts.get(f"{key}.TRAIN_DIR"), counts.get(f"{key}.VAL_DIR")
    if train and val and train[0] != val[0]:
        only = sorted(set(train[0]) ^ set(val[0]))
        problems.append(f"{key}.VAL_DIR has {len(val[0])} class folders and {key}.TRAIN_DIR {len(train[0])}; the "
                        f"names must be the same (e.g. {only[0] if only else 'the order'} differs)")
    found = "{1:,} images in {0:,} classes" if count else "{0:,} class folders, each with images (not counted)"
    parts = [f"{what} {shown(folder)}: " + (found.format(len(counts[k][0]), counts[k][1])
                                            if k in counts else "not set" if not folder
                                            else "MISSING" if not Path(folder).expanduser().is_dir()
                                            else "not class folders")
             for what, folder, k in (("train", train_dir, f"{key}.TRAIN_DIR"), ("val", val_dir, f"{key}.VAL_DIR"))]
    if not train or not count:  # the recipe's epochs, until the folder is there to count
        parts.append(f"planned with ILSVRC-2012's {DATASET_IMAGES['imagenet']:,} training images")
    return DataFound("; ".join(parts), train[1] if train and count else DATASET_IMAGES["imagenet"], problems)


def cifar10_source(source: str, key: str, val_size: int = 0, limit: int = 0,
                   held_out_of_folder: bool = False) -> DataFound:
    """A CIFAR-10 ``DATA.SOURCE``: ``folder:ROOT`` (torchvision's ``ROOT/cifar-10-batches-py``: 50,000 training
    images), ``npz:PATH`` / ``npz:builtin``, ``synthetic:N``. ``val_size`` images are held out of an npz or
    synthetic source (``held_out_of_folder``: of the folder's too, as the search does); ``limit`` caps the rest."""
    kind, _, arg = str(source).partition(":")
    problems: list[str] = []
    images = 0
    if kind == "folder":
        batches = Path(arg).expanduser() / "cifar-10-batches-py"
        missing = [b for b in CIFAR10_BATCHES if not (batches / b).is_file()]
        if missing:
            problems.append(f"{key} {source}: {shown(batches)} lacks {', '.join(missing)}; expected CIFAR-10 in "
                            "torchvision's layout (the python batches data_batch_1..5 and test_batch)")
            summary = f"{shown(batches)}: MISSING (planned with CIFAR-10's 50,000 training images)"
        else:
            summary = f"{shown(batches)}: found (50,000 train + 10,000 test images)"
        images = CIFAR10_TRAIN_IMAGES
    elif kind == "npz":
        if arg == "builtin":
            images, summary = 2000, "the embedded 2,000-image CIFAR-10 sample (npz:builtin)"
        elif Path(arg).expanduser().is_file():
            images, summary = _npz_images(arg), f"{shown(arg)}: found"
        else:
            problems.append(f"{key} {source}: {shown(arg)} does not exist (expected an .npz with x_train, y_train)")
            summary = f"{shown(arg)}: MISSING"
    elif kind == "synthetic":
        images, summary = int(arg) if arg.isdigit() else 0, f"{source} (generated)"
    else:
        problems.append(f"{key} {source!r}: expected folder:ROOT, npz:PATH or synthetic:N")
        summary = f"{source}: unknown kind"
    if images and val_size and (kind != "folder" or held_out_of_folder):
        images = max(0, images - val_size)
    return DataFound(summary, min(images, limit) if limit > 0 and images else images, problems)


def _npz_images(path: str) -> int:
    import numpy as np

    try:
        with np.load(Path(path).expanduser(), allow_pickle=False) as data:
            return int(data["y_train"].shape[0]) if "y_train" in data.files else 0
    except (OSError, ValueError, KeyError):
        return 0


def coco_datasets(names: list[str], key: str, coco_files: list[str], for_training: bool, count: bool = True
                  ) -> DataFound:
    """The COCO-format datasets ``names`` (``DATASETS.TRAIN`` or ``TEST``): the builtin ``coco_2017_*`` under
    ``DETECTRON2_DATASETS`` (default ``datasets``, read when the tool starts), ``DATASETS.COCO_FILES`` entries
    (``name=annotations.json:images``), the embedded ``coco_sample_*``. ``images``: the images of all of them
    (detectron2 concatenates the sets), where each is known without reading a large file (a builtin set's
    published size, found or not: the recipe's epochs are planned before the data is there); else 0. ``count``
    False: an image folder is found, its files not counted."""
    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    given = {}
    for spec in coco_files:
        name, _, files = str(spec).partition("=")
        json_file, _, image_root = files.partition(":")
        given[name] = (image_root, json_file)
    parts, problems, remarks, sizes = [], [], [], []
    for name in names:
        sample = coco_dataset_files(name)
        if sample:
            n = len(json.loads(Path(sample[0]).read_text())["images"])
            parts.append(f"{name}: the embedded sample ({n} photos)")
            sizes.append(n)
            continue
        if name in given or name in COCO_2017:
            image_root, json_file = (given[name] if name in given else
                                     (os.path.join(root, COCO_2017[name][0]), os.path.join(root, COCO_2017[name][1])))
            where = "DATASETS.COCO_FILES" if name in given else f"DETECTRON2_DATASETS={root}"
            sizes.append(DATASET_IMAGES.get(name, 0) if for_training else COCO_EVAL_IMAGES.get(name, 0))
            missing = [shown(p) for p in (image_root, json_file) if not Path(p).expanduser().exists()]
            if missing:
                problems.append(f"{key} {name}: {' and '.join(missing)} missing ({where}; COCO as "
                                "coco/{train2017,val2017} + coco/annotations/instances_{train,val}2017.json)")
                parts.append(f"{name}: MISSING ({where})")
                continue
            if count:
                with os.scandir(Path(image_root).expanduser()) as entries:
                    files = f"{sum(1 for e in entries if e.is_file()):,} files"
            else:
                files = "found, not counted"
            parts.append(f"{name}: {shown(image_root)} ({files}) + {Path(json_file).name}")
            continue
        remarks.append(f"{key} {name}: not a dataset the plan can check (a detectron2 builtin other than "
                       "coco_2017_*, or registered elsewhere)")
        parts.append(f"{name}: not checked")
        sizes.append(0)
    images = sum(sizes) if sizes and all(sizes) else 0
    return DataFound("; ".join(parts) or "none", images, problems, remarks)
