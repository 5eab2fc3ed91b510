"""COCO evaluation: perfect predictions give AP 100; the fast backends (hotcoco, faster-coco-eval) give
pycocotools' numbers exactly, also on crowd boxes, misses, duplicates and empty images; COCOEvaluator path."""

import importlib.util
import json
import logging
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from helpers.data import COCO_JSON, write_coco_json

from nasnet_det.detection.data import register_coco_dataset
from nasnet_det.detection.evaluation import STAT_NAMES, NASNetCOCOEvaluator, evaluate_coco, resolve_backend

FAST_BACKENDS = ["hotcoco", "faster_coco_eval"]


def require(backend: str) -> None:
    if backend != "pycocotools":
        pytest.importorskip(backend)


def synthetic_gt(tmp_path: Path, n_images: int = 6) -> Path:
    rng = random.Random(0)
    images, anns = [], []
    cats = [{"id": 2, "name": "a"}, {"id": 5, "name": "b"}, {"id": 9, "name": "c"}]
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 400, "height": 300})
        for _ in range(rng.randint(0, 4)):
            w, h = rng.uniform(5, 150), rng.uniform(5, 150)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": rng.choice(cats)["id"],
                         "bbox": [rng.uniform(0, 200), rng.uniform(0, 100), w, h], "area": w * h, "iscrowd": 0})
    path = tmp_path / "gt.json"
    return write_coco_json(path, images, anns, cats)


def gt_as_detections(gt_json: Path, jitter: float = 0.0, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    anns = json.loads(gt_json.read_text())["annotations"]
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": rng.random(),
             "bbox": [v + rng.uniform(-jitter, jitter) for v in a["bbox"]]} for a in anns]


@pytest.mark.parametrize("backend", ["pycocotools", *FAST_BACKENDS])
def test_perfect_predictions_give_ap_100(tmp_path, backend):
    require(backend)
    gt = synthetic_gt(tmp_path)
    res = evaluate_coco(gt, gt_as_detections(gt), backend=backend)
    assert set(STAT_NAMES) <= set(res)
    for k in ("AP", "AP50", "AP75", "AR100", "AP-a", "AP-b", "AP-c"):
        assert res[k] == pytest.approx(100.0), k


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fast_backend_equals_pycocotools(tmp_path, backend):
    require(backend)
    gt = COCO_JSON  # the real COCO sample shipped in the package
    dets = gt_as_detections(gt, jitter=6.0, seed=1)
    dets += [dict(d, category_id=1 if d["category_id"] != 1 else 2, score=d["score"] / 2) for d in dets[::3]]
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps(dets))
    official = evaluate_coco(gt, det_file, backend="pycocotools")
    fast = evaluate_coco(gt, det_file, backend=backend)
    assert 10 < official["AP"] < 95  # a non-trivial score, so equality means something
    assert official.keys() == fast.keys()
    for k, v in official.items():
        assert fast[k] == pytest.approx(v, abs=1e-9, nan_ok=True), k


def hard_gt_and_detections(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Ground truth with crowd regions and images without boxes; detections with misses, duplicates,
    wrong classes, detections on crowd regions and on images without ground truth, images left empty."""
    rng = random.Random(3)
    cats = [{"id": 1, "name": "a"}, {"id": 4, "name": "b"}, {"id": 7, "name": "c"}]
    images, anns, dets = [], [], []
    for i in range(1, 41):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        for _ in range(0 if i % 7 == 0 else rng.randint(1, 6)):  # every 7th image has no ground truth
            w, h = rng.uniform(4, 300), rng.uniform(4, 300)
            box = [rng.uniform(0, 330), rng.uniform(0, 170), w, h]
            cat = rng.choice(cats)["id"]
            crowd = int(rng.random() < 0.15)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": box, "area": w * h,
                         "iscrowd": crowd})
            if i % 9 == 0 or rng.random() < 0.2:
                continue  # every 9th image gets no detection at all; other boxes are sometimes missed
            for _ in range(3 if rng.random() < 0.2 else 1):  # duplicates
                dets.append({"image_id": i, "category_id": cat, "score": round(rng.random(), 3),
                             "bbox": [v + rng.gauss(0, 0.08) * s for v, s in zip(box, (w, h, w, h))]})
        if i % 9:
            for _ in range(rng.randint(0, 3)):  # false positives, also on images without ground truth
                dets.append({"image_id": i, "category_id": rng.choice(cats)["id"], "score": round(rng.random(), 3),
                             "bbox": [rng.uniform(0, 500), rng.uniform(0, 400), rng.uniform(4, 140),
                                      rng.uniform(4, 80)]})
    path = tmp_path / "hard_gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    assert any(a["iscrowd"] for a in anns)
    return path, dets


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fast_backend_equals_pycocotools_on_crowd_misses_duplicates_empty_images(tmp_path, backend):
    require(backend)
    gt, dets = hard_gt_and_detections(tmp_path)
    official = evaluate_coco(gt, dets, backend="pycocotools")
    fast = evaluate_coco(gt, dets, backend=backend)
    assert 5 < official["AP"] < 95 and 5 < official["AR100"] < 100
    assert official.keys() == fast.keys()
    for k, v in official.items():
        assert fast[k] == pytest.approx(v, abs=1e-12, nan_ok=True), k


def test_auto_backend_is_the_fastest_installed():
    pytest.importorskip("hotcoco")
    assert resolve_backend("auto") == "hotcoco"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cocoapi")


def test_evaluate_coco_errors(tmp_path):
    gt = synthetic_gt(tmp_path)
    with pytest.raises(FileNotFoundError, match="absent.json does not exist"):
        evaluate_coco(gt, tmp_path / "absent.json")
    with pytest.raises(ValueError, match="image ids not in"):
        evaluate_coco(gt, [{"image_id": 999, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 1.0}])
    assert evaluate_coco(gt, [])["AP"] == 0.0


def gt_without_large_or_c(tmp_path: Path) -> Path:
    """Small and medium boxes of categories a and b only: no ground truth for APl/ARl or for AP-c."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 200} for i in (1, 2)]
    anns = [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 5, "bbox": [50, 50, 60, 60], "area": 3600, "iscrowd": 0}]
    cats = [{"id": 2, "name": "a"}, {"id": 5, "name": "b"}, {"id": 9, "name": "c"}]
    path = tmp_path / "gt_small.json"
    return write_coco_json(path, images, anns, cats)


def register_with_images(name: str, gt: Path) -> dict:
    from PIL import Image

    data = json.loads(gt.read_text())
    (gt.parent / "images").mkdir(exist_ok=True)
    for im in data["images"]:
        Image.new("RGB", (im["width"], im["height"])).save(gt.parent / "images" / im["file_name"])
    register_coco_dataset(name, gt, gt.parent / "images")
    return data


@pytest.mark.parametrize("backend", ["pycocotools", *FAST_BACKENDS])
def test_no_detections_same_numbers_from_both_paths(tmp_path, backend):
    """0 where there is ground truth, NaN where there is none, all 12 numbers and AP-<class>, from
    evaluate_coco and from the COCOEvaluator used in training."""
    require(backend)
    gt = gt_without_large_or_c(tmp_path)
    direct = evaluate_coco(gt, [], backend=backend)
    expected_keys = set(STAT_NAMES) | {"AP-a", "AP-b", "AP-c"}
    assert set(direct) == expected_keys
    no_gt = {"APl", "ARl", "AP-c"}
    for k, v in direct.items():
        assert math.isnan(v) if k in no_gt else v == 0.0, (k, v)
    data = register_with_images(f"det_test_nodets_{backend}", gt)
    evaluator = NASNetCOCOEvaluator(f"det_test_nodets_{backend}", output_dir=str(tmp_path / "out"),
                                    distributed=False, backend=backend)
    evaluator.reset()
    for im in data["images"]:
        empty = Instances((im["height"], im["width"]), pred_boxes=Boxes(torch.zeros(0, 4)),
                          scores=torch.zeros(0), pred_classes=torch.zeros(0, dtype=torch.int64))
        evaluator.process([{"image_id": im["id"]}], [{"instances": empty}])
    via_evaluator = evaluator.evaluate()["bbox"]
    assert set(via_evaluator) == expected_keys
    for k, v in direct.items():
        assert via_evaluator[k] == pytest.approx(v, nan_ok=True), k


def test_coco_evaluator_path_gives_ap_100(tmp_path, caplog):
    """Predictions equal to the ground truth, fed through detectron2's COCOEvaluator (process/evaluate)."""
    gt = synthetic_gt(tmp_path)
    (tmp_path / "images").mkdir()
    data = json.loads(gt.read_text())
    from PIL import Image

    for im in data["images"]:
        Image.new("RGB", (im["width"], im["height"])).save(tmp_path / "images" / im["file_name"])
    register_coco_dataset("det_test_eval", gt, tmp_path / "images")
    id_map = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    evaluator = NASNetCOCOEvaluator("det_test_eval", output_dir=str(tmp_path / "out"), distributed=False)
    evaluator.reset()
    for im in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        inst = Instances((im["height"], im["width"]))
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        inst.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.linspace(1.0, 0.5, len(anns))
        inst.pred_classes = torch.tensor([id_map[a["category_id"]] for a in anns], dtype=torch.int64)
        evaluator.process([{"image_id": im["id"]}], [{"instances": inst}])
    with caplog.at_level(logging.INFO, logger="nasnet_det.detection.evaluation"):
        results = evaluator.evaluate()["bbox"]
    # the 12 COCO numbers in one table, the per-category APs in another (as detectron2 prints them)
    summary = next(r.getMessage() for r in caplog.records if "Evaluation results for bbox" in r.getMessage())
    assert "AR100" in summary and "AP-a" not in summary
    per_category = next(r.getMessage() for r in caplog.records if "Per-category bbox AP" in r.getMessage())
    assert "| a " in per_category and "100.000" in per_category
    for k in ("AP", "AP50", "AP75", "AR10", "AR100", "AP-a", "AP-b", "AP-c"):
        assert results[k] == pytest.approx(100.0, abs=1e-3), k
    saved = json.loads((tmp_path / "out" / "coco_metrics.json").read_text())
    assert saved["bbox"]["AP"] == pytest.approx(100.0, abs=1e-3)


def test_auto_backend_falls_back_when_fast_evaluators_are_missing(tmp_path, monkeypatch):
    """Without hotcoco (and then faster-coco-eval) 'auto' takes the next one and scores the same; naming a
    missing backend is one clear error (the score CLI exits 2 on it), not an ImportError mid-evaluation."""
    gt, dets = hard_gt_and_detections(tmp_path)
    official = evaluate_coco(gt, dets, backend="pycocotools")
    monkeypatch.setitem(sys.modules, "hotcoco", None)  # import hotcoco now raises ImportError
    with pytest.raises(ValueError, match="'hotcoco' is not installed"):
        evaluate_coco(gt, dets, backend="hotcoco")
    if importlib.util.find_spec("faster_coco_eval") is not None:
        assert resolve_backend("auto") == "faster_coco_eval"
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    assert resolve_backend("auto") == "pycocotools"
    fallback = evaluate_coco(gt, dets, backend="auto")
    for k, v in official.items():
        assert fallback[k] == pytest.approx(v, abs=1e-12, nan_ok=True), k


def repeat_eval_set(gt_json: Path, detections: list[dict], copies: int, out: Path) -> tuple[Path, list[dict]]:
    """``copies`` copies of a ground truth and its detections under new image and annotation ids."""
    data = json.loads(gt_json.read_text())
    step = max(im["id"] for im in data["images"])
    images, anns, dets = [], [], []
    for c in range(copies):
        images += [dict(im, id=im["id"] + c * step, file_name=f"{c}_{im['file_name']}") for im in data["images"]]
        anns += [dict(a, id=len(anns) + i + 1, image_id=a["image_id"] + c * step)
                 for i, a in enumerate(data["annotations"])]
        dets += [dict(d, image_id=d["image_id"] + c * step) for d in detections]
    out.write_text(json.dumps({"images": images, "annotations": anns, "categories": data["categories"]}))
    return out, dets


@pytest.fixture(scope="module")
def large_eval_set(tmp_path_factory) -> tuple[Path, list[dict], dict[str, float]]:
    """The hard set 25 times over (1,000 images, ~3,000 boxes): a scale where loading shows, still cheap;
    with pycocotools' numbers."""
    tmp = tmp_path_factory.mktemp("large_eval")
    gt, dets = repeat_eval_set(*hard_gt_and_detections(tmp), copies=25, out=tmp / "large_gt.json")
    return gt, dets, evaluate_coco(gt, dets, backend="pycocotools")


@pytest.fixture
def pycocotools_unusable(monkeypatch):
    """pycocotools' COCO can be neither built nor asked to load results: what uses it fails."""
    from pycocotools.coco import COCO

    def refuse(*args, **kwargs):
        raise AssertionError("pycocotools' COCO was used")

    monkeypatch.setattr(COCO, "__init__", refuse)
    monkeypatch.setattr(COCO, "loadRes", refuse)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fast_backend_reads_and_scores_in_its_own_library_at_scale(large_eval_set, pycocotools_unusable, backend,
                                                                     tmp_path):
    """A fast backend reads the ground truth and loads the results itself (pycocotools' json reading alone took
    longer than hotcoco's whole evaluation at COCO-val scale), in evaluate_coco and in the evaluator used in
    training, and still gives pycocotools' numbers."""
    require(backend)
    gt, dets, official = large_eval_set
    assert len(dets) > 2500 and 5 < official["AP"] < 95
    fast = evaluate_coco(gt, dets, backend=backend)
    assert official.keys() == fast.keys()
    for k, v in official.items():
        assert fast[k] == pytest.approx(v, abs=1e-12, nan_ok=True), k
    name = f"det_test_large_{backend}"
    register_coco_dataset(name, gt, tmp_path, check_images=False)
    evaluator = NASNetCOCOEvaluator(name, distributed=False, backend=backend)
    via_evaluator = evaluator.evaluate_task(dets, "bbox", img_ids=None)
    for k, v in official.items():
        assert via_evaluator[k] == pytest.approx(v, abs=1e-12, nan_ok=True), k


def square_masks_gt_and_detections(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Polygon ground truth and RLE detections (some shifted, one of another class): mask AP well inside (0, 100)."""
    from pycocotools import mask as mask_utils

    rng = random.Random(5)
    images, anns, dets = [], [], []
    for i in range(1, 9):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48})
        for _ in range(rng.randint(1, 3)):
            x, y, w, h = rng.randint(0, 30), rng.randint(0, 20), rng.randint(6, 30), rng.randint(6, 25)
            cat = rng.choice((1, 2))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
            mask = np.zeros((48, 64), dtype=np.uint8, order="F")
            dx = rng.choice((0, 0, 2, 5))
            mask[y:y + h, min(63, x + dx):x + w + dx] = 1
            rle = mask_utils.encode(mask)
            rle["counts"] = rle["counts"].decode()
            dets.append({"image_id": i, "category_id": cat if rng.random() < 0.85 else 3 - cat,
                         "segmentation": rle, "score": round(rng.random(), 3)})
    path = tmp_path / "masks_gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return path, dets


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fast_backend_equals_pycocotools_on_masks(tmp_path, backend):
    """Mask results (RLE, no box) loaded by the fast backend's own loadRes: pycocotools' numbers."""
    require(backend)
    gt, dets = square_masks_gt_and_detections(tmp_path)
    official = evaluate_coco(gt, dets, iou_type="segm", backend="pycocotools")
    fast = evaluate_coco(gt, dets, iou_type="segm", backend=backend)
    assert 5 < official["AP"] < 95
    for k, v in official.items():
        assert fast[k] == pytest.approx(v, abs=1e-12, nan_ok=True), k


@pytest.mark.parametrize("backend", ["pycocotools", *FAST_BACKENDS])
def test_evaluation_leaves_the_callers_detections_as_they_are(tmp_path, backend):
    """pycocotools' and faster-coco-eval's loadRes write into the dicts they get (a mask result got a numpy box,
    which the next backend's loadRes then choked on): evaluate_coco hands them copies."""
    require(backend)
    gt, dets = square_masks_gt_and_detections(tmp_path)
    before = json.dumps(dets)
    evaluate_coco(gt, dets, iou_type="segm", backend=backend)
    box_gt, box_dets = hard_gt_and_detections(tmp_path)
    box_before = json.dumps(box_dets)
    evaluate_coco(box_gt, box_dets, backend=backend)
    assert json.dumps(dets) == before and json.dumps(box_dets) == box_before


@pytest.mark.parametrize("backend", ["pycocotools", *FAST_BACKENDS])
@pytest.mark.parametrize("annotations", ["no key", "empty list"])
def test_evaluator_without_ground_truth_writes_detections_and_scores_nothing(tmp_path, backend, annotations):
    """A test split (no boxes: no "annotations", or an empty list) is not scored, with every backend (hotcoco
    cannot tell the two apart); the detections are still written."""
    require(backend)
    data = {"images": [{"id": 1, "file_name": "1.jpg", "width": 50, "height": 40}],
            "categories": [{"id": 3, "name": "a"}, {"id": 8, "name": "b"}]}
    if annotations == "empty list":
        data["annotations"] = []
    gt = tmp_path / "test_split.json"
    gt.write_text(json.dumps(data))
    name = f"det_test_no_gt_{backend}_{annotations.replace(' ', '_')}"
    register_coco_dataset(name, gt, tmp_path, check_images=False)
    evaluator = NASNetCOCOEvaluator(name, output_dir=str(tmp_path / "out"), distributed=False, backend=backend)
    inst = Instances((40, 50), pred_boxes=Boxes(torch.tensor([[1.0, 2.0, 20.0, 30.0]])), scores=torch.tensor([0.9]),
                     pred_classes=torch.tensor([1]))
    evaluator.process([{"image_id": 1}], [{"instances": inst}])
    assert evaluator.evaluate() == {}
    written = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert [d["category_id"] for d in written] == [8]
    assert not (tmp_path / "out" / "coco_metrics.json").exists()
