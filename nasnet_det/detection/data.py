"""Register COCO-format datasets (annotations json + image folder) with validation.

Category ids may be sparse (COCO's 1..90); detectron2's ``load_coco_json`` maps them to contiguous ids in
sorted-id order, which is the order of ``thing_classes`` set here. Images without annotations are kept
(the training loader drops them when ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``; evaluation keeps them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

logger = logging.getLogger(__name__)


def parse_dataset_spec(spec: str) -> tuple[str, str, str]:
    """``"name=path/annotations.json:path/images"`` -> (name, json, image_root)."""
    name, sep, files = spec.partition("=")
    json_file, sep2, image_root = files.rpartition(":")
    if not sep or not sep2 or not name.strip() or not json_file or not image_root:
        raise ValueError(f"dataset spec {spec!r}: expected NAME=ANNOTATIONS.json:IMAGE_DIR")
    return name.strip(), json_file, image_root


def validate_coco_json(json_file: str | Path, image_root: str | Path, check_images: bool = True) -> dict:
    """Load and check a COCO detection json; returns it. Raises with the file and the problem named."""
    json_file, image_root = Path(json_file), Path(image_root)
    if not json_file.is_file():
        raise FileNotFoundError(f"COCO annotations {json_file} do not exist")
    if not image_root.is_dir():
        raise FileNotFoundError(f"image folder {image_root} (for {json_file}) does not exist")
    try:
        data = json.loads(json_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_file}: not valid JSON ({e})") from e
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{json_file}: missing the {key!r} list of a COCO detection file")
    if not data["images"]:
        raise ValueError(f"{json_file}: the dataset is empty (no entries in 'images')")
    if not data["categories"]:
        raise ValueError(f"{json_file}: no categories")
    cat_ids = {c["id"] for c in data["categories"]}
    image_ids = {im["id"] for im in data["images"]}
    for ann in data.get("annotations", []):
        if ann.get("category_id") not in cat_ids:
            raise ValueError(f"{json_file}: annotation {ann.get('id')} has category_id {ann.get('category_id')}, "
                             f"which is not in 'categories'")
        if ann.get("image_id") not in image_ids:
            raise ValueError(f"{json_file}: annotation {ann.get('id')} refers to unknown image_id "
                             f"{ann.get('image_id')}")
    if check_images:
        missing = [im["file_name"] for im in data["images"] if not (image_root / im["file_name"]).is_file()]
        if missing:
            raise FileNotFoundError(f"{json_file}: {len(missing)} of {len(data['images'])} image files are missing "
                                    f"under {image_root}, e.g. {', '.join(missing[:5])}")
    return data


def register_coco_dataset(name: str, json_file: str | Path, image_root: str | Path,
                          check_images: bool = True) -> int:
    """Validate and register ``name`` for detectron2; returns the number of images. Re-registering the same
    files is a no-op; the same name for other files is an error."""
    data = validate_coco_json(json_file, image_root, check_images)
    json_file, image_root = str(Path(json_file).resolve()), str(Path(image_root).resolve())
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if getattr(meta, "json_file", None) == json_file and getattr(meta, "image_root", None) == image_root:
            return len(data["images"])
        raise ValueError(f"dataset {name!r} is already registered with other files "
                         f"({getattr(meta, 'json_file', '?')})")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    register_coco_instances(name, {}, json_file, image_root)
    # The same values load_coco_json sets later, available before the data is loaded (class-count checks).
    MetadataCatalog.get(name).set(thing_classes=[c["name"] for c in cats],
                                  thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(cats)},
                                  num_annotations=len(data.get("annotations", [])))
    logger.info("registered %s: %d images, %d annotations, %d categories from %s", name, len(data["images"]),
                len(data.get("annotations", [])), len(cats), json_file)
    return len(data["images"])


# Datasets shipped inside the package: used by name in DATASETS.TRAIN/TEST, registered on first use.
# Training and evaluation on the same 32 photos: the smoke runs check the chain, not generalisation.
BUILTIN_DATASETS = ("coco_sample_train", "coco_sample_val")


def register_builtin_datasets(names: list[str] | tuple[str, ...]) -> list[str]:
    """Register those of ``names`` that are built-in samples (``coco_sample_train``, ``coco_sample_val``:
    32 real COCO photos, see ``nasnet_det/data/sample/README.md``) and not registered yet."""
    from nasnet_det.data.sample import coco_sample

    done = []
    for name in names:
        if name in BUILTIN_DATASETS and name not in DatasetCatalog.list():
            register_coco_dataset(name, *coco_sample())
            done.append(name)
    return done


def register_datasets(specs: list[str] | tuple[str, ...]) -> list[str]:
    """Register every ``NAME=JSON:IMAGE_DIR`` spec; returns the names."""
    names = []
    for spec in specs:
        name, json_file, image_root = parse_dataset_spec(spec)
        register_coco_dataset(name, json_file, image_root)
        names.append(name)
    return names


def check_dataset_classes(cfg) -> None:
    """Every dataset in DATASETS.TRAIN/TEST is registered, has MODEL.ROI_HEADS.NUM_CLASSES categories, and
    they all have the same ``thing_classes`` (class i must mean the same thing in training and evaluation)."""
    reference: tuple[str, list[str]] | None = None  # (first dataset, its classes)
    for key in ("TRAIN", "TEST"):
        for name in getattr(cfg.DATASETS, key):
            if name not in DatasetCatalog.list():
                raise KeyError(f"DATASETS.{key}: dataset {name!r} is not registered; add "
                               f"'{name}=ANNOTATIONS.json:IMAGE_DIR' to DATASETS.COCO_FILES (or --dataset)")
            meta = MetadataCatalog.get(name)
            if key == "TRAIN" and meta.get("num_annotations", 1) == 0:
                raise ValueError(f"DATASETS.TRAIN: dataset {name!r} ({meta.get('json_file')}) has no annotations "
                                 "to train on")
            classes = meta.get("thing_classes")
            if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
                raise ValueError(f"DATASETS.{key}: dataset {name!r} has {len(classes)} categories but "
                                 f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}; set them equal")
            if classes is None:
                continue
            if reference is None:
                reference = (name, list(classes))
            elif list(classes) != reference[1]:
                ref_name, ref_classes = reference
                diff = next(i for i, (a, b) in enumerate(zip(classes, ref_classes)) if a != b)
                raise ValueError(f"DATASETS.{key}: dataset {name!r} has other categories than {ref_name!r}: class "
                                 f"{diff} is {classes[diff]!r} there but {ref_classes[diff]!r} in {ref_name!r} "
                                 "(thing_classes, in category-id order, must be identical across DATASETS.TRAIN "
                                 "and DATASETS.TEST)")
