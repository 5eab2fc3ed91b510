"""Config keys for NASNet detectors (the detectron2 ``add_xxx_config`` pattern).

Call :func:`add_nasnet_config` on ``detectron2.config.get_cfg()`` before merging a file: yacs rejects keys it
has never seen (:func:`get_nasnet_cfg` does that), then merge a file and overrides with
``nasnet_det.config.load_cfg(get_nasnet_cfg(), config_file, opts)``.
"""

from __future__ import annotations

import math

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from nasnet_det.models.config import add_nasnet_model_config
from nasnet_det.utils.errors import BadInputError, is_int

NORMS = ("BN", "FrozenBN", "SyncBN")


def add_nasnet_config(cfg: CN) -> CN:
    """Add ``MODEL.NASNET`` (:func:`nasnet_det.models.config.add_nasnet_model_config`, default preset
    ``nasnet_a_mobile``) plus the detection keys ``MODEL.NASNET.OUT_FEATURES / FREEZE_AT / NORM``,
    ``SOLVER.REFERENCE_IMS_PER_BATCH``, ``SOLVER.AMP.PRECISION`` and ``DATASETS.COCO_FILES``.
    ``MODEL.NASNET.WEIGHTS`` is the ImageNet-pretrained NASNet (a nasnet-det checkpoint or a timm /
    pretrainedmodels state dict), loaded after the detector is built; ``MODEL.WEIGHTS`` (a detectron2
    checkpoint) is loaded afterwards and overrides it. The backbone has no classifier, so ``AUX_HEAD`` and
    ``DROPOUT`` are unused; ``DROP_PATH_KEEP_PROB`` applies to every NASNet cell (C4: trunk and second stage,
    as TF)."""
    add_nasnet_model_config(cfg, "nasnet_a_mobile")
    n = cfg.MODEL.NASNET
    # Multi-scale taps for build_nasnet_backbone / build_nasnet_fpn_backbone: cell names ("cell_3",
    # "cell_stem_0", ...) or stride aliases "stride4" .. "stride32" (the last cell at that stride).
    # The C4 backbone ignores this: it always outputs "c4" (see backbone.py).
    n.OUT_FEATURES = ["stride4", "stride8", "stride16", "stride32"]
    # Freeze conv0 (1), + stride-4 cells (2), + stride-8 (3), + stride-16 (4), + stride-32 (5); 0 = train all.
    n.FREEZE_AT = 2
    n.NORM = "FrozenBN"  # one of NORMS
    n.FUSE_BN_AT_INFERENCE = False  # eval mode runs a BN-folded copy of the NASNet: same outputs, faster (fuse.py)

    # The images per iteration that SOLVER.BASE_LR, MAX_ITER, STEPS, WARMUP_ITERS, CHECKPOINT_PERIOD and
    # TEST.EVAL_PERIOD are stated for (detectron2's 1x: 16). At the run's actual batch (IMS_PER_BATCH, which
    # follows the process count when SOLVER.REFERENCE_WORLD_SIZE > 0) the trainer derives the effective values
    # linearly, prints them and writes OUTPUT_DIR/schedule.json (nasnet_det/engine/scaling.py). 0 = as written.
    cfg.SOLVER.REFERENCE_IMS_PER_BATCH = 0
    # With SOLVER.AMP.ENABLED: the autocast dtype (nasnet_det/detection/precision.py). "auto": bfloat16 on GPUs
    # that compute it natively (compute capability >= 8) and on a CPU, else float16 with a gradient scaler.
    cfg.SOLVER.AMP.PRECISION = "auto"

    # COCO-format datasets to register before training: "name=path/to/annotations.json:path/to/images".
    cfg.DATASETS.COCO_FILES = []
    return cfg


def get_nasnet_cfg() -> CN:
    """detectron2's default config plus the NASNet keys."""
    return add_nasnet_config(get_cfg())


def _sizes(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def validate_input_sizes(cfg: CN) -> None:
    """The ``INPUT`` resize keys, as detectron2's ``ResizeShortestEdge`` reads them, refused where a value has no
    meaning there: a shorter-side size of 0 in ``MIN_SIZE_TRAIN`` would silently train at full size, a
    ``MAX_SIZE_*`` of 0 scales images to nothing. ``MIN_SIZE_TEST 0`` keeps detectron2's documented meaning
    (no resizing at test time). Raises :class:`BadInputError` naming the key."""
    i = cfg.INPUT
    sampling = i.MIN_SIZE_TRAIN_SAMPLING
    if sampling not in ("choice", "range"):
        raise BadInputError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got {sampling!r}")
    train = _sizes(i.MIN_SIZE_TRAIN)
    if not train or not all(is_int(v, 1) for v in train):
        raise BadInputError(f"INPUT.MIN_SIZE_TRAIN must be one or more sizes >= 1 (pixels of the shorter image "
                            f"side), got {i.MIN_SIZE_TRAIN!r}")
    if sampling == "range" and (len(train) != 2 or train[0] > train[1]):
        raise BadInputError(f"INPUT.MIN_SIZE_TRAIN with INPUT.MIN_SIZE_TRAIN_SAMPLING 'range' must be (MIN, MAX) "
                            f"with MIN <= MAX, got {i.MIN_SIZE_TRAIN!r}")
    if not is_int(i.MIN_SIZE_TEST, 0):
        raise BadInputError(f"INPUT.MIN_SIZE_TEST must be a size >= 1 (pixels of the shorter image side), or 0 "
                            f"for no resizing at test time, got {i.MIN_SIZE_TEST!r}")
    for key in ("MAX_SIZE_TRAIN", "MAX_SIZE_TEST"):
        if not is_int(i[key], 1):
            raise BadInputError(f"INPUT.{key} must be a size >= 1 (pixels of the longer image side), got "
                                f"{i[key]!r}")


def validate_solver_values(cfg: CN) -> None:
    """The optimizer and data-loader values that torch would refuse only when training starts, in its own words
    ("Invalid learning rate: -0.1", "num_workers option should be non-negative"); :class:`BadInputError` naming
    the key here, before anything runs."""
    s = cfg.SOLVER
    workers = cfg.DATALOADER.NUM_WORKERS
    if not is_int(workers, 0):
        raise BadInputError(f"DATALOADER.NUM_WORKERS must be an integer >= 0 (0: load in the training process), "
                            f"got {workers!r}")
    # (key, value, low, high, low inclusive, high inclusive)
    ranges = [("SOLVER.BASE_LR", s.BASE_LR, 0.0, math.inf, False, False),
              ("SOLVER.BASE_LR_END", s.BASE_LR_END, 0.0, math.inf, True, False),
              ("SOLVER.MOMENTUM", s.MOMENTUM, 0.0, 1.0, True, False),
              ("SOLVER.WEIGHT_DECAY", s.WEIGHT_DECAY, 0.0, math.inf, True, False),
              ("SOLVER.WEIGHT_DECAY_NORM", s.WEIGHT_DECAY_NORM, 0.0, math.inf, True, False),
              ("SOLVER.GAMMA", s.GAMMA, 0.0, math.inf, False, False),
              ("SOLVER.WARMUP_FACTOR", s.WARMUP_FACTOR, 0.0, 1.0, True, True),
              ("SOLVER.WARMUP_ITERS", s.WARMUP_ITERS, 0, math.inf, True, False)]
    if s.WEIGHT_DECAY_BIAS is not None:  # None: as WEIGHT_DECAY
        ranges.append(("SOLVER.WEIGHT_DECAY_BIAS", s.WEIGHT_DECAY_BIAS, 0.0, math.inf, True, False))
    if s.CLIP_GRADIENTS.ENABLED:
        ranges.append(("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", s.CLIP_GRADIENTS.CLIP_VALUE, 0.0, math.inf, False, False))
    for key, value, low, high, low_in, high_in in ranges:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and (value >= low if low_in else value > low) and (value <= high if high_in else value < high)):
            wanted = (f"{'>=' if low_in else '>'} {low}" if high == math.inf else
                      f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}")
            raise BadInputError(f"{key} must be a number {wanted}, got {value!r}")
