"""Register COCO-format datasets (annotations json + image folder) with validation.

Category ids may be sparse (COCO's 1..90); detectron2's ``load_coco_json`` maps them to contiguous ids in
sorted-id order, which is the order of ``thing_classes`` set here. Images without annotations are kept
(the training loader drops them when ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``; evaluation keeps them).

A box whose width or height is <= 0 is dropped from the loaded data with a warning that counts them and names
the file: detectron2 would turn ``[100, 50, -15, 40]`` into the box ``[85, 50, 100, 90]`` (its transforms
take the corners' min / max) and train on it; its own ``filter_empty_instances`` drops only what is still
empty after that.
"""

from __future__ import annotations

import functools
import itertools
import logging
import numbers
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.samplers import TrainingSampler
from PIL import Image

from nasnet_det.data.sample import COCO_DATASETS as SAMPLE_COCO_DATASETS
from nasnet_det.data.sample import coco_dataset_files
from nasnet_det.utils.errors import BadInputError, is_int
from nasnet_det.utils.jsonfile import read_json_file

logger = logging.getLogger(__name__)


def parse_dataset_spec(spec: str) -> tuple[str, str, str]:
    """``"name=path/annotations.json:path/images"`` -> (name, json, image_root)."""
    name, sep, files = spec.partition("=")
    json_file, sep2, image_root = files.rpartition(":")
    if not sep or not sep2 or not name.strip() or not json_file or not image_root:
        raise ValueError(f"dataset spec {spec!r}: expected NAME=ANNOTATIONS.json:IMAGE_DIR")
    return name.strip(), json_file, image_root


COCO_JSON = ("a COCO detection file: a JSON object with the lists 'images' (id, file_name, width, height), "
             "'annotations' (id, image_id, category_id, bbox) and 'categories' (id, name)")


def _is_box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)


_SINGULAR = {"images": "image", "annotations": "annotation", "categories": "category"}


def _record(kind: str, index: int, entry: Any) -> str:
    """``annotation 7`` (its id), or ``annotations[3]`` (its place in the file) for one without an id."""
    if isinstance(entry, dict) and "id" in entry:
        return f"{_SINGULAR[kind]} {entry['id']!r:.40}"
    return f"{kind}[{index}]"


def _check_records(json_file: Path, kind: str, entries: list, required: dict[str, tuple[Callable[[Any], bool], str]],
                   expected: str) -> None:
    """Every entry of ``data[kind]`` is an object whose ``required`` keys pass their checks and whose ids are
    unique; raises ``BadInputError`` naming the file, the record and what was expected."""
    first_of: dict[Any, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BadInputError(f"{json_file}: {kind}[{i}] is {type(entry).__name__} {entry!r:.60}; expected an "
                                f"object with {expected}")
        for key, (ok, what) in required.items():
            if key not in entry:
                raise BadInputError(f"{json_file}: {_record(kind, i, entry)} has no {key!r}; expected every entry of "
                                    f"{kind!r} to have {expected}")
            if not ok(entry[key]):
                raise BadInputError(f"{json_file}: {_record(kind, i, entry)} has {key} {entry[key]!r:.60}; expected "
                                    f"{what}")
        if entry["id"] in first_of:  # pycocotools keeps the last of them; detectron2 asserts on annotations
            raise BadInputError(f"{json_file}: {kind}[{i}] has id {entry['id']!r}, as {kind}[{first_of[entry['id']]}] "
                                f"does; expected the ids in {kind!r} to be unique")
        first_of[entry["id"]] = i


def validate_coco_json(json_file: str | Path, image_root: str | Path, check_images: bool = True) -> dict:
    """Load and check a COCO detection json (:func:`load_coco_file`) and its image folder; returns the json."""
    json_file, image_root = Path(json_file), Path(image_root)
    if not json_file.is_file():
        raise FileNotFoundError(f"COCO annotations {json_file} do not exist")
    if not image_root.is_dir():
        raise FileNotFoundError(f"image folder {image_root} (for {json_file}) does not exist")
    data = load_coco_file(json_file)
    if check_images:
        missing = [im["file_name"] for im in data["images"] if not (image_root / im["file_name"]).is_file()]
        if missing:
            raise FileNotFoundError(f"{json_file}: {len(missing)} of {len(data['images'])} image files are missing "
                                    f"under {image_root}, e.g. {', '.join(missing[:5])}")
        wide = wide_mode_images([image_root / im["file_name"] for im in data["images"]])
        if wide:
            path, mode = wide[0]
            raise BadInputError(f"{json_file}: {len(wide)} of {len(data['images'])} images are 16-bit or float "
                                f"(e.g. {path}, PIL mode {mode}); detectron2's training and evaluation reader clips "
                                "them to 255 (a white image); expected 8-bit images: convert them (16-bit values / "
                                "257)")
    return data


# JPEG files are 8-bit for PIL; other formats (PNG, TIFF) may hold 16-bit or float pixels
EIGHT_BIT_SUFFIXES = (".jpg", ".jpeg")


def wide_mode_images(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """(path, mode) of the images whose PIL mode is 16-bit or float (``I;16*``, ``I``, ``F``): detectron2's
    ``read_image`` converts those to RGB by clipping. Only the headers of non-JPEG files are read; a file PIL
    cannot open is left to the loader's unreadable-image handling."""
    wide = []
    for path in paths:
        if path.suffix.lower() in EIGHT_BIT_SUFFIXES:
            continue
        try:
            with Image.open(path) as image:
                mode = image.mode
        except Exception:  # noqa: BLE001 - unreadable: skipped and named by SkippingLoader
            continue
        if mode.startswith("I;16") or mode in ("I", "F"):
            wide.append((path, mode))
    return wide


def load_coco_file(json_file: str | Path) -> dict:
    """Load and check a COCO detection json; returns it. Anything that detectron2's ``load_coco_json`` or
    pycocotools would fail on (a traceback, an assertion) or read silently wrong (duplicate image ids: one image
    loaded for several registered) raises ``BadInputError`` with one line naming the file, the record and what
    was expected; a missing file is a ``FileNotFoundError``."""
    json_file = Path(json_file)
    if not json_file.is_file():
        raise FileNotFoundError(f"COCO annotations {json_file} do not exist")
    data = read_json_file(json_file, COCO_JSON)
    if not isinstance(data, dict):
        raise BadInputError(f"{json_file}: the top level is a JSON {type(data).__name__}; expected {COCO_JSON}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise BadInputError(f"{json_file}: missing the {key!r} list of a COCO detection file")
    if "annotations" in data and not isinstance(data["annotations"], list):
        raise BadInputError(f"{json_file}: 'annotations' is a {type(data['annotations']).__name__}; expected a list")
    if not data["images"]:
        raise BadInputError(f"{json_file}: the dataset is empty (no entries in 'images')")
    if not data["categories"]:
        raise BadInputError(f"{json_file}: no categories")
    integer = (is_int, "an integer")
    positive = (lambda v: is_int(v, 1), "a positive integer (pixels)")
    text = (lambda v: isinstance(v, str) and bool(v), "a non-empty string")
    _check_records(json_file, "images", data["images"], {"id": integer, "file_name": text, "width": positive,
                                                         "height": positive}, "id, file_name, width and height")
    _check_records(json_file, "categories", data["categories"], {"id": integer, "name": text}, "id and name")
    cat_ids = {c["id"] for c in data["categories"]}
    image_ids = {im["id"] for im in data["images"]}
    box = (_is_box, "[x, y, width, height] (4 numbers, pixels); this detector trains and scores boxes, so "
                    "every annotation needs one (an annotation with only a segmentation has none)")
    annotations = data.get("annotations", [])
    _check_records(json_file, "annotations", annotations, {"id": integer, "image_id": integer,
                                                           "category_id": integer, "bbox": box},
                   "id, image_id, category_id and bbox")
    for i, ann in enumerate(annotations):
        if ann["category_id"] not in cat_ids:
            raise BadInputError(f"{json_file}: {_record('annotations', i, ann)} has category_id {ann['category_id']}, "
                                "which is not in 'categories'")
        if ann["image_id"] not in image_ids:
            raise BadInputError(f"{json_file}: {_record('annotations', i, ann)} refers to unknown image_id "
                                f"{ann['image_id']}")
        if ann.get("ignore", 0) != 0:  # detectron2's load_coco_json asserts it away
            raise BadInputError(f"{json_file}: {_record('annotations', i, ann)} has ignore {ann['ignore']!r}; "
                                "expected 0 or no 'ignore' key (mark crowd regions with iscrowd 1)")
    return data


def is_degenerate_box(bbox: Any) -> bool:
    """A COCO ``[x, y, width, height]`` with a width or height <= 0 (or NaN): no box at all."""
    return isinstance(bbox, (list, tuple)) and len(bbox) == 4 and not (bbox[2] > 0 and bbox[3] > 0)


def load_coco_json_without_degenerate_boxes(json_file: str, image_root: str, name: str) -> list[dict]:
    """detectron2's ``load_coco_json``, less the instances whose box :func:`is_degenerate_box` (counted and
    named by :func:`register_coco_dataset`)."""
    dicts = load_coco_json(json_file, image_root, name)
    for d in dicts:
        d["annotations"] = [a for a in d.get("annotations", []) if not is_degenerate_box(a.get("bbox"))]
    return dicts


def register_coco_dataset(name: str, json_file: str | Path, image_root: str | Path,
                          check_images: bool = True) -> int:
    """Validate and register ``name`` for detectron2; returns the number of images. Re-registering the same
    files is a no-op; the same name for other files is an error. Boxes with a width or height <= 0 are
    dropped, with a warning that counts them."""
    data = validate_coco_json(json_file, image_root, check_images)
    annotations = data.get("annotations", [])
    degenerate = [a for a in annotations if is_degenerate_box(a.get("bbox"))]
    json_file, image_root = str(Path(json_file).resolve()), str(Path(image_root).resolve())
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if getattr(meta, "json_file", None) == json_file and getattr(meta, "image_root", None) == image_root:
            return len(data["images"])
        raise ValueError(f"dataset {name!r} is already registered with other files "
                         f"({getattr(meta, 'json_file', '?')})")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if degenerate:
        example = degenerate[0]
        logger.warning("%s: dropped %d of %d boxes whose width or height is <= 0 (e.g. annotation %s: bbox %s); "
                       "detectron2 would train on them as other boxes. Fix the file to use them (COCO evaluation "
                       "still scores against the file as it is)", json_file, len(degenerate), len(annotations),
                       example.get("id"), example.get("bbox"))
    # What register_coco_instances does, with the loader that drops the degenerate boxes.
    DatasetCatalog.register(name, functools.partial(load_coco_json_without_degenerate_boxes, json_file, image_root,
                                                    name))
    # json_file / image_root / evaluator_type as register_coco_instances sets them; thing_classes and the id map
    # are what load_coco_json sets later, available before the data is loaded (class-count checks).
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                  thing_classes=[c["name"] for c in cats],
                                  thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(cats)},
                                  num_annotations=len(annotations) - len(degenerate))
    logger.info("registered %s: %d images, %d annotations, %d categories from %s", name, len(data["images"]),
                len(annotations) - len(degenerate), len(cats), json_file)
    return len(data["images"])


# Datasets shipped inside the package: used by name in DATASETS.TRAIN/TEST, registered on first use.
# Training and evaluation on the same photos: the smoke runs check the chain, not generalisation.
BUILTIN_DATASETS = tuple(SAMPLE_COCO_DATASETS)


def register_builtin_datasets(names: list[str] | tuple[str, ...]) -> list[str]:
    """Register those of ``names`` that are built-in samples (``coco_sample_train``, ``coco_sample_val``:
    32 real COCO photos; ``coco_sample_person``: their person boxes; see ``nasnet_det/data/sample/README.md``)
    and not registered yet."""
    done = []
    for name in names:
        files = coco_dataset_files(name)
        if files and name not in DatasetCatalog.list():
            register_coco_dataset(name, *files)
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


# ---- unreadable images: skipped, named once, counted (as ImageNet training does) --------------------------
UNREADABLE = "unreadable_image"


def image_is_readable(path: str) -> bool:
    """Whether PIL can fully decode ``path`` (a truncated JPEG fails only when its pixels are read)."""
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - any decoder error means unreadable
        return False


class SkipUnreadableMapper:
    """Wraps a dataset mapper (``DatasetMapper(cfg, is_train)``): when it fails because the image file cannot
    be decoded, returns a marker ``{"unreadable_image": path, "error": ...}`` instead of raising. Other errors
    (a readable image, a bug) are raised as before. :class:`SkippingLoader` drops the markers."""

    def __init__(self, mapper: Callable[[dict], Any]):
        self.mapper = mapper

    def __call__(self, dataset_dict: dict) -> Any:
        try:
            return self.mapper(dataset_dict)
        except Exception as e:
            path = dataset_dict.get("file_name", "")
            if not path or image_is_readable(path):
                raise
            # width/height: the training loader's aspect-ratio grouping reads them before SkippingLoader drops it
            return {UNREADABLE: path, "error": f"{type(e).__name__}: {e}", "image_id": dataset_dict.get("image_id"),
                    "width": dataset_dict.get("width", 1), "height": dataset_dict.get("height", 1)}


class SkippingLoader:
    """Iterates a detectron2 data loader (batches = lists of dicts), dropping the markers of
    :class:`SkipUnreadableMapper`: each unreadable file is named once in the log and listed in
    :attr:`skipped`. A batch left empty is skipped (training then takes the next one)."""

    def __init__(self, loader: Iterable[list[dict]], role: str = "training"):
        self.loader = loader
        self.role = role
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # dataset, batch_size, ... of the wrapped loader
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[list[dict]]:
        for batch in self.loader:
            good = []
            for d in batch:
                if isinstance(d, dict) and UNREADABLE in d:
                    if d[UNREADABLE] not in self.skipped:
                        self.skipped.append(d[UNREADABLE])
                        logger.warning("%s: skipping unreadable image %s (%s)", self.role, d[UNREADABLE], d["error"])
                else:
                    good.append(d)
            if good:
                yield good


class ResumableTrainingSampler(TrainingSampler):
    """detectron2's ``TrainingSampler`` that can start ``start`` indices into its (seeded) infinite stream, so
    a resumed run continues the data order where the interrupted one stopped instead of replaying it. Exact
    when the batches are built from consecutive indices (images of one aspect-ratio group)."""

    def __init__(self, size: int, shuffle: bool = True, seed: int | None = None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(super().__iter__(), self.start, None)
