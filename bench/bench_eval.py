#!/usr/bin/env python
"""COCO box evaluation: our evaluator (``nasnet_det.detection.evaluation.evaluate_coco``) against plain
pycocotools on the same predictions, plus every fast COCOeval that is installed, in one process.

Ground truth: a real COCO set (``--gt``; default: the package's real sample,
``nasnet_det/data/sample/coco_sample``), its images repeated ``--copies`` times under new ids so there are a few
hundred, a share of its boxes turned into crowd regions. Predictions (seeded): most ground-truth boxes found
with jitter, some missed, some duplicated, false positives of random classes, a few images left empty.
Each evaluator runs the whole path (read the ground-truth json, load the results, evaluate, accumulate,
summarize); the 12 numbers, as evaluate_coco reports them (x100, NaN for COCOeval's -1), must equal
pycocotools' (max abs diff printed), the time is the median of repeats.
Ours is also compared with the backend it runs on, alone (``hotcoco alone``: that library's own COCO, loadRes
and COCOeval), which bounds what our wrapping costs.

    python bench/bench_eval.py [--gt annotations.json] [--copies 12] [--repeats 3]
    # COCO-val scale (5,120 images, ~37k boxes): pycocotools (~1 min a run) timed on its one reference run
    python bench/bench_eval.py --gt coco128/annotations.json --copies 40 --pycocotools-repeats 1 \
        --section bench_eval_coco_val_scale
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import print_row, record, row


def default_gt() -> Path:
    """The real COCO sample shipped in the package (32 photos, 209 boxes)."""
    from nasnet_det.data.sample import coco_sample

    return coco_sample()[0]


def make_eval_set(gt: dict, copies: int, seed: int) -> tuple[dict, list[dict]]:
    """(ground truth, detections): ``copies`` copies of the images, 10% crowd boxes, misses, duplicates,
    false positives and empty images."""
    rng = random.Random(seed)
    cats = [c["id"] for c in gt["categories"]]
    images, anns, dets = [], [], []
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    next_img, next_ann = 1, 1
    for _ in range(copies):
        for img in gt["images"]:
            new = dict(img, id=next_img)
            images.append(new)
            for a in by_image.get(img["id"], []):
                x, y, w, h = a["bbox"]
                crowd = int(rng.random() < 0.1)
                anns.append(dict(a, id=next_ann, image_id=next_img, iscrowd=crowd, area=w * h))
                next_ann += 1
                if rng.random() < 0.2:
                    continue  # missed
                for _ in range(2 if rng.random() < 0.15 else 1):  # found, sometimes twice
                    j = [rng.gauss(0, 0.1) * s for s in (w, h, w, h)]
                    dets.append(dict(image_id=next_img, category_id=a["category_id"],
                                     bbox=[x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])],
                                     score=round(rng.random(), 4)))
            for _ in range(rng.randint(0, 4)):  # false positives
                W, H = img["width"], img["height"]
                w, h = rng.uniform(8, W / 2), rng.uniform(8, H / 2)
                dets.append(dict(image_id=next_img, category_id=rng.choice(cats),
                                 bbox=[rng.uniform(0, W - w), rng.uniform(0, H - h), w, h],
                                 score=round(rng.random() * 0.6, 4)))
            next_img += 1
    # A few images with ground truth but no detections at all.
    empty = {img["id"] for img in rng.sample(images, max(1, len(images) // 50))}
    dets = [d for d in dets if d["image_id"] not in empty]
    return dict(gt, images=images, annotations=anns), dets


def reported(stats) -> np.ndarray:
    """The 12 numbers as evaluate_coco reports them (its own conversion: x100, NaN for -1), so that ours is
    compared with the others exactly."""
    from nasnet_det.detection.evaluation import stats_to_dict

    return np.asarray(list(stats_to_dict(stats).values()))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference of two sets of the 12 numbers; inf where one is NaN (no ground truth) and not the other."""
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    both = ~np.isnan(a)
    return float(np.max(np.abs(a[both] - b[both]), initial=0.0))


def run_pycocotools(gt_path: Path, dets: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        e = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        e.evaluate(), e.accumulate(), e.summarize()
    return reported(e.stats)


def run_ours(gt_path: Path, dets: list[dict]) -> np.ndarray:
    from nasnet_det.detection.evaluation import STAT_NAMES, evaluate_coco

    res = evaluate_coco(gt_path, dets)
    return np.asarray([res[k] for k in STAT_NAMES])


def run_faster_coco_eval(gt_path: Path, dets: list[dict]) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        e = COCOeval_faster(coco_gt, coco_gt.loadRes(dets), "bbox", print_function=print)
        e.evaluate(), e.accumulate(), e.summarize()
    return reported(e.stats)


def run_hotcoco(gt_path: Path, dets: list[dict]) -> np.ndarray:
    import hotcoco

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = hotcoco.COCO(str(gt_path))
        e = hotcoco.COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        e.evaluate(), e.accumulate(), e.summarize()
    return reported(e.stats)


def run_detectron2_opt(gt_path: Path, dets: list[dict]) -> np.ndarray:
    from detectron2.evaluation.fast_eval_api import COCOeval_opt
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        e = COCOeval_opt(coco_gt, coco_gt.loadRes(dets), "bbox")
        e.evaluate(), e.accumulate(), e.summarize()
    return reported(e.stats)


def resolve_backend(backend: str) -> str:
    from nasnet_det.detection.evaluation import resolve_backend as resolve

    return resolve(backend)


def fresh(dets: list[dict]) -> list[dict]:
    """A copy of the detections for one run: pycocotools' and faster-coco-eval's loadRes write id, area,
    iscrowd and a box polygon into the dicts they get, which the next evaluator would read."""
    return [dict(d) for d in dets]


def format_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in load)


# The library evaluate_coco runs on (its backend 'auto'), by the name of its row here.
BACKEND_ALONE = {"hotcoco": "hotcoco", "faster_coco_eval": "faster-coco-eval", "pycocotools": "pycocotools"}

EVALUATORS: dict[str, Callable[[Path, list[dict]], np.ndarray]] = {
    "ours (evaluate_coco)": run_ours,
    "faster-coco-eval": run_faster_coco_eval,
    "hotcoco": run_hotcoco,
    "detectron2 COCOeval_opt": run_detectron2_opt,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", type=Path, default=default_gt(), help="COCO ground-truth json (default: %(default)s)")
    parser.add_argument("--copies", type=int, default=12, help="repeat the images this many times")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pycocotools-repeats", type=int, default=None,
                        help="timed runs of pycocotools (default: --repeats); 1 = only its reference run, which "
                             "checks the others' numbers and is timed too (at COCO-val scale one run takes ~1 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--section", default="bench_eval", help="results section to record the rows under")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if not args.gt.is_file():
        raise SystemExit(f"error: --gt {args.gt} does not exist (a COCO annotations json is expected)")
    pycocotools_repeats = args.repeats if args.pycocotools_repeats is None else args.pycocotools_repeats
    if args.repeats < 1 or pycocotools_repeats < 1:
        raise SystemExit("error: --repeats and --pycocotools-repeats must be at least 1")
    load_before = os.getloadavg()
    loads_1min = [load_before[0]]  # sampled after each round of repeats too
    gt, dets = make_eval_set(json.loads(args.gt.read_text()), args.copies, args.seed)
    crowd = sum(a["iscrowd"] for a in gt["annotations"])
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} boxes ({crowd} crowd), {len(dets)} detections "
          f"from {args.gt}", flush=True)
    rows, notes, diffs = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = Path(tmp) / "gt.json"
        gt_path.write_text(json.dumps(gt))
        start = time.perf_counter()
        reference = run_pycocotools(gt_path, fresh(dets))
        reference_seconds = time.perf_counter() - start
        names = ["pycocotools"]
        fns = {"pycocotools": run_pycocotools}
        for name, fn in EVALUATORS.items():
            try:
                stats = fn(gt_path, fresh(dets))
            except Exception as e:  # an evaluator that is not installed or cannot run here
                notes.append(f"{name}: not measured ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
                print(notes[-1], flush=True)
                continue
            diff = diffs[name] = max_abs_diff(stats, reference)
            verdict = "identical" if diff == 0 else "equal up to float rounding" if diff <= 1e-12 else "DIFFERENT"
            notes.append(f"{name}: max |stat - pycocotools stat| = {diff:.3g} ({verdict})")
            print(notes[-1], flush=True)
            fns[name] = fn
            names.append(name)
        times: dict[str, list[float]] = {n: [] for n in names}
        if pycocotools_repeats < args.repeats:  # its reference run (after no warm-up, as for every repeat) counts
            times["pycocotools"].append(reference_seconds)
        for _ in range(args.repeats):  # interleaved repeats
            for n in names:
                if n == "pycocotools" and len(times[n]) >= pycocotools_repeats:
                    continue
                given = fresh(dets)
                start = time.perf_counter()
                fns[n](gt_path, given)
                times[n].append(time.perf_counter() - start)
            loads_1min.append(os.getloadavg()[0])
    load_after = os.getloadavg()
    med = {n: statistics.median(t) for n, t in times.items()}
    setting = dict(images=len(gt["images"]), boxes=len(gt["annotations"]), detections=len(dets),
                   repeats=args.repeats, pycocotools_repeats=pycocotools_repeats,
                   stats_pycocotools_x100=[float(s) for s in reference])
    for n in names[1:]:
        rows.append(row(f"COCO bbox eval: {n}", "seconds", med[n], med["pycocotools"], "pycocotools", False,
                        max_abs_stat_diff=diffs[n], **setting))
        print_row(rows[-1])
    backend = resolve_backend("auto")
    ours, alone = "ours (evaluate_coco)", BACKEND_ALONE[backend]
    if ours in med and alone in med:  # what our wrapping costs over the library it runs on
        rows.append(row(f"COCO bbox eval: ours (evaluate_coco on {backend})", "seconds", med[ours], med[alone],
                        f"{alone} alone", False, max_abs_stat_diff=diffs[ours], **setting))
        print_row(rows[-1])
    notes.append("times per run (s): " + "; ".join(f"{n} " + ", ".join(f"{t:.3f}" for t in ts)
                                                      for n, ts in times.items()))
    notes.append(f"load average (1, 5, 15 min) before the run {format_load(load_before)}, after it "
                 f"{format_load(load_after)}; 1-min load during the run {min(loads_1min):.2f}-{max(loads_1min):.2f} "
                 f"({os.cpu_count()} CPUs)")
    for note in notes[-2:]:
        print(note, flush=True)
    if not args.no_record:
        record(args.section, rows, notes=notes)


if __name__ == "__main__":
    main()
