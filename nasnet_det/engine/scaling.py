"""Training recipes that follow the global batch: the one rule every trainer and ``nasnet-det plan`` use.

A recipe states its learning rate and schedule length for a **reference batch** (slim's NASNet-A mobile: LR 2.0
for 1,600 images per step over 250k steps; detectron2's 1x: LR 0.02 for 16 images per iteration over 90k
iterations). A run's **global batch** is what it actually trains with: per-device batch x accumulation steps x
processes. The effective settings follow by linear scaling (Goyal et al. 2017, "Accurate, Large Minibatch SGD";
detectron2's ``REFERENCE_WORLD_SIZE``, timm's ``--lr-base``):

* learning rate   = BASE_LR x global / reference           (``LR_SCALING sqrt``: x sqrt(global / reference))
* steps           = reference steps x reference / global   (so the run sees the same number of images)
* warm-up and LR milestones in steps: the same inverse rule; those stated in epochs already follow the batch
* checkpoint / evaluation / log periods: classification's (``TRAIN.*_PERIOD``) count the run's own steps and are
  not scaled; detection's (``SOLVER.CHECKPOINT_PERIOD``, ``TEST.EVAL_PERIOD``) follow the inverse rule, as
  detectron2's ``auto_scale_workers`` scales them
* weight EMA decay = decay ** (global / reference)          (the same averaging horizon in images)

A reference of 0 turns the rule off: the values are used as written at any batch (the smoke configs).
Everything here is arithmetic on config values, so ``plan`` prints exactly what the trainers will use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from nasnet_det.utils.errors import BadInputError

LR_SCALINGS = ("linear", "sqrt", "none")
# OUTPUT_DIR/<this>: a trainer's effective schedule (``as_dict``), where it resumed ("start_step" / "start_iter"),
# the autocast dtype ("amp": "bfloat16", "float16" or "float32") and the device (engine/devices.describe_device)
SCHEDULE_FILE = "schedule.json"

# Training-set sizes a plan turns steps into epochs with (the trainers count the real data set).
DATASET_IMAGES = {
    "imagenet": 1_281_167,  # ILSVRC-2012 train
    "cifar10": 50_000,  # the official training split
    "coco_2017_train": 117_266,  # train2017 images with at least one box (detectron2's FILTER_EMPTY_ANNOTATIONS)
}


def lr_factor(global_batch: int, reference_batch: int, rule: str = "linear") -> float:
    """How much the LR is multiplied by at ``global_batch`` when it was stated for ``reference_batch``."""
    if rule not in LR_SCALINGS:
        raise ValueError(f"LR scaling must be one of {', '.join(LR_SCALINGS)}, got {rule!r}")
    if reference_batch <= 0 or rule == "none":
        return 1.0
    ratio = global_batch / reference_batch
    return ratio if rule == "linear" else math.sqrt(ratio)


def scaled_steps(steps: int, global_batch: int, reference_batch: int) -> int:
    """``steps`` of ``reference_batch`` images as steps of ``global_batch`` images (the same images seen;
    at least 1 for a positive count). ``reference_batch`` <= 0: unchanged."""
    if reference_batch <= 0 or steps <= 0:
        return steps
    return max(1, int(round(steps * reference_batch / global_batch)))


@dataclass(frozen=True)
class ClassificationSchedule:
    """The effective optimisation settings of one classification run (``nasnet_det.classification``)."""

    processes: int
    batch_per_process: int  # SOLVER.BATCH_SIZE (one micro-batch)
    accum_steps: int
    global_batch: int  # images per optimizer step
    reference_batch: int  # SOLVER.REFERENCE_BATCH_SIZE (0: no scaling)
    lr_scaling: str
    base_lr: float  # as written
    lr: float  # effective
    steps: int  # optimizer steps of global_batch images
    steps_per_epoch: int  # 0 when the training set's size is unknown
    epochs: float  # steps x global_batch / training images (0.0 when unknown)
    warmup_steps: int
    ema_decay: float  # effective (0: no EMA)
    train_images: int  # the training set's size the epochs are counted in (0: unknown)
    passes: int = 0  # SOLVER.EPOCHS when the run is counted in passes over the data (0: MAX_STEPS counts it)

    @property
    def lr_per_image(self) -> float:
        return self.lr / self.global_batch

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lr_per_image": self.lr_per_image}

    def describe(self) -> str:
        scaled = (f"stated for {self.reference_batch} images/step, {self.lr_scaling} scaling"
                  if self.reference_batch > 0 else "as written (SOLVER.REFERENCE_BATCH_SIZE 0)")
        epochs = f" = {self.epochs:.1f} epochs of {self.train_images:,} images" if self.train_images else ""
        if self.passes and self.train_images and abs(self.epochs - self.passes) > 1e-9:
            epochs = (f" = {self.passes} passes ({self.epochs:.1f} epochs of {self.train_images:,} images; the last "
                      "partial step of each pass is dropped)")
        ema = f", EMA decay {self.ema_decay:.6g}" if self.ema_decay > 0 else ""
        return (f"global batch {self.global_batch} = {self.batch_per_process} per process x {self.accum_steps} "
                f"accumulation x {self.processes} process(es); LR {self.lr:.6g} (BASE_LR {self.base_lr:g} "
                f"{scaled}); {self.steps:,} steps{epochs}; warm-up {self.warmup_steps:,} steps{ema}")


def classification_schedule(solver, processes: int, train_images: int = 0) -> ClassificationSchedule:
    """The effective settings of a classification ``SOLVER`` node on ``processes`` processes.

    ``train_images``: the training set's size (0 = unknown; then ``SOLVER.EPOCHS`` cannot be turned into steps
    and only a ``MAX_STEPS`` schedule has a step count). ``SOLVER.MAX_STEPS`` counts steps of
    ``REFERENCE_BATCH_SIZE`` images (when that is > 0); ``SOLVER.EPOCHS`` is epochs at any batch.
    """
    if processes < 1:
        raise ValueError(f"the number of processes must be >= 1, got {processes}")
    global_batch = solver.BATCH_SIZE * solver.ACCUM_STEPS * processes
    reference = int(solver.get("REFERENCE_BATCH_SIZE", 0))
    rule = solver.get("LR_SCALING", "linear")
    lr = solver.BASE_LR * lr_factor(global_batch, reference, rule)
    # Each process draws len(shard) // (BATCH_SIZE x ACCUM) steps per epoch (the trainer's ShardedEpochSampler
    # pads the shards to equal length): the same count here.
    per_process = math.ceil(train_images / processes) if train_images else 0
    steps_per_epoch = per_process // (solver.BATCH_SIZE * solver.ACCUM_STEPS) if train_images else 0
    if solver.MAX_STEPS > 0:
        steps = scaled_steps(solver.MAX_STEPS, global_batch, reference)
    else:
        steps = solver.EPOCHS * steps_per_epoch
    epochs = steps * global_batch / train_images if train_images else 0.0
    warmup = min(int(steps), int(round(solver.WARMUP_EPOCHS * steps_per_epoch)))  # a warm-up past the end is all of it
    ema = solver.EMA_DECAY
    if ema > 0 and reference > 0:
        ema = ema ** (global_batch / reference)
    return ClassificationSchedule(processes, solver.BATCH_SIZE, solver.ACCUM_STEPS, global_batch, reference, rule,
                                  float(solver.BASE_LR), float(lr), int(steps), int(steps_per_epoch), float(epochs),
                                  warmup, float(ema), int(train_images),
                                  int(solver.EPOCHS) if solver.MAX_STEPS <= 0 else 0)


@dataclass(frozen=True)
class DetectionSchedule:
    """The effective ``SOLVER`` of one detectron2 run (``nasnet_det.detection.train``)."""

    processes: int
    ims_per_batch: int  # images per iteration over all processes
    ims_per_device: int
    reference_ims: int  # SOLVER.REFERENCE_IMS_PER_BATCH (0: no batch rule)
    reference_world_size: int  # SOLVER.REFERENCE_WORLD_SIZE (0: the batch does not follow the world size)
    base_lr: float
    lr: float
    max_iter: int
    steps: tuple[int, ...]
    warmup_iters: int
    checkpoint_period: int
    eval_period: int
    epochs: float  # max_iter x ims_per_batch / training images (0.0 when unknown)
    train_images: int

    @property
    def lr_per_image(self) -> float:
        return self.lr / self.ims_per_batch

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": list(self.steps), "lr_per_image": self.lr_per_image}

    def describe(self) -> str:
        rules = []
        if self.reference_world_size > 0:
            rules.append(f"{self.ims_per_device} image(s) per device, SOLVER.REFERENCE_WORLD_SIZE "
                         f"{self.reference_world_size}")
        if self.reference_ims > 0:
            rules.append(f"LR and iterations stated for {self.reference_ims} images/iteration")
        epochs = f" = {self.epochs:.1f} epochs of {self.train_images:,} images" if self.train_images else ""
        return (f"{self.ims_per_batch} images/iteration on {self.processes} process(es); LR {self.lr:.6g} "
                f"(BASE_LR {self.base_lr:g}{'; ' + '; '.join(rules) if rules else ', as written'}); "
                f"{self.max_iter:,} iterations{epochs}, LR steps at {list(self.steps)}, warm-up "
                f"{self.warmup_iters:,}")


def detection_schedule(cfg, processes: int, train_images: int = 0) -> DetectionSchedule:
    """The effective settings of a detectron2 config on ``processes`` processes.

    Two rules, both linear: ``SOLVER.REFERENCE_WORLD_SIZE`` R > 0 (detectron2's) keeps the images per device
    of R devices, so the batch follows the process count; ``SOLVER.REFERENCE_IMS_PER_BATCH`` B > 0 (ours) says
    BASE_LR, MAX_ITER, STEPS, WARMUP_ITERS and the periods are stated for B images per iteration. With only R set
    this is exactly detectron2's ``DefaultTrainer.auto_scale_workers``.
    """
    s = cfg.SOLVER
    if processes < 1:
        raise ValueError(f"the number of processes must be >= 1, got {processes}")
    ref_world = int(s.REFERENCE_WORLD_SIZE)
    ims = s.IMS_PER_BATCH
    if ref_world > 0 and ref_world != processes:
        if ims % ref_world:
            raise BadInputError(f"SOLVER.IMS_PER_BATCH {ims} must be divisible by SOLVER.REFERENCE_WORLD_SIZE "
                             f"{ref_world} (it is the batch of that many devices)")
        ims = int(round(ims * processes / ref_world))
    reference = int(s.get("REFERENCE_IMS_PER_BATCH", 0))
    if reference > 0:
        scale = ims / reference
    else:  # detectron2's rule alone: the config's values are those of its IMS_PER_BATCH
        scale = ims / s.IMS_PER_BATCH

    def inverse(n: int) -> int:
        return int(round(n / scale))

    def period(n: int) -> int:  # a positive period stays one (0 = never: a short period must not switch it off)
        return max(1, inverse(n)) if n > 0 else n

    max_iter = max(1, inverse(s.MAX_ITER))
    steps = tuple(inverse(x) for x in s.STEPS)
    # LR steps that scale to iteration 0 or onto each other would silently drop a decay of the recipe
    if any(x > 0 and y < 1 for x, y in zip(s.STEPS, steps)) or len(set(steps)) < len(set(s.STEPS)):
        raise BadInputError(f"SOLVER.STEPS {tuple(s.STEPS)} scale to {steps} at {ims} images/iteration (x "
                            f"{1 / scale:g}): steps at iteration 0 or on each other; state them for a batch closer to "
                            "this one, or set the batch with SOLVER.IMS_PER_BATCH")
    epochs = max_iter * ims / train_images if train_images else 0.0
    return DetectionSchedule(processes, ims, ims // processes if ims % processes == 0 else 0, reference, ref_world,
                             float(s.BASE_LR), float(s.BASE_LR * scale), max_iter,
                             steps, inverse(s.WARMUP_ITERS),
                             max(1, inverse(s.CHECKPOINT_PERIOD)), period(cfg.TEST.EVAL_PERIOD), float(epochs),
                             int(train_images))


def apply_detection_schedule(cfg, schedule: DetectionSchedule):
    """A copy of ``cfg`` whose SOLVER (and TEST.EVAL_PERIOD) hold ``schedule``'s values, marked as applied
    (the references set to what they now describe), so applying it again changes nothing."""
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    s = cfg.SOLVER
    s.IMS_PER_BATCH = schedule.ims_per_batch
    s.BASE_LR = schedule.lr
    s.MAX_ITER = schedule.max_iter
    s.STEPS = schedule.steps
    s.WARMUP_ITERS = schedule.warmup_iters
    s.CHECKPOINT_PERIOD = schedule.checkpoint_period
    cfg.TEST.EVAL_PERIOD = schedule.eval_period
    s.REFERENCE_WORLD_SIZE = schedule.processes if schedule.reference_world_size > 0 else 0
    if "REFERENCE_IMS_PER_BATCH" in s:
        s.REFERENCE_IMS_PER_BATCH = schedule.ims_per_batch if schedule.reference_ims > 0 else 0
    if was_frozen:
        cfg.freeze()
    return cfg
