"""The tiny pipeline config of tests/pipeline/: configs/pipeline/smoke.yaml with every stage shrunk."""

from __future__ import annotations

from pathlib import Path

SMOKE = Path(__file__).resolve().parents[2] / "configs/pipeline/smoke.yaml"
# every stage for real, each as small as it goes: KEY VALUE overrides of SMOKE
TINY = [
    "SEARCH.OPTS", "['SEARCH.STRATEGY', 'random', 'SEARCH.BUDGET', '4', 'SEARCH.BATCH_SIZE', '2', "
                   "'CHILD.MAX_STEPS', '3', 'DATA.TRAIN_LIMIT', '300', 'DATA.VAL_SIZE', '100', "
                   "'WORKERS.NUM_WORKERS', '1']",
    "PRETRAIN.OPTS", "['SOLVER.MAX_STEPS', '4', 'SOLVER.BATCH_SIZE', '4', 'SOLVER.ACCUM_STEPS', '1', "
                     "'TRAIN.CHECKPOINT_PERIOD', '2', 'TRAIN.EVAL_PERIOD', '4', 'TRAIN.LOG_PERIOD', '1', "
                     "'TRAIN.TENSORBOARD', 'False', 'DATA.SAMPLE_TRAIN_PER_CLASS', '8', "
                     "'DATA.SAMPLE_VAL_PER_CLASS', '2']",
    "DETECT.OPTS", "['SOLVER.MAX_ITER', '4', 'SOLVER.CHECKPOINT_PERIOD', '2', 'SOLVER.IMS_PER_BATCH', '2', "
                   "'INPUT.MIN_SIZE_TRAIN', '(96,)', 'INPUT.MIN_SIZE_TEST', '96', 'INPUT.MAX_SIZE_TEST', '128']",
    "REPORT.PROFILE_IMAGE_SIZE", "64",
    "REPORT.SAMPLE_DETECTIONS", "False",  # ~10 s per report; the end-to-end run (DRAW below) turns it on
]
DRAW = ["REPORT.SAMPLE_DETECTIONS", "True"]
