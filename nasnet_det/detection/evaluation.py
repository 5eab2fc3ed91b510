"""COCO box evaluation: the 12 standard COCOeval numbers plus per-category AP.

Both entry points (:func:`evaluate_coco` and :class:`NASNetCOCOEvaluator`) return the same shape, also when
the model detects nothing: all 12 numbers and ``AP-<category>``, 0 where there is ground truth, NaN where
there is none (COCOeval's -1), as COCOeval itself reports them for an empty result set.

Backends, fastest first (``auto`` takes the first one installed): ``hotcoco`` (Rust, ~10x faster than
faster-coco-eval here), ``faster_coco_eval`` (C++), ``pycocotools`` (the official code). Each runs end to end
in its own library (:class:`CocoBackend`): its ``COCO`` reads the ground-truth json and loads the results
(``loadRes``), its ``COCOeval`` scores them; no dataset is converted from one library to another (at COCO-val
scale pycocotools' json reading alone took longer than all of hotcoco's evaluation). hotcoco gives
pycocotools' numbers bit for bit; faster-coco-eval its 12 numbers, and per-category AP up to float rounding
(~1e-14, its precision table sums in another order) (tests/detection/test_eval.py; bench/bench_eval.py times
them all, and ours against the backend it runs on, alone).
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
from collections.abc import Callable
from dataclasses import dataclass
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
from tabulate import tabulate

from nasnet_det.detection.data import load_coco_file
from nasnet_det.utils.errors import BadInputError
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


@dataclass(frozen=True)
class CocoBackend:
    """One COCO library end to end: ``coco`` is its COCO class (``coco(path)`` reads a ground-truth json,
    ``coco()`` is an empty set; its objects have pycocotools' ``getImgIds/getCatIds/loadImgs/loadCats/loadRes``),
    ``cocoeval`` its COCOeval (``cocoeval(coco_gt, coco_dt, iou_type)``, pycocotools' ``params``,
    ``evaluate/accumulate/summarize``, ``stats``, ``eval['precision']``)."""

    name: str
    coco: Callable[..., Any]
    cocoeval: Callable[..., Any]
    # loadRes writes id, area, iscrowd (and a box's polygon, a mask's box) into the detection dicts it is given
    loads_in_place: bool
    # what loadRes raises on a malformed detection (hotcoco checks every field: "load_res[3]: field 'bbox': ...")
    bad_result_errors: tuple[type[Exception], ...] = ()

    def load_ground_truth(self, path: str | os.PathLike) -> Any:
        """The ground truth read from ``path`` (a json that is not COCO's is one error naming the file)."""
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return self.coco(str(path))
        except (ValueError, AssertionError) as e:  # malformed json (pycocotools: AssertionError for a non-dict)
            raise BadInputError(f"{path} is not a COCO annotations json: {first_line(e)}") from e

    def load_results(self, coco_gt: Any, detections: list[dict[str, Any]], source: str) -> Any:
        """``detections`` (COCO results) as a result set over ``coco_gt``, the caller's dicts left as they are;
        an empty one where there are none (pycocotools' ``loadRes`` rejects an empty list)."""
        if not detections:
            return empty_detections(coco_gt)
        if self.loads_in_place:
            detections = [dict(d) for d in detections]
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return coco_gt.loadRes(detections)
        except self.bad_result_errors as e:
            raise BadInputError(f"{source}: {first_line(e)}") from e


def first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def coco_backend(backend: str = "auto") -> CocoBackend:
    """The COCO library ``backend`` names ('auto': the fastest installed), with its COCO and COCOeval."""
    backend = resolve_backend(backend)
    if backend == "hotcoco":
        import hotcoco

        return CocoBackend("hotcoco", hotcoco.COCO, hotcoco.COCOeval, loads_in_place=False,
                           bad_result_errors=(ValueError,))
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster

        class FasterCOCOeval(COCOeval_faster):
            """COCOeval_faster with the pycocotools constructor signature (and its printed summary)."""

            def __init__(self, coco_gt=None, coco_dt=None, iou_type: str = "bbox"):
                super().__init__(coco_gt, coco_dt, iou_type, print_function=print)

        return CocoBackend("faster_coco_eval", FasterCOCO, FasterCOCOeval, loads_in_place=True)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return CocoBackend("pycocotools", COCO, COCOeval, loads_in_place=True)


def class_names_of(coco_gt: Any) -> list[str]:
    """The category names of a COCO set, by category id."""
    return [c["name"] for c in sorted(coco_gt.loadCats(coco_gt.getCatIds()), key=lambda c: c["id"])]


def has_boxes(coco_gt: Any) -> bool:
    """Whether a COCO set has ground-truth annotations (a test split has none, or no "annotations" key)."""
    try:
        return bool(coco_gt.getAnnIds())
    except KeyError:  # pycocotools / faster-coco-eval on a json without "annotations"
        return False


def check_detections(detections: list, source: str, iou_type: str) -> None:
    """Every detection is a dict with the keys COCOeval reads, and a box of 4 numbers' length. hotcoco would
    score one without "score" as 1 and one without "bbox" as a miss; pycocotools stops with a bare KeyError
    or IndexError."""
    needed = {"image_id", "category_id", "score", "bbox" if iou_type == "bbox" else "segmentation"}
    boxes = iou_type == "bbox"
    # one generator pass, the slow loop with its messages only for a bad file: this runs on every evaluation
    if all(isinstance(d, dict) and needed <= d.keys()
           and (not boxes or (isinstance(d["bbox"], (list, tuple)) and len(d["bbox"]) == 4)) for d in detections):
        return
    for i, det in enumerate(detections):
        if not isinstance(det, dict) or not needed <= det.keys():
            have = sorted(det) if isinstance(det, dict) else type(det).__name__
            raise BadInputError(f"{source}: detection {i} must be a dict with keys {sorted(needed)}, got {have}")
        if boxes and (not isinstance(det["bbox"], (list, tuple)) or len(det["bbox"]) != 4):
            raise BadInputError(f"{source}: detection {i} has bbox {det['bbox']!r}, expected [x, y, width, height]")


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


def empty_detections(coco_gt: Any) -> Any:
    """A result set with no detections, of ``coco_gt``'s library, so that COCOeval gives 0 wherever there is
    ground truth and -1 where there is none, exactly as with detections."""
    coco_dt = type(coco_gt)()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.dataset = {"images": coco_gt.loadImgs(coco_gt.getImgIds()),
                           "categories": coco_gt.loadCats(coco_gt.getCatIds()), "annotations": []}
        coco_dt.createIndex()  # hotcoco indexes on assignment already: a no-op there
    return coco_dt


def evaluate_coco(gt_json: str | os.PathLike, detections: str | os.PathLike | list[dict[str, Any]],
                  iou_type: str = "bbox", backend: str = "auto") -> dict[str, float]:
    """Score COCO-format detections (``[{"image_id", "category_id", "bbox", "score"}, ...]`` or a json file
    of them) against ``gt_json``: the 12 standard numbers (AP ... ARl, x100) plus ``AP-<category>``."""
    coco = coco_backend(backend)  # a backend that is not installed fails before any work
    gt_json = Path(gt_json)
    if not gt_json.is_file():
        raise FileNotFoundError(f"ground-truth annotations {gt_json} do not exist")
    load_coco_file(gt_json)  # one line naming the file and the record that pycocotools would fail on
    source = "detections"
    if not isinstance(detections, list):
        det_path = Path(detections)
        if not det_path.is_file():
            raise FileNotFoundError(f"detections file {det_path} does not exist")
        source = str(det_path)
        try:
            detections = json.loads(det_path.read_text())
        except json.JSONDecodeError as e:
            raise BadInputError(f"{det_path} is not valid JSON: {e}") from e
        if not isinstance(detections, list):
            raise BadInputError(f"{det_path}: expected a JSON list of detections")
    check_detections(detections, source, iou_type)
    coco_gt = coco.load_ground_truth(gt_json)
    unknown = {d["image_id"] for d in detections} - set(coco_gt.getImgIds())
    if unknown:
        raise BadInputError(f"{source}: detections refer to image ids not in {gt_json}: {sorted(unknown)[:5]}")
    if not detections:
        logger.warning("no detections to evaluate against %s", gt_json)
    coco_dt = coco.load_results(coco_gt, detections, source)
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval = coco.cocoeval(coco_gt, coco_dt, iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.info("COCO %s evaluation (%s):\n%s", iou_type, type(coco_eval).__name__, summary.getvalue())
    return {**stats_to_dict(coco_eval.stats), **per_category_ap(coco_eval, class_names_of(coco_gt))}


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
        self.coco = coco_backend(backend)
        self.dataset_name, self.output_dir, self.distributed, self.tasks = dataset_name, output_dir, distributed, tasks
        self.metadata = MetadataCatalog.get(dataset_name)
        json_file = self.metadata.get("json_file")
        if json_file is None:  # a dataset in detectron2's format only: written out in COCO's
            if output_dir is None:
                raise ValueError(f"dataset {dataset_name} has no COCO json file: give the evaluator an output_dir "
                                 "to write one")
            json_file = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
            convert_to_coco_json(dataset_name, json_file)
        self.coco_gt = self.coco.load_ground_truth(PathManager.get_local_path(json_file))
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
        if not has_boxes(self.coco_gt):
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
        if task == "segm":  # mask AP uses the mask area when the results carry no box
            detections = [{k: v for k, v in d.items() if k != "bbox"} for d in detections]
        if not detections:
            logger.warning("No detections from the model: AP and AR are 0 wherever there is ground truth")
        coco_dt = self.coco.load_results(self.coco_gt, detections, f"predictions on {self.dataset_name}")
        coco_eval = self.coco.cocoeval(self.coco_gt, coco_dt, task)
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
