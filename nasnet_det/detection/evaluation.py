"""COCO box evaluation: the 12 standard COCOeval numbers plus per-category AP.

Both entry points (:func:`evaluate_coco` and :class:`NASNetCOCOEvaluator`) return the same shape, also when
the model detects nothing: all 12 numbers and ``AP-<category>``, 0 where there is ground truth, NaN where
there is none (COCOeval's -1), as COCOeval itself reports them for an empty result set.

Backends, fastest first (``auto`` takes the first one installed): ``hotcoco`` (Rust, ~10x faster than
faster-coco-eval here), ``faster_coco_eval`` (C++), ``pycocotools`` (the official code). hotcoco gives
pycocotools' numbers bit for bit; faster-coco-eval its 12 numbers, and per-category AP up to float rounding
(~1e-14, its precision table sums in another order) (tests/test_detection_eval.py; bench/bench_eval.py times
them all).
detectron2's own fast path (``fast_eval_api.COCOeval_opt``) needs its C++ extension, which this install lacks,
and its ``COCOEvaluator`` offers no way to plug another COCOeval in: :class:`NASNetCOCOEvaluator` is a
``DatasetEvaluator`` of its own, built on detectron2's public helpers.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from nasnet_det.detection.data import load_coco_file
from nasnet_det.utils.io import atomic_torch_save, atomic_write

logger = logging.getLogger(__name__)

# COCOeval.stats order (bbox / segm).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("auto", "hotcoco", "faster_coco_eval", "pycocotools")


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def faster_coco_eval_available() -> bool:
    return _installed("faster_coco_eval")


def hotcoco_cocoeval(coco_gt: COCO, coco_dt: COCO, iou_type: str = "bbox"):
    """hotcoco's COCOeval (Rust) on pycocotools ``COCO`` objects, whose datasets it reads as dicts. It has
    pycocotools' interface (``params``, ``evaluate/accumulate/summarize``, ``stats``, ``eval['precision']``)."""
    import hotcoco

    return hotcoco.COCOeval(hotcoco.COCO(coco_gt.dataset), hotcoco.COCO(coco_dt.dataset), iou_type)


def resolve_backend(backend: str = "auto") -> str:
    """The backend ``backend`` names; 'auto' = the fastest installed (hotcoco, faster_coco_eval, pycocotools)."""
    if backend not in BACKENDS:
        raise ValueError(f"COCO eval backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        if not _installed(backend):  # one clear error instead of an ImportError deep in an evaluation
            raise ValueError(f"COCO eval backend {backend!r} is not installed (pip install "
                             f"{backend.replace('_', '-')}), or use backend 'auto'")
        return backend
    return next(b for b in ("hotcoco", "faster_coco_eval", "pycocotools") if _installed(b))


def cocoeval_class(backend: str = "auto"):
    """The COCOeval class (or factory with its signature) for ``backend``."""
    backend = resolve_backend(backend)
    if backend == "pycocotools":
        return COCOeval
    if backend == "hotcoco":
        return hotcoco_cocoeval
    from faster_coco_eval import COCOeval_faster

    class FasterCOCOeval(COCOeval_faster):
        """COCOeval_faster with the pycocotools constructor signature (and its printed summary)."""

        def __init__(self, coco_gt=None, coco_dt=None, iou_type: str = "bbox"):
            super().__init__(coco_gt, coco_dt, iou_type, print_function=print)

    return FasterCOCOeval


def per_category_ap(coco_eval, class_names: list[str]) -> dict[str, float]:
    """AP@[.5:.95] (x100) per category from an accumulated COCOeval, as detectron2 computes it."""
    precisions = coco_eval.eval["precision"]  # (iou, recall, class, area, maxdets)
    out = {}
    for idx, name in enumerate(class_names):
        p = precisions[:, :, idx, 0, -1]
        p = p[p > -1]
        out[f"AP-{name}"] = float(np.mean(p) * 100) if p.size else float("nan")
    return out


def stats_to_dict(stats) -> dict[str, float]:
    """The 12 COCO numbers x100; NaN where COCOeval reports -1 (no ground truth in that bucket)."""
    return {n: float(s * 100) if s >= 0 else float("nan") for n, s in zip(STAT_NAMES, stats[:12])}


def empty_detections(coco_gt: COCO) -> COCO:
    """A COCO result set with no detections (``loadRes`` rejects an empty list), so that COCOeval gives 0
    wherever there is ground truth and -1 where there is none, exactly as with detections."""
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": list(coco_gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def evaluate_coco(gt_json: str | os.PathLike, detections: str | os.PathLike | list[dict[str, Any]],
                  iou_type: str = "bbox", backend: str = "auto") -> dict[str, float]:
    """Score COCO-format detections (``[{"image_id", "category_id", "bbox", "score"}, ...]`` or a json file
    of them) against ``gt_json``: the 12 standard numbers (AP ... ARl, x100) plus ``AP-<category>``."""
    cocoeval = cocoeval_class(backend)  # a backend that is not installed fails before any work
    gt_json = Path(gt_json)
    if not gt_json.is_file():
        raise FileNotFoundError(f"ground-truth annotations {gt_json} do not exist")
    load_coco_file(gt_json)  # one line naming the file and the record that pycocotools would fail on
    if not isinstance(detections, list):
        det_path = Path(detections)
        if not det_path.is_file():
            raise FileNotFoundError(f"detections file {det_path} does not exist")
        detections = json.loads(det_path.read_text())
        if not isinstance(detections, list):
            raise ValueError(f"{det_path}: expected a JSON list of detections")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_json))
    class_names = [c["name"] for c in sorted(coco_gt.dataset["categories"], key=lambda c: c["id"])]
    known = set(coco_gt.getImgIds())
    unknown = {d["image_id"] for d in detections} - known
    if unknown:
        raise ValueError(f"detections refer to image ids not in {gt_json}: {sorted(unknown)[:5]}")
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        if detections:
            coco_dt = coco_gt.loadRes(detections)
        else:
            logger.warning("no detections to evaluate against %s", gt_json)
            coco_dt = empty_detections(coco_gt)
        coco_eval = cocoeval(coco_gt, coco_dt, iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.info("COCO %s evaluation (%s):\n%s", iou_type, type(coco_eval).__name__, summary.getvalue())
    return {**stats_to_dict(coco_eval.stats), **per_category_ap(coco_eval, class_names)}


class NASNetCOCOEvaluator(DatasetEvaluator):
    """COCO box evaluation in detectron2's ``DatasetEvaluator`` interface (``reset/process/evaluate``), as
    detectron2's ``COCOEvaluator`` does it (same output files, category unmapping, per-category AP), with the
    fastest installed COCOeval, the six AR numbers next to the six AP numbers, and real numbers (not six NaNs)
    when the model detects nothing. Results: ``{"bbox": {"AP": ..., "AR100": ..., "AP-<category>": ...}}``,
    also written to ``output_dir/coco_metrics.json``."""

    def __init__(self, dataset_name: str, output_dir: str | None = None, backend: str = "auto",
                 distributed: bool = True, tasks: tuple[str, ...] = ("bbox",)):
        if set(tasks) - {"bbox", "segm"}:
            raise ValueError(f"NASNetCOCOEvaluator evaluates 'bbox' and 'segm', not {sorted(set(tasks))}")
        self.cocoeval = cocoeval_class(backend)
        self.dataset_name, self.output_dir, self.distributed, self.tasks = dataset_name, output_dir, distributed, tasks
        self.metadata = MetadataCatalog.get(dataset_name)
        json_file = self.metadata.get("json_file")
        if json_file is None:  # a dataset in detectron2's format only: written out in COCO's
            if output_dir is None:
                raise ValueError(f"dataset {dataset_name} has no COCO json file: give the evaluator an output_dir "
                                 "to write one")
            json_file = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
            convert_to_coco_json(dataset_name, json_file)
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco_gt = COCO(PathManager.get_local_path(json_file))
        self.predictions: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.predictions = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            if "instances" in out:
                instances = out["instances"].to("cpu")
                self.predictions.append({"image_id": inp["image_id"],
                                         "instances": instances_to_coco_json(instances, inp["image_id"])})

    def evaluate(self, img_ids: list[int] | None = None) -> dict[str, dict[str, float]]:
        """Score the predictions (gathered on the main process, which alone returns results)."""
        predictions = self.predictions
        if self.distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        if not predictions:
            logger.warning("evaluation of %s received no predictions", self.dataset_name)
            return {}
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            atomic_torch_save(predictions, os.path.join(self.output_dir, "instances_predictions.pth"))
        detections = self.coco_detections(predictions)
        if self.output_dir:
            atomic_write(os.path.join(self.output_dir, "coco_instances_results.json"), json.dumps(detections))
        if "annotations" not in self.coco_gt.dataset:
            logger.info("%s has no annotations to evaluate against", self.dataset_name)
            return {}
        results = {task: self.evaluate_task(detections, task, img_ids) for task in self.tasks}
        if self.output_dir:
            path = Path(self.output_dir) / "coco_metrics.json"
            atomic_write(path, json.dumps(results, indent=1))  # a rerun checks it to tell a finished evaluation
            logger.info("COCO metrics written to %s", path)
        return copy.deepcopy(results)

    def coco_detections(self, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The predictions as COCO results, contiguous class ids mapped back to the dataset's category ids."""
        detections = list(itertools.chain(*[p["instances"] for p in predictions]))
        to_dataset_id = {v: k for k, v in self.metadata.get("thing_dataset_id_to_contiguous_id", {}).items()}
        if to_dataset_id:
            for det in detections:
                if det["category_id"] not in to_dataset_id:
                    raise ValueError(f"a prediction has class {det['category_id']}, but {self.dataset_name} has "
                                     f"{len(to_dataset_id)} classes (0 to {len(to_dataset_id) - 1})")
                det["category_id"] = to_dataset_id[det["category_id"]]
        return detections

    def evaluate_task(self, detections: list[dict[str, Any]], task: str, img_ids: list[int] | None):
        if detections:
            if task == "segm":  # mask AP uses the mask area when the results carry no box
                detections = [{k: v for k, v in d.items() if k != "bbox"} for d in detections]
            coco_dt = self.coco_gt.loadRes(detections)
        else:
            logger.warning("No detections from the model: AP and AR are 0 wherever there is ground truth")
            coco_dt = empty_detections(self.coco_gt)
        coco_eval = self.cocoeval(self.coco_gt, coco_dt, task)
        coco_eval.params.maxDets = [1, 10, 100]  # COCOeval's default, as detectron2 sets it
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        if detections:
            print(summary.getvalue(), end="")  # COCOeval's own summary, as detectron2's evaluation prints it
        results = stats_to_dict(coco_eval.stats)
        logger.info("Evaluation results for %s (%s):\n%s", task, type(coco_eval).__name__,
                    create_small_table(results))
        class_names = self.metadata.get("thing_classes")
        if class_names and len(class_names) > 1:
            per_category = per_category_ap(coco_eval, class_names)
            results.update(per_category)
            # as detectron2's COCOEvaluator prints it: (category, AP) pairs, three to a row
            pairs = [(k[len("AP-"):], f"{v:.3f}") for k, v in per_category.items()]
            rows = [sum(pairs[i:i + 3], ()) for i in range(0, len(pairs), 3)]
            logger.info("Per-category %s AP:\n%s", task,
                        tabulate(rows, tablefmt="pipe", floatfmt=".3f", headers=["category", "AP"] * 3,
                                 numalign="left"))
        return results
