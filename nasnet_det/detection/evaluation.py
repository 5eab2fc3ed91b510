"""COCO box evaluation: the 12 standard COCOeval numbers plus per-category AP.

Both entry points (:func:`evaluate_coco` and :class:`NASNetCOCOEvaluator`) return the same shape, also when
the model detects nothing: all 12 numbers and ``AP-<category>``, 0 where there is ground truth, NaN where
there is none (COCOeval's -1), as COCOeval itself reports them for an empty result set.

Backends, fastest first (``auto`` takes the first one installed): ``hotcoco`` (Rust, ~10x faster than
faster-coco-eval here), ``faster_coco_eval`` (C++), ``pycocotools`` (the official code). hotcoco gives
pycocotools' numbers bit for bit; faster-coco-eval its 12 numbers, and per-category AP up to float rounding
(~1e-14, its precision table sums in another order) (tests/test_detection_eval.py; bench/bench_eval.py times
them all).
detectron2's own fast path (``fast_eval_api.COCOeval_opt``) needs its C++ extension ``detectron2._C``, which
this install lacks, so :class:`NASNetCOCOEvaluator` plugs the fastest installed backend into
``COCOEvaluator`` instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as d2_coco_evaluation
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from nasnet_det.utils.io import atomic_write

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


@contextlib.contextmanager
def _detectron2_cocoeval(cls: type) -> Iterator[None]:
    """Make detectron2's COCOEvaluator use ``cls`` as its fast implementation for the duration."""
    saved = d2_coco_evaluation.COCOeval_opt
    d2_coco_evaluation.COCOeval_opt = cls
    try:
        yield
    finally:
        d2_coco_evaluation.COCOeval_opt = saved


class NASNetCOCOEvaluator(COCOEvaluator):
    """detectron2's ``COCOEvaluator`` with the fastest installed COCOeval (hotcoco, faster-coco-eval) as its
    fast path, the six AR numbers added to the six AP numbers and per-category AP it reports, and real numbers
    (not six NaNs) when the model detects nothing."""

    def __init__(self, dataset_name: str, output_dir: str | None = None, backend: str = "auto", **kwargs: Any):
        self._cocoeval_cls = cocoeval_class(backend)
        kwargs.setdefault("tasks", ("bbox",))
        super().__init__(dataset_name, output_dir=output_dir, use_fast_impl=False, **kwargs)
        self._use_fast_impl = self._cocoeval_cls is not COCOeval
        self._eval_img_ids: list[int] | None = None

    def evaluate(self, img_ids=None):
        with _detectron2_cocoeval(self._cocoeval_cls):
            results = super().evaluate(img_ids)
        if self._output_dir and results:
            path = Path(self._output_dir) / "coco_metrics.json"
            atomic_write(path, json.dumps(results, indent=1))  # a rerun checks it to tell a finished evaluation
            self._logger.info("COCO metrics written to %s", path)
        return results

    def _eval_predictions(self, predictions, img_ids=None):
        self._eval_img_ids = img_ids  # for the no-detections evaluation below
        return super()._eval_predictions(predictions, img_ids)

    def _evaluate_without_detections(self, iou_type: str):
        """COCOeval of an empty result set (detectron2 skips it and reports six NaNs instead)."""
        coco_eval = self._cocoeval_cls(self._coco_api, empty_detections(self._coco_api), iou_type)
        # COCOeval's default maxDets: with no detections the limit changes nothing, and summarize() needs 100.
        if self._eval_img_ids is not None:
            coco_eval.params.imgIds = self._eval_img_ids
        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return coco_eval

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if coco_eval is None and iou_type in ("bbox", "segm"):
            self._logger.warning("No detections from the model: AP and AR are 0 wherever there is ground truth")
            coco_eval = self._evaluate_without_detections(iou_type)
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if coco_eval is not None and iou_type in ("bbox", "segm"):
            results.update({k: v for k, v in stats_to_dict(coco_eval.stats).items() if k.startswith("AR")})
        return results
