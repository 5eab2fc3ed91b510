"""Faster R-CNN with NASNet backbones trains (finite, decreasing loss) and tools/train_net.py runs end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.utils.env import seed_all_rng
from helpers.data import shapes_dataset
from PIL import Image

from nasnet_det.detection.config import get_nasnet_cfg
from nasnet_det.detection.data import register_coco_dataset
from nasnet_det.detection.train import Trainer

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "detection"


def train_cfg(layout: str, dataset: str, out: Path, iters: int):
    cfg = get_nasnet_cfg()
    cfg.merge_from_file(str(CONFIGS / f"smoke-nasnet-{layout}.yaml"))
    cfg.MODEL.NASNET.FILTERS, cfg.MODEL.NASNET.STEM_FILTERS = 4, 8
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32]] if layout == "c4" else [[8], [16], [32], [64], [128]]
    cfg.DATASETS.COCO_FILES, cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = [], (dataset,), ()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 64
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = 2, 0.01, iters
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.STEPS = 2, ()
    cfg.OUTPUT_DIR = str(out)
    cfg.SEED = 0
    return cfg


@pytest.mark.parametrize("layout", ["c4", "fpn"])
def test_faster_rcnn_trains_with_decreasing_loss(tmp_path, layout):
    j, im = shapes_dataset(tmp_path / "data")
    register_coco_dataset(f"det_shapes_{layout}", j, im)
    seed_all_rng(0)  # model init, ROI sampling and the data sampler's order
    trainer = Trainer(train_cfg(layout, f"det_shapes_{layout}", tmp_path / "out", iters=24))
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    print(layout, np.round(losses, 3).tolist())
    assert len(losses) == 24 and all(np.isfinite(losses))
    # Medians of 5: robust to a single spiky step with batch 2, still a clear drop when learning works.
    first, last = np.median(losses[:5]), np.median(losses[-5:])
    assert last < 0.8 * first, f"loss did not decrease: first 5 {losses[:5]}, last 5 {losses[-5:]}"
    assert (tmp_path / "out" / "model_final.pth").is_file()


def test_drop_path_schedule_hook(tmp_path):
    j, im = shapes_dataset(tmp_path / "data", n_images=2)
    register_coco_dataset("det_shapes_droppath", j, im)
    cfg = train_cfg("c4", "det_shapes_droppath", tmp_path / "out", iters=2)
    cfg.MODEL.NASNET.DROP_PATH_KEEP_PROB = 0.7
    trainer = Trainer(cfg)
    trainer.train()
    head_cell = trainer.model.roi_heads.res5.nasnet.cell_2  # last of 3 cells after the stems: index 6 of 7
    assert head_cell.drop_prob == pytest.approx(0.3 * 7 / 7 * (1 / 2))  # set before step 1 of 2


def test_train_net_tool_smoke_and_eval_only(tmp_path):
    j, im = shapes_dataset(tmp_path / "data", n_images=3)
    out = tmp_path / "out"
    common = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file",
              str(CONFIGS / "smoke-nasnet-c4.yaml"), "--dataset", f"shapes={j}:{im}"]
    opts = ["DATASETS.COCO_FILES", "[]", "DATASETS.TRAIN", "('shapes',)", "DATASETS.TEST", "('shapes',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.NASNET.FILTERS", "4", "SOLVER.MAX_ITER", "3",
            "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TEST", "64", "OUTPUT_DIR", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(common + opts, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    metrics_file = out / "inference" / "shapes" / "coco_metrics.json"
    assert metrics_file.is_file()
    # Rerunning the finished command trains nothing; a final evaluation that was cut short is redone.
    metrics_file.unlink()
    final = (out / "model_final.pth").read_bytes()
    run = subprocess.run(common + opts, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "holds a finished run" in run.stdout and "Starting training" not in run.stderr
    assert metrics_file.is_file() and (out / "model_final.pth").read_bytes() == final
    metrics_file.unlink()
    # The detector checkpoint holds every weight: eval-only must not need the ImageNet file (absent here).
    run = subprocess.run(common + ["--eval-only"] + opts + ["MODEL.WEIGHTS", str(out / "model_final.pth"),
                                                            "MODEL.NASNET.WEIGHTS", str(tmp_path / "imagenet.pth")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads(metrics_file.read_text())["bbox"]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
                "AP-red", "AP-blue"):
        assert key in metrics
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in run.stdout + run.stderr

    demo = [sys.executable, str(REPO / "tools" / "demo.py"), "--config-file", str(CONFIGS / "smoke-nasnet-c4.yaml"),
            "--input", str(im), "--output", str(tmp_path / "drawn"), "--confidence-threshold", "0.0",
            "DATASETS.COCO_FILES", f"['shapes={j}:{im}']", "DATASETS.TEST", "('shapes',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.NASNET.FILTERS", "4", "INPUT.MIN_SIZE_TEST", "64",
            "MODEL.WEIGHTS", str(out / "model_final.pth")]
    run = subprocess.run(demo, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    drawn = sorted((tmp_path / "drawn").iterdir())
    assert [p.name for p in drawn] == ["0.png", "1.png", "2.png"]
    assert Image.open(drawn[0]).size == (64, 64)


def test_eval_only_and_training_reject_another_nasnets_weights(tmp_path):
    """MODEL.WEIGHTS trained with f=4 must not half-load into an f=8 detector (eval-only, or as a start point)."""
    from detectron2.modeling import build_model

    from nasnet_det.detection.train import argument_parser, run

    j, im = shapes_dataset(tmp_path / "data", n_images=2)
    register_coco_dataset("det_shapes_wrong_arch", j, im)
    cfg = train_cfg("c4", "det_shapes_wrong_arch", tmp_path / "out", iters=1)
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "f4.pth")
    cfg.MODEL.NASNET.FILTERS, cfg.MODEL.WEIGHTS = 8, str(tmp_path / "f4.pth")
    with pytest.raises(ValueError, match=r"(?s)f4.pth was trained with another NASNet.*MODEL.NASNET.FILTERS"):
        Trainer(cfg).resume_or_load(resume=False)
    args = argument_parser().parse_args([
        "--config-file", str(CONFIGS / "smoke-nasnet-c4.yaml"), "--eval-only", "--dataset", f"shapes_wa={j}:{im}",
        "DATASETS.COCO_FILES", "[]", "DATASETS.TRAIN", "()", "DATASETS.TEST", "('shapes_wa',)",
        "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.NASNET.FILTERS", "8", "MODEL.WEIGHTS", str(tmp_path / "f4.pth"),
        "OUTPUT_DIR", str(tmp_path / "eval")])
    with pytest.raises(ValueError, match=r"(?s)f4.pth was trained with another NASNet.*MODEL.NASNET.FILTERS"):
        run(args)


def test_train_net_tool_reports_category_mismatch(tmp_path):
    j, im = shapes_dataset(tmp_path / "data", n_images=1)
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file",
           str(CONFIGS / "smoke-nasnet-c4.yaml"), "--dataset", f"shapes={j}:{im}", "DATASETS.COCO_FILES", "[]",
           "DATASETS.TRAIN", "('shapes',)", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path / "out")]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                         timeout=120, cwd=REPO)
    assert run.returncode == 2
    expected = "error: DATASETS.TRAIN: dataset 'shapes' has 2 categories but MODEL.ROI_HEADS.NUM_CLASSES is 80"
    assert expected in run.stderr
    assert "Traceback" not in run.stderr


def test_unreadable_images_are_skipped_named_once_and_counted_in_training_and_evaluation(tmp_path, caplog):
    import logging

    j, im = shapes_dataset(tmp_path / "data", n_images=3)
    (im / "1.png").write_bytes((im / "1.png").read_bytes()[:60])  # a truncated file
    register_coco_dataset("det_shapes_broken", j, im)
    cfg = train_cfg("c4", "det_shapes_broken", tmp_path / "out", iters=6)
    cfg.DATASETS.TEST = ("det_shapes_broken",)
    cfg.TEST.EVAL_PERIOD = 0
    cfg.INPUT.MIN_SIZE_TEST = 64
    seed_all_rng(0)
    with caplog.at_level(logging.WARNING, logger="nasnet_det"):
        trainer = Trainer(cfg)
        trainer.train()
    skipped = [v for v, _ in trainer.storage.history("data/skipped_images").values()]
    assert skipped[-1] == 1 and len(skipped) == 6  # every step ran, on the readable images
    results = Trainer.test(cfg, trainer.model)
    assert results["data"] == {"skipped_eval_images": 1}
    assert "bbox" in results
    training = [r for r in caplog.records if "training: skipping unreadable image" in r.getMessage()]
    evaluation = [r for r in caplog.records if "evaluation on det_shapes_broken: skipping" in r.getMessage()]
    assert len(training) == 1 and "1.png" in training[0].getMessage()
    assert len(evaluation) == 2 and all("1.png" in r.getMessage() for r in evaluation)  # after training + here
