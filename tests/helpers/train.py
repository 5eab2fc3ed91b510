"""The tiny classification config shared by the tests/classification/ files."""

from __future__ import annotations

from pathlib import Path

from nasnet_det.classification.config import load_config


def tiny_cfg(output_dir: Path, *opts: object, n_images: int = 72):
    """A NASNet-A 1 @ f=4 CIFAR run on synthetic 32 px images that takes a second or two per few steps."""
    base = ["OUTPUT_DIR", str(output_dir), "SEED", 3,
            "MODEL.NASNET.NUM_CELLS", 1, "MODEL.NASNET.FILTERS", 4, "MODEL.NASNET.DROP_PATH_KEEP_PROB", 0.8,
            "DATA.DATASET", "cifar10", "DATA.SOURCE", f"synthetic:{n_images}", "DATA.VAL_SIZE", 16,
            "DATA.CUTOUT", 8, "DATA.NUM_WORKERS", 0,
            "SOLVER.BASE_LR", 0.05, "SOLVER.MAX_STEPS", 6, "SOLVER.BATCH_SIZE", 8,
            "TRAIN.DEVICE", "cpu", "TRAIN.CHECKPOINT_PERIOD", 1000, "TRAIN.EVAL_PERIOD", 1000,
            "TRAIN.LOG_PERIOD", 1, "TRAIN.TENSORBOARD", False, "TRAIN.EVAL_BATCH_SIZE", 16]
    merged = base + list(opts)
    return load_config(None, [str(v) for v in merged])
