"""Run a trained detector on images and write copies with the predicted boxes drawn."""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.engine import DefaultPredictor
from PIL import Image, ImageDraw
from tqdm import tqdm

import nasnet_det.detection.backbone  # noqa: F401  (registers the backbones)
import nasnet_det.detection.heads  # noqa: F401
from nasnet_det.detection.checkpoint import NASNetDetectionCheckpointer
from nasnet_det.detection.data import BUILTIN_DATASETS, image_is_readable, register_builtin_datasets, register_datasets
from nasnet_det.utils.images import read_rgb8
from nasnet_det.utils.io import atomic_write, disk_full_errors

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Image paths from files, folders and glob patterns."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(item))
            if not matches:
                raise FileNotFoundError(f"demo input {item!r}: no such file, folder or glob match")
            paths += matches
    if not paths:
        raise ValueError(f"no images found in {inputs}")
    return paths


def output_paths(paths: list[Path], output_dir: str | os.PathLike) -> list[Path]:
    """``output_dir / name`` for each input, refusing to overwrite an input or to write one name twice."""
    out_dir = Path(output_dir)
    targets = [out_dir / p.name for p in paths]
    by_name: dict[str, list[Path]] = {}
    for p in paths:
        by_name.setdefault(p.name, []).append(p)
    clashes = {n: ps for n, ps in by_name.items() if len(ps) > 1}
    if clashes:
        name, ps = next(iter(clashes.items()))
        raise ValueError(f"demo inputs share file names, so their drawings would overwrite each other in "
                         f"{out_dir}: {name!r} from {', '.join(map(str, ps))}"
                         + (f" (and {len(clashes) - 1} more names)" if len(clashes) > 1 else "")
                         + "; run the folders separately with different --output folders")
    inputs = {p.resolve() for p in paths}
    overwrites = [t for t in targets if t.resolve() in inputs]
    if overwrites:
        raise ValueError(f"--output {out_dir} would overwrite the input image {overwrites[0]}"
                         + (f" (and {len(overwrites) - 1} more)" if len(overwrites) > 1 else "")
                         + "; choose an output folder that holds none of the inputs")
    return targets


def draw_predictions(image_rgb: np.ndarray, instances, metadata=None) -> Image.Image:
    """Boxes with class names and scores. Uses detectron2's ``Visualizer`` when its OpenCV dependency is
    installed, otherwise a plain PIL drawing of the same boxes."""
    Visualizer = visualizer_class()
    if Visualizer is not None:
        vis = Visualizer(image_rgb, metadata=metadata).draw_instance_predictions(instances)
        return Image.fromarray(np.asarray(vis.get_image()))
    names = list(metadata.get("thing_classes", [])) if metadata is not None else []
    boxes = instances.pred_boxes.tensor.tolist() if instances.has("pred_boxes") else []
    return draw_labelled_boxes(image_rgb, [(box, f"{names[cls] if cls < len(names) else cls} {score:.0%}") for
                                           box, cls, score in zip(boxes, instances.pred_classes.tolist(),
                                                                  instances.scores.tolist())], (0, 255, 0))


def visualizer_class():
    """detectron2's ``Visualizer``, or None when its OpenCV dependency is not installed."""
    try:
        from detectron2.utils.visualizer import Visualizer  # imports cv2
    except ImportError:
        return None
    return Visualizer


def draw_labelled_boxes(image_rgb: np.ndarray, boxes: list[tuple[list[float], str]], colour: tuple[int, int, int],
                        ) -> Image.Image:
    """A plain PIL drawing of (box, label) pairs: what the pictures are without OpenCV."""
    image = Image.fromarray(np.ascontiguousarray(image_rgb))
    draw = ImageDraw.Draw(image)
    for box, label in boxes:
        draw.rectangle(box, outline=colour, width=2)
        draw.text((box[0] + 2, box[1] + 1), label, fill=colour)
    return image


def read_bgr8(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``DefaultPredictor`` takes it: HxWx3 uint8 BGR (it converts to INPUT.FORMAT itself), with
    16-bit and other modes scaled to 8 bits correctly (:func:`nasnet_det.utils.images.read_rgb8`)."""
    return convert_PIL_to_numpy(read_rgb8(path), "BGR")


def _check_weights(cfg: CfgNode) -> str:
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: give the trained detector checkpoint (e.g. output/model_final.pth)")
    if "://" not in cfg.MODEL.WEIGHTS and not Path(cfg.MODEL.WEIGHTS).is_file():
        raise FileNotFoundError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} does not exist")
    return cfg.MODEL.WEIGHTS


def build_predictor(cfg: CfgNode, score_threshold: float) -> DefaultPredictor:
    """detectron2's ``DefaultPredictor`` with the detector checkpoint ``cfg.MODEL.WEIGHTS`` loaded by the
    checkpointer that rejects another NASNet's weights, keeping boxes scored at least ``score_threshold``."""
    weights = _check_weights(cfg)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.NASNET.WEIGHTS = ""  # the detector checkpoint has all weights
    cfg.MODEL.WEIGHTS = ""  # loaded below
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    NASNetDetectionCheckpointer(predictor.model).load(weights)
    return predictor


def run_demo(cfg: CfgNode, inputs: list[str], output_dir: str | os.PathLike,
             confidence: float = 0.5, skipped: list[Path] | None = None) -> list[Path]:
    """Predict on every input image (``cfg.MODEL.WEIGHTS`` = trained detector) and write the drawn
    images to ``output_dir`` under their own names; returns the written paths. Unreadable images are
    skipped, named once in the log and appended to ``skipped``."""
    _check_weights(cfg)
    paths = expand_inputs(inputs)
    targets = output_paths(paths, output_dir)  # before the (slow) model build
    register_datasets(cfg.DATASETS.COCO_FILES)
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    register_builtin_datasets(names)
    metadata = MetadataCatalog.get(names[0]) if names else None
    predictor = build_predictor(cfg, confidence)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped = [] if skipped is None else skipped
    for path, target in tqdm(list(zip(paths, targets)), desc="demo"):
        try:
            image = read_bgr8(path)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a damaged file
            if image_is_readable(str(path)):
                raise
            logger.warning("skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
            skipped.append(path)
            continue
        instances = predictor(image)["instances"].to("cpu")
        with disk_full_errors(target):
            draw_predictions(image[:, :, ::-1], instances, metadata).save(target)
        logger.info("%s: %d detections -> %s", path, len(instances), target)
        written.append(target)
    if skipped and not written:
        raise ValueError(f"none of the {len(skipped)} demo inputs is a readable image, e.g. {skipped[0]}")
    return written


SAMPLE_DATASET = "coco_sample_val"  # the 32 COCO photos shipped in the package (nasnet_det/data/sample)
SAMPLE_IMAGES = 4
TOP_BOXES = 5
SAMPLE_LISTING = "detections.json"
TRUTH_SUFFIX = "_truth"  # <photo>_truth.png: the photo's ground-truth boxes, beside <photo>.png (the detector's)


def top_scoring(instances, k: int):
    """The ``k`` highest-scoring detections (all of them when there are fewer)."""
    order = instances.scores.argsort(descending=True)[:k]
    return instances[order]


def sample_dataset(cfg: CfgNode) -> str:
    """The embedded COCO dataset to draw on: the first built-in sample the detector was evaluated or trained on
    (``DATASETS.TEST``, then ``TRAIN``: its photos and classes), else the 80-class ``coco_sample_val``."""
    names = [*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]
    return next((n for n in names if n in BUILTIN_DATASETS), SAMPLE_DATASET)


def draw_ground_truth(image_rgb: np.ndarray, record: dict, metadata) -> Image.Image:
    """The boxes of a dataset record (detectron2's dataset dict), labelled with their class names: detectron2's
    ``Visualizer.draw_dataset_dict`` when OpenCV is installed, otherwise a plain PIL drawing."""
    Visualizer = visualizer_class()
    if Visualizer is not None:
        vis = Visualizer(image_rgb, metadata=metadata).draw_dataset_dict(record)
        return Image.fromarray(np.asarray(vis.get_image()))
    names = list(metadata.get("thing_classes", []))
    return draw_labelled_boxes(image_rgb, [(xyxy(ann), names[ann["category_id"]])
                                           for ann in record.get("annotations", [])], (255, 160, 0))


def xyxy(annotation: dict) -> list[float]:
    """[x0, y0, x1, y1] of a dataset record's annotation, whatever its ``bbox_mode``."""
    from detectron2.structures import BoxMode

    return [float(v) for v in BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS)]


def largest_box_first(record: dict) -> tuple[float, str]:
    """Sort key of dataset records: the one with the largest ground-truth box (by area) first, then by file name."""
    areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in map(xyxy, record.get("annotations", []))]
    return -max(areas, default=0.0), record["file_name"]


def draw_sample_detections(cfg: CfgNode, output_dir: str | os.PathLike, num_images: int = SAMPLE_IMAGES,
                           top_k: int = TOP_BOXES) -> list[tuple[Path, list[tuple[str, float, list[float]]]]]:
    """The ``top_k`` highest-scoring boxes of the detector ``cfg.MODEL.WEIGHTS``, labelled with class name and
    score by detectron2's ``Visualizer``, on ``num_images`` photos of the embedded COCO dataset
    :func:`sample_dataset`, those with the largest ground-truth boxes: a picture a person can check at a
    glance. No score threshold, so that a briefly trained detector shows its best guesses too. Writes
    ``output_dir/<photo>.png``, the photo's ground-truth boxes as ``output_dir/<photo>_truth.png`` to compare with,
    and ``detections.json`` (both sets of boxes); returns, per image, (path, [(class, score, box)])."""
    from detectron2.data import DatasetCatalog

    dataset = sample_dataset(cfg)
    register_builtin_datasets([dataset])
    metadata = MetadataCatalog.get(dataset)
    classes = list(metadata.thing_classes)
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES != len(classes):
        raise ValueError(f"the sample photos of {dataset} are labelled with {len(classes)} classes, the detector "
                         f"has MODEL.ROI_HEADS.NUM_CLASSES {cfg.MODEL.ROI_HEADS.NUM_CLASSES}")
    photos = sorted((d for d in DatasetCatalog.get(dataset) if d.get("annotations")), key=largest_box_first)
    photos = photos[:num_images]
    predictor = build_predictor(cfg, 0.0)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn, listing = [], []
    for photo in tqdm(photos, desc="sample detections"):
        image = read_bgr8(photo["file_name"])
        instances = top_scoring(predictor(image)["instances"].to("cpu"), top_k)
        target = out / (Path(photo["file_name"]).stem + ".png")
        truth = out / (Path(photo["file_name"]).stem + TRUTH_SUFFIX + ".png")
        with disk_full_errors(target):
            draw_predictions(image[:, :, ::-1], instances, metadata).save(target)
            draw_ground_truth(image[:, :, ::-1], photo, metadata).save(truth)
        boxes = [(classes[c], float(s), [float(v) for v in b]) for c, s, b in
                 zip(instances.pred_classes.tolist(), instances.scores.tolist(), instances.pred_boxes.tensor.tolist())]
        drawn.append((target, boxes))
        # what was drawn, for a report to list beside the pictures
        listing.append({"image": target.name, "dataset": dataset,
                        "detections": [{"class": c, "score": sc, "box": b} for c, sc, b in boxes],
                        "truth_image": truth.name,
                        "truth": [{"class": classes[a["category_id"]], "box": xyxy(a)} for a in photo["annotations"]]})
    atomic_write(out / SAMPLE_LISTING, json.dumps(listing, indent=1) + "\n")
    return drawn
