"""Configuration of classification training (CIFAR-10 final training, ImageNet pretraining).

A yacs ``CfgNode`` (fvcore's, so ``_BASE_`` inheritance works) with detectron2-style overrides:
``load_config("configs/train/cifar10_smoke.yaml", ["SOLVER.MAX_STEPS", "20"])``. Steps are optimizer steps
(one step = ``SOLVER.ACCUM_STEPS`` micro-batches on every process).
"""

from __future__ import annotations

import math
from pathlib import Path

from fvcore.common.config import CfgNode as CN

from nasnet_det.config import load_cfg
from nasnet_det.models.config import add_nasnet_model_config, check_nasnet_node
from nasnet_det.models.hub import check_named_weights, is_named_weights

_C = CN()
_C.OUTPUT_DIR = "output/train"
_C.SEED = 0

# ---------------------------------------------------------------------------------------------------------
# Network: MODEL.NASNET (nasnet_det.models.config), starting at the nasnet_a_cifar preset (6@768). A config
# file or override naming MODEL.NASNET.PRESET starts from that preset instead; explicit keys win over it.
# MODEL.NASNET.WEIGHTS initialises from one of our checkpoints (fine-tuning; it must have the same arch), or from
# published weights by name: timm://nasnetalarge, pretrainedmodels://nasnetamobile (nasnet_det/models/hub.py).
_C.MODEL = CN()
add_nasnet_model_config(_C, "nasnet_a_cifar")

# ---------------------------------------------------------------------------------------------------------
_C.DATA = CN()
_C.DATA.DATASET = "cifar10"  # "cifar10" or "imagenet"
# cifar10: "folder:ROOT" (torchvision CIFAR-10; evaluated on its test split), "npz:PATH" or "synthetic:N"
# (evaluated on a held-out split of VAL_SIZE images).
_C.DATA.SOURCE = "folder:datasets/cifar10"
_C.DATA.DOWNLOAD = False
_C.DATA.VAL_SIZE = 1000
_C.DATA.CUTOUT = 16  # cifar10 cutout patch size; 0 = off
_C.DATA.LIMIT_TRAIN = 0  # use only the first N training images (smoke runs); 0 = all
# imagenet: ImageFolder directories (one sub-folder per class, same classes in both).
_C.DATA.TRAIN_DIR = ""
_C.DATA.VAL_DIR = ""
# imagenet smoke: > 0 generates a tiny ImageNet-style folder of real JPEGs under OUTPUT_DIR/fake_imagenet
# with this many classes and uses it when TRAIN_DIR/VAL_DIR are empty.
_C.DATA.FAKE_CLASSES = 0
_C.DATA.FAKE_TRAIN_PER_CLASS = 16
_C.DATA.FAKE_VAL_PER_CLASS = 4
# imagenet smoke on real photos: "cifar10" writes the embedded CIFAR-10 sample as an ImageFolder under
# OUTPUT_DIR/sample_images (SAMPLE_TRAIN / SAMPLE_VAL images per class of its 200) and uses it when
# TRAIN_DIR/VAL_DIR are empty; "" = off.
_C.DATA.IMAGE_SAMPLE = ""
_C.DATA.SAMPLE_TRAIN_PER_CLASS = 160
_C.DATA.SAMPLE_VAL_PER_CLASS = 40
_C.DATA.IMAGE_SIZE = 224  # imagenet train crop / val crop
_C.DATA.VAL_CROP_FRACTION = 0.875  # val: resize to IMAGE_SIZE / fraction, center crop IMAGE_SIZE
_C.DATA.MIN_CROP_AREA = 0.08  # RandomResizedCrop scale lower bound
_C.DATA.COLOR_JITTER = 0.0  # Inception-style brightness/contrast/saturation jitter strength; 0 = off
# DataLoader workers. Resume restores the data order exactly either way; bit-identical augmentation after a
# resume needs 0 (workers re-seed their RNG when the resumed epoch starts).
_C.DATA.NUM_WORKERS = 4

# ---------------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER = "sgd"  # "sgd" or "rmsprop" (TF-style: eps inside the sqrt, as in the paper)
_C.SOLVER.BASE_LR = 0.025
# The global batch (images per optimizer step: BATCH_SIZE x ACCUM_STEPS x processes) that BASE_LR, MAX_STEPS and
# EMA_DECAY are stated for. At another global batch the trainer derives the effective values (LR by LR_SCALING,
# MAX_STEPS inversely so the same images are seen, EMA decay ** ratio), prints them and writes OUTPUT_DIR/
# schedule.json (nasnet_det/engine/scaling.py). 0 = use them as written at any batch (the smoke configs). EPOCHS and
# the *_EPOCHS keys follow any batch as written; TRAIN.*_PERIOD count the run's own steps.
_C.SOLVER.REFERENCE_BATCH_SIZE = 0
_C.SOLVER.LR_SCALING = "linear"  # "linear" (Goyal et al. 2017), "sqrt" or "none"
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 5e-4
_C.SOLVER.WEIGHT_DECAY_NORM_AND_BIAS = False  # slim regularises conv/FC weights only
_C.SOLVER.RMSPROP_DECAY = 0.9
_C.SOLVER.RMSPROP_EPS = 1.0
_C.SOLVER.LR_SCHEDULE = "cosine"  # "cosine", "step", "exponential" or "constant"
_C.SOLVER.MIN_LR_FACTOR = 0.0  # cosine floor, as a fraction of BASE_LR
_C.SOLVER.STEP_EPOCHS = (150, 225)  # "step": multiply by GAMMA at these epochs
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.EXP_DECAY_RATE = 0.97  # "exponential": x RATE every EXP_DECAY_EPOCHS (staircase)
_C.SOLVER.EXP_DECAY_EPOCHS = 2.4
_C.SOLVER.WARMUP_EPOCHS = 0.0
_C.SOLVER.WARMUP_FACTOR = 0.1  # LR multiplier at step 0 of warmup, linear to 1
_C.SOLVER.EPOCHS = 600
_C.SOLVER.MAX_STEPS = 0  # > 0 overrides EPOCHS
_C.SOLVER.BATCH_SIZE = 32  # per process, per micro-batch
_C.SOLVER.ACCUM_STEPS = 1  # micro-batches per optimizer step (mimic a larger batch)
_C.SOLVER.CLIP_GRAD_NORM = 5.0  # 0 = off
_C.SOLVER.LABEL_SMOOTHING = 0.0
_C.SOLVER.AUX_WEIGHT = 0.4
_C.SOLVER.EMA_DECAY = 0.0  # > 0 keeps an EMA of the weights, used for evaluation and export
_C.SOLVER.EMA_WARMUP = True  # slim: decay of step t is min(EMA_DECAY, (1 + t) / (10 + t))

# ---------------------------------------------------------------------------------------------------------
_C.TRAIN = CN()
_C.TRAIN.DEVICE = "auto"  # "auto" (cuda if available), "cuda" or "cpu"
_C.TRAIN.AMP = "none"  # "none", "bf16" (CUDA or CPU autocast) or "fp16" (CUDA only, with a gradient scaler)
_C.TRAIN.SYNC_BN = False  # CUDA DDP only
_C.TRAIN.FIND_UNUSED_PARAMETERS = False  # for genotypes whose cells leave an input unused
_C.TRAIN.CHECKPOINT_PERIOD = 5000  # steps; a checkpoint is also written at the end
_C.TRAIN.KEEP_CHECKPOINTS = 3  # periodic checkpoints kept on disk (>= 1; older ones are deleted)
_C.TRAIN.EVAL_PERIOD = 0  # steps; 0 = at the end of every epoch
_C.TRAIN.LOG_PERIOD = 20  # steps between train metric records
_C.TRAIN.EVAL_BATCH_SIZE = 100
_C.TRAIN.AUTO_RESUME = True  # resume from OUTPUT_DIR's last checkpoint when there is one
_C.TRAIN.TENSORBOARD = True
# torch threads per process; 0 = usable cores / training processes on this machine (an exported
# OMP_NUM_THREADS wins outside torchrun), so processes sharing a machine do not oversubscribe it
_C.TRAIN.NUM_THREADS = 0


def get_cfg() -> CN:
    """A copy of the defaults."""
    return _C.clone()


def load_config(config_file: str | Path | None = None, opts: list[str] | None = None) -> CN:
    """Defaults, merged with ``config_file`` (``_BASE_`` allowed) and ``KEY VALUE`` overrides
    (:func:`nasnet_det.config.load_cfg`), checked and frozen. Bad input raises ``FileNotFoundError`` or
    ``ValueError`` naming the file or key."""
    cfg = load_cfg(_C, config_file, opts)
    validate_config(cfg)
    cfg.freeze()
    return cfg


def validate_config(cfg: CN) -> None:
    """Reject values the trainer cannot use, naming the key (before torch would, in its own words)."""
    for key, value, default in _leaves(cfg, _C):
        if value is None and default is not None:  # yacs lets null / None replace any value
            raise ValueError(f"{key} must be set (got null/None; the default is {default!r})")
    check_nasnet_node(cfg.MODEL.NASNET)
    if is_named_weights(cfg.MODEL.NASNET.WEIGHTS):  # timm://..., pretrainedmodels://...: a known name, up front
        check_named_weights(cfg.MODEL.NASNET.WEIGHTS)
    choices = {
        "DATA.DATASET": ("cifar10", "imagenet"),
        "SOLVER.OPTIMIZER": ("sgd", "rmsprop"),
        "SOLVER.LR_SCHEDULE": ("cosine", "step", "exponential", "constant"),
        "SOLVER.LR_SCALING": ("linear", "sqrt", "none"),
        "TRAIN.AMP": ("none", "bf16", "fp16"),
        "TRAIN.DEVICE": ("auto", "cuda", "cpu"),
    }
    for key, allowed in choices.items():
        section, name = key.split(".")
        value = cfg[section][name]
        if value not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
    for key in ("DATA.NUM_WORKERS", "DATA.VAL_SIZE", "DATA.LIMIT_TRAIN", "DATA.CUTOUT", "SOLVER.MAX_STEPS",
                "TRAIN.EVAL_PERIOD", "TRAIN.NUM_THREADS"):
        section, name = key.split(".")
        value = cfg[section][name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
    positive = ("SOLVER.BATCH_SIZE", "SOLVER.ACCUM_STEPS", "TRAIN.EVAL_BATCH_SIZE", "TRAIN.CHECKPOINT_PERIOD",
                "TRAIN.LOG_PERIOD", "TRAIN.KEEP_CHECKPOINTS")
    for key in positive:
        section, name = key.split(".")
        if cfg[section][name] < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[section][name]}")
    if cfg.SOLVER.REFERENCE_BATCH_SIZE < 0:
        raise ValueError(f"SOLVER.REFERENCE_BATCH_SIZE must be >= 0 (0: BASE_LR and MAX_STEPS as written), got "
                         f"{cfg.SOLVER.REFERENCE_BATCH_SIZE}")
    if cfg.SOLVER.MAX_STEPS <= 0 and cfg.SOLVER.EPOCHS <= 0:
        raise ValueError("set SOLVER.EPOCHS or SOLVER.MAX_STEPS to a positive value")
    # (key, low, high, low inclusive, high inclusive)
    ranges = (("SOLVER.BASE_LR", 0.0, math.inf, False, False),
              ("SOLVER.MOMENTUM", 0.0, 1.0, True, False),
              ("SOLVER.WEIGHT_DECAY", 0.0, math.inf, True, False),
              ("SOLVER.RMSPROP_DECAY", 0.0, 1.0, True, False),
              ("SOLVER.RMSPROP_EPS", 0.0, math.inf, False, False),
              ("SOLVER.CLIP_GRAD_NORM", 0.0, math.inf, True, False),
              ("SOLVER.LABEL_SMOOTHING", 0.0, 1.0, True, False),
              ("SOLVER.AUX_WEIGHT", 0.0, math.inf, True, False),
              ("SOLVER.EPOCHS", 0.0, math.inf, True, False),
              ("SOLVER.EXP_DECAY_RATE", 0.0, 1.0, False, True),
              ("SOLVER.EXP_DECAY_EPOCHS", 0.0, math.inf, False, False),
              ("SOLVER.EMA_DECAY", 0.0, 1.0, True, False),
              ("SOLVER.WARMUP_FACTOR", 0.0, 1.0, True, True),
              ("SOLVER.WARMUP_EPOCHS", 0.0, math.inf, True, False),
              ("SOLVER.GAMMA", 0.0, math.inf, False, False),
              ("SOLVER.MIN_LR_FACTOR", 0.0, 1.0, True, True),
              ("DATA.VAL_CROP_FRACTION", 0.0, 1.0, False, True),
              ("DATA.MIN_CROP_AREA", 0.0, 1.0, False, True),
              ("DATA.COLOR_JITTER", 0.0, math.inf, True, False),
              ("DATA.IMAGE_SIZE", 32, math.inf, True, False))
    for key, low, high, low_in, high_in in ranges:
        section, name = key.split(".")
        value = cfg[section][name]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{key} must be a number, got {value!r}")
        ok = (value >= low if low_in else value > low) and (value <= high if high_in else value < high)
        if not ok:
            wanted = f"{'>=' if low_in else '>'} {low}" if high == math.inf else \
                f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
            raise ValueError(f"{key} must be {wanted}, got {value}")
    if list(cfg.SOLVER.STEP_EPOCHS) != sorted(cfg.SOLVER.STEP_EPOCHS):
        raise ValueError(f"SOLVER.STEP_EPOCHS must be ascending, got {tuple(cfg.SOLVER.STEP_EPOCHS)}")
    d = cfg.DATA
    if d.DATASET == "imagenet" and not (d.TRAIN_DIR or d.IMAGE_SAMPLE or d.FAKE_CLASSES > 0):
        raise ValueError("DATA.DATASET imagenet needs DATA.TRAIN_DIR and DATA.VAL_DIR (or DATA.IMAGE_SAMPLE "
                         "cifar10 for the embedded real photos, or DATA.FAKE_CLASSES > 0 for generated images)")
    if cfg.DATA.IMAGE_SAMPLE and cfg.DATA.FAKE_CLASSES > 0:
        raise ValueError(f"DATA.IMAGE_SAMPLE {cfg.DATA.IMAGE_SAMPLE!r} and DATA.FAKE_CLASSES "
                         f"{cfg.DATA.FAKE_CLASSES} both choose the smoke images; set DATA.FAKE_CLASSES 0")
    if cfg.DATA.IMAGE_SAMPLE:
        from nasnet_det.data.imagenet import SAMPLE_IMAGE_FOLDERS

        if cfg.DATA.IMAGE_SAMPLE not in SAMPLE_IMAGE_FOLDERS:
            raise ValueError(f"DATA.IMAGE_SAMPLE must be one of {', '.join(SAMPLE_IMAGE_FOLDERS)} (or empty), "
                             f"got {cfg.DATA.IMAGE_SAMPLE!r}")


def _leaves(cfg: CN, defaults: CN, prefix: str = ""):
    """``(dotted key, value, default)`` of every value of ``cfg`` that has a default."""
    for key, value in cfg.items():
        default = defaults.get(key) if isinstance(defaults, CN) else None
        if isinstance(value, CN):
            yield from _leaves(value, default, f"{prefix}{key}.")
        elif isinstance(defaults, CN) and key in defaults:
            yield f"{prefix}{key}", value, default
