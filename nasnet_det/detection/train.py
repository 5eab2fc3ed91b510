"""Training and evaluation of NASNet Faster R-CNN in detectron2's style: ``DefaultTrainer``'s workflow, built from
detectron2's public parts (``SimpleTrainer`` / ``AMPTrainer``, ``create_ddp_model``, hooks constructed here).

Rerunning the same command into the same OUTPUT_DIR resumes (model, optimizer, scheduler, iteration, RNG
state and the position in the data stream); a finished run is reported as done. ``--no-resume`` starts over,
deleting the old checkpoints and metrics.
"""

from __future__ import annotations

import argparse
import logging
import os
import weakref
from collections import OrderedDict
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    HookBase,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset, print_csv_format, verify_results
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.utils import comm
from detectron2.utils.events import EventWriter, JSONWriter
from detectron2.utils.logger import setup_logger
from fvcore.common.history_buffer import HistoryBuffer
from fvcore.nn.precise_bn import get_bn_modules

import nasnet_det.detection.backbone  # noqa: F401  (registers the backbones)
import nasnet_det.detection.heads  # noqa: F401  (registers NASNetROIHeads)
from nasnet_det.config import load_cfg
from nasnet_det.detection.backbone import set_drop_path_progress
from nasnet_det.detection.checkpoint import FINAL_CHECKPOINT, NASNetDetectionCheckpointer
from nasnet_det.detection.config import get_nasnet_cfg, validate_input_sizes
from nasnet_det.detection.data import (
    ResumableTrainingSampler,
    SkippingLoader,
    SkipUnreadableMapper,
    check_dataset_classes,
    register_builtin_datasets,
    register_datasets,
)
from nasnet_det.detection.evaluation import NASNetCOCOEvaluator
from nasnet_det.detection.weights import load_pretrained_nasnet
from nasnet_det.engine.checkpoint import LAST_CHECKPOINT, remove_files
from nasnet_det.engine.metrics import truncate_metrics
from nasnet_det.engine.process import die_with_parent
from nasnet_det.engine.rng import capture_rng_state, restore_rng_state
from nasnet_det.models import NASNet
from nasnet_det.models.cell import leaves_input_unused
from nasnet_det.models.hub import check_named_weights, is_named_weights
from nasnet_det.utils.errors import BadInputError, check_output_dir, exit_2_on_bad_input
from nasnet_det.utils.io import disk_full_errors, full_disk_error, remove_stale_tmp
from nasnet_det.utils.logs import show_package_logs

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"  # detectron2's JSONWriter


def build_nasnet_detector(cfg: CfgNode) -> torch.nn.Module:
    """``build_model(cfg)`` plus the ImageNet NASNet weights of ``MODEL.NASNET.WEIGHTS`` (if set)."""
    model = build_model(cfg)
    if cfg.MODEL.NASNET.WEIGHTS:
        load_pretrained_nasnet(model, cfg.MODEL.NASNET.WEIGHTS, strict=True)
    return model


class AutocastForward(torch.nn.Module):
    """Runs ``model``'s forward (the losses, in training) under ``torch.autocast``; the backward pass then runs
    outside it, as PyTorch's AMP recipe has it. SimpleTrainer's documented way to change how the losses are
    computed is to wrap the model; the wrapper is the step trainer's only, so checkpoints, hooks and DDP see the
    model itself."""

    def __init__(self, model: torch.nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(*args, **kwargs)


def build_step_trainer(cfg: CfgNode, model: torch.nn.Module, data_loader, optimizer) -> SimpleTrainer:
    """The per-iteration trainer. ``SOLVER.AMP.ENABLED``: on CUDA detectron2's ``AMPTrainer`` (float16 autocast
    and a gradient scaler); on a CPU, where AMPTrainer needs CUDA, bfloat16 autocast (bfloat16 has float32's
    exponent range, so no gradient scaling is needed)."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    if cfg.MODEL.DEVICE.startswith("cuda"):
        return AMPTrainer(model, data_loader, optimizer)
    return SimpleTrainer(AutocastForward(model, "cpu", torch.bfloat16), data_loader, optimizer)


class DropPathSchedule(HookBase):
    """ScheduledDropPath: drop probability grows linearly with training progress (slim / TF detector)."""

    def before_step(self) -> None:
        progress = self.trainer.iter / max(1, self.trainer.max_iter)
        set_drop_path_progress(self.trainer.model, progress)


def ddp_options(cfg: CfgNode, model: torch.nn.Module) -> dict[str, Any]:
    """``DistributedDataParallel`` arguments beyond detectron2's defaults (none in a single process)."""
    options: dict[str, Any] = {}
    if comm.get_world_size() > 1:
        # A searched cell that ignores one of its inputs leaves that input's preprocessing without gradient.
        # The built network's genotype: the file is read once, when the model is built.
        if any(leaves_input_unused(m.genotype) for m in model.modules() if isinstance(m, NASNet)):
            options["find_unused_parameters"] = True
        if cfg.MODEL.DEVICE == "cpu":  # gloo processes: detectron2 would pass device_ids=[local rank]
            options["device_ids"] = None
    return options


class ExactResume(HookBase):
    """Makes a resumed run continue like an uninterrupted one: checkpoints the RNG states (ROI sampling,
    augmentation, drop-path), restarts the training sampler where it stopped, and drops the
    ``metrics.json`` rows of iterations the interrupted run did after its last checkpoint (they are redone)."""

    def __init__(self) -> None:
        self.pending: dict | None = None

    HISTORY = 100  # last values per metric kept for the writers' smoothing windows (20 iterations)

    def state_dict(self) -> dict:
        storage = getattr(self.trainer, "storage", None)
        history = {k: [(float(v), int(i)) for v, i in buf.values()[-self.HISTORY:]]
                   for k, buf in (storage.histories().items() if storage is not None else ())}
        loader = getattr(self.trainer, "data_loader", None)
        # the unreadable images met so far: a resumed run keeps counting from there (data/skipped_images)
        skipped = list(loader.skipped) if isinstance(loader, SkippingLoader) else []
        return {"rng": capture_rng_state(), "history": history, "skipped_images": skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.pending = state_dict

    def before_train(self) -> None:
        trainer = self.trainer
        start = trainer.start_iter
        loader = trainer.data_loader
        sampler = getattr(loader, "resumable_sampler", None)
        if sampler is not None and start > 0:
            sampler.start = start * (trainer.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
        if self.pending is not None and start > 0:
            restore_rng_state(self.pending["rng"])
            # The smoothed values in metrics.json (medians over 20 iterations) then match an uninterrupted run's.
            # Only the histories: the latest values were already written before the checkpoint.
            for key, values in self.pending.get("history", {}).items():
                buf = HistoryBuffer()
                for value, iteration in values:
                    buf.update(value, iteration)
                trainer.storage.histories()[key] = buf
            if isinstance(loader, SkippingLoader) and comm.is_main_process():  # rank 0's list was saved
                loader.skipped[:] = self.pending.get("skipped_images", [])
            self.pending = None
        if start > 0 and comm.is_main_process():
            # the rows of iterations >= start are redone; a torn or foreign line is dropped, not reported
            truncate_metrics(os.path.join(trainer.cfg.OUTPUT_DIR, METRICS_FILE), start - 1, "iteration", strict=False,
                             in_place=True)


class WriteMetricsAtCheckpoints(HookBase):
    """Flushes metrics.json right before each checkpoint, so that the metrics on disk always reach the newest
    checkpoint: a run killed after it resumes there with its log complete (rows after it are dropped and redone)."""

    def __init__(self, checkpoint_period: int, writers: list[EventWriter]):
        self.period = checkpoint_period
        self.writers = [w for w in writers if isinstance(w, JSONWriter)]

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it >= self.trainer.max_iter - 1:
            for writer in self.writers:
                writer.write()


class SkippedImagesMetric(HookBase):
    """Puts the number of unreadable training images skipped so far into the event storage (metrics.json)."""

    def after_step(self) -> None:
        loader = self.trainer.data_loader
        if isinstance(loader, SkippingLoader):
            self.trainer.storage.put_scalar("data/skipped_images", len(loader.skipped), smoothing_hint=False)


class Trainer(TrainerBase):
    """``DefaultTrainer``'s workflow (build, ``resume_or_load``, ``train``, ``test``) from detectron2's public parts,
    with the hooks and writers built and held here: DefaultTrainer offers no way to pass DDP's arguments or to
    set its writers' period. Checkpoints keep DefaultTrainer's layout (``trainer`` -> ``_trainer``)."""

    def __init__(self, cfg: CfgNode):
        super().__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # as DefaultTrainer: setup not called
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        self.optimizer = build_optimizer(cfg, model)
        self.data_loader = self.build_train_loader(cfg)
        self.model = create_ddp_model(model, broadcast_buffers=False, **ddp_options(cfg, model))
        self.step_trainer = build_step_trainer(cfg, self.model, self.data_loader, self.optimizer)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        # MODEL.WEIGHTS / --resume of another NASNet must fail, not train on a half-loaded network; saves atomic.
        self.checkpointer = NASNetDetectionCheckpointer(self.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.last_eval_results: OrderedDict | dict | None = None
        # detectron2 writes metrics every 20 iterations: a short run would leave one point of its loss curve.
        self.writer_period = max(1, min(20, self.max_iter // 20))
        self.writers: list[EventWriter] = default_writers(cfg.OUTPUT_DIR, self.max_iter) \
            if comm.is_main_process() else []
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> list[HookBase | None]:
        """DefaultTrainer's hooks (timer, LR schedule, PreciseBN, checkpointer, evaluation, writers) plus ours:
        the drop-path schedule first, the skip count and the metrics flush right before the checkpointer (they
        reach disk with the checkpoint of their step), the exact resume last."""
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0  # save some memory and time for PreciseBN
        precise_bn = hooks.PreciseBN(cfg.TEST.EVAL_PERIOD, self.model, self.build_train_loader(cfg),
                                     cfg.TEST.PRECISE_BN.NUM_ITER) \
            if cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(self.model) else None
        main = comm.is_main_process()

        def test_and_save_results():
            self.last_eval_results = self.test(self.cfg, self.model)
            return self.last_eval_results

        return [
            DropPathSchedule() if cfg.MODEL.NASNET.DROP_PATH_KEEP_PROB < 1.0 else None,
            hooks.IterationTimer(),
            hooks.LRScheduler(self.optimizer, self.scheduler),
            precise_bn,  # before the checkpointer: it changes the weights the checkpoint saves
            SkippedImagesMetric(),
            WriteMetricsAtCheckpoints(cfg.SOLVER.CHECKPOINT_PERIOD, self.writers),
            hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD) if main else None,
            # after the checkpointer: if evaluation fails, the checkpoint is there to debug it
            hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results),
            hooks.PeriodicWriter(self.writers, period=self.writer_period) if main else None,  # evaluation included
            ExactResume(),
        ]

    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from OUTPUT_DIR's last checkpoint (``resume`` and there is one), else load MODEL.WEIGHTS."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1  # the checkpoint holds the iteration that had just finished

    def train(self) -> OrderedDict | dict | None:
        """Train from ``start_iter``; returns the last evaluation when TEST.EXPECTED_RESULTS is set (verified)."""
        super().train(self.start_iter, self.max_iter)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            if self.last_eval_results is None:
                raise RuntimeError("TEST.EXPECTED_RESULTS is set but training ran no evaluation")
            verify_results(self.cfg, self.last_eval_results)
            return self.last_eval_results
        return None

    def run_step(self) -> None:
        self.step_trainer.iter = self.iter
        self.step_trainer.run_step()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "_trainer": self.step_trainer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.step_trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        model = build_nasnet_detector(cfg)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=0, proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
        sampler = None
        if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
            sampler = ResumableTrainingSampler(len(dataset))
        # seed: the DataLoader draws its base seed from its own generator, not from the global RNG whose state
        # a resumed run restores (the draw happens lazily, at the first batch).
        loader = SkippingLoader(build_detection_train_loader(cfg, mapper=SkipUnreadableMapper(DatasetMapper(cfg, True)),
                                                             dataset=dataset, sampler=sampler,
                                                             seed=cfg.SEED if cfg.SEED >= 0 else None), "training")
        loader.resumable_sampler = sampler
        return loader

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> SkippingLoader:
        mapper = SkipUnreadableMapper(DatasetMapper(cfg, False))
        return SkippingLoader(build_detection_test_loader(cfg, dataset_name, mapper=mapper),
                              f"evaluation on {dataset_name}")

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module,
             evaluators: list[DatasetEvaluator] | DatasetEvaluator | None = None) -> OrderedDict | dict:
        """Evaluate ``model`` on each of DATASETS.TEST (DefaultTrainer's ``test``), adding
        ``data/skipped_eval_images`` (unreadable images left out) to each dataset's results. One dataset's
        results are returned as they are, several keyed by dataset name."""
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} DATASETS.TEST")
        results = OrderedDict()
        for idx, name in enumerate(cfg.DATASETS.TEST):
            loader = cls.build_test_loader(cfg, name)
            evaluator = evaluators[idx] if evaluators is not None else cls.build_evaluator(cfg, name)
            res = inference_on_dataset(model, loader, evaluator)
            results[name] = res
            if comm.is_main_process():
                if not isinstance(res, dict):
                    raise TypeError(f"the evaluator of {name} returned a {type(res).__name__}, not a dict")
                logger.info("Evaluation results for %s in csv format:", name)
                print_csv_format(res)
            if isinstance(res, dict):
                res["data"] = {"skipped_eval_images": len(loader.skipped)}
                if loader.skipped:
                    logger.warning("evaluation on %s left out %d unreadable image(s)", name, len(loader.skipped))
        return next(iter(results.values())) if len(results) == 1 else results

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        os.makedirs(output_folder, exist_ok=True)
        return NASNetCOCOEvaluator(dataset_name, output_dir=output_folder,
                                   distributed=comm.get_world_size() > 1)


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` plus ``--dataset NAME=JSON:IMAGE_DIR`` and ``--no-resume``."""
    parser = default_argument_parser()
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=JSON:IMAGE_DIR",
                        help="register a COCO-format dataset (repeatable); use NAME in DATASETS.TRAIN/TEST")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over: delete OUTPUT_DIR's checkpoints and metrics.json first (without it, "
                             "training resumes from OUTPUT_DIR's last checkpoint when there is one)")
    return parser


def validate_detection_config(cfg: CfgNode, num_processes: int = 1, eval_only: bool = False) -> None:
    """Values detectron2 would only fail on deep inside training, named by key."""
    if cfg.SOLVER.IMS_PER_BATCH < 1:
        raise BadInputError(f"SOLVER.IMS_PER_BATCH must be >= 1 (images per batch over all GPUs), got "
                            f"{cfg.SOLVER.IMS_PER_BATCH}")
    if cfg.SOLVER.IMS_PER_BATCH % num_processes:
        raise BadInputError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} must be divisible by the number of "
                            f"processes ({num_processes})")
    if cfg.SOLVER.MAX_ITER < 1:
        raise BadInputError(f"SOLVER.MAX_ITER must be >= 1, got {cfg.SOLVER.MAX_ITER}")
    if cfg.SOLVER.BASE_LR <= 0:
        raise BadInputError(f"SOLVER.BASE_LR must be > 0, got {cfg.SOLVER.BASE_LR}")
    if cfg.SOLVER.CHECKPOINT_PERIOD < 1:
        raise BadInputError(f"SOLVER.CHECKPOINT_PERIOD must be >= 1, got {cfg.SOLVER.CHECKPOINT_PERIOD}")
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES < 1:
        raise BadInputError(f"MODEL.ROI_HEADS.NUM_CLASSES must be >= 1, got {cfg.MODEL.ROI_HEADS.NUM_CLASSES}")
    validate_input_sizes(cfg)
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS {weights} does not exist")
    # --eval-only loads every weight from MODEL.WEIGHTS: the ImageNet file is not needed then.
    imagenet = cfg.MODEL.NASNET.WEIGHTS
    if imagenet and not eval_only:
        if is_named_weights(imagenet):  # timm://..., pretrainedmodels://...: fetched when the model is built
            check_named_weights(imagenet)
        elif not os.path.isfile(imagenet):
            raise FileNotFoundError(f"MODEL.NASNET.WEIGHTS {imagenet} does not exist")


def _given_on_command_line(opts: list[str], key: str) -> bool:
    pairs = [o for o in opts if o != "--"]
    return key in pairs[0::2]


def check_eval_only_weights(cfg: CfgNode, args: argparse.Namespace) -> bool:
    """``--eval-only`` evaluates MODEL.WEIGHTS (or, with ``--resume``, OUTPUT_DIR's last checkpoint): without
    either it would score a randomly initialised detector, which is refused unless ``MODEL.WEIGHTS ""`` is given
    on the command line. Returns True when the random weights are asked for (the caller warns)."""
    if cfg.MODEL.WEIGHTS:
        return False
    if getattr(args, "resume", False) and NASNetDetectionCheckpointer(torch.nn.Module(),
                                                                      save_dir=cfg.OUTPUT_DIR).has_checkpoint():
        return False
    if _given_on_command_line(list(args.opts), "MODEL.WEIGHTS"):
        return True
    raise BadInputError(f"--eval-only needs MODEL.WEIGHTS (a detector checkpoint, e.g. "
                        f"OUTPUT_DIR/{FINAL_CHECKPOINT}), or --resume with a checkpoint in OUTPUT_DIR; to evaluate "
                        "random weights on purpose, give MODEL.WEIGHTS \"\" on the command line")


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from file + opts, datasets registered and checked, detectron2's default setup done."""
    cfg = load_cfg(get_nasnet_cfg(), args.config_file, args.opts)
    cfg.DATASETS.COCO_FILES = list(cfg.DATASETS.COCO_FILES) + list(getattr(args, "dataset", []))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA device is available; "
                         "add 'MODEL.DEVICE cpu' to the command line")
    validate_detection_config(cfg, max(1, getattr(args, "num_gpus", 1)) * max(1, getattr(args, "num_machines", 1)),
                              eval_only=getattr(args, "eval_only", False))
    cfg.freeze()
    check_output_dir(cfg.OUTPUT_DIR)
    random_weights = getattr(args, "eval_only", False) and check_eval_only_weights(cfg, args)
    register_datasets(cfg.DATASETS.COCO_FILES)
    register_builtin_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    check_dataset_classes(cfg)
    with disk_full_errors(cfg.OUTPUT_DIR, folder=True, key="OUTPUT_DIR"):  # config.yaml, log.txt
        default_setup(cfg, args)
    if random_weights:
        logger.warning("--eval-only with MODEL.WEIGHTS \"\": evaluating a randomly initialised detector (no "
                       "trained weights are loaded)")
    return cfg


def start_over(output_dir: str) -> list[str]:
    """``--no-resume``: delete the checkpoints, ``last_checkpoint`` and ``metrics.json`` of an earlier run."""
    names = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    runs = [n for n in names if (n.startswith("model_") and n.endswith(".pth")) or n in (LAST_CHECKPOINT, METRICS_FILE)]
    removed = [p.name for p in remove_files(os.path.join(output_dir, n) for n in runs)]
    if removed:
        logger.info("--no-resume: removed %s from %s", ", ".join(removed), output_dir)
    return removed


def remove_stale_outputs(cfg: CfgNode) -> list[str]:
    """Temporaries of killed writes: checkpoints in OUTPUT_DIR, ``coco_metrics.json`` in inference/<dataset>/."""
    removed = NASNetDetectionCheckpointer(torch.nn.Module(), save_dir=cfg.OUTPUT_DIR).remove_stale_temp_files()
    inference = os.path.join(cfg.OUTPUT_DIR, "inference")
    for name in sorted(os.listdir(inference)) if os.path.isdir(inference) else []:
        removed += remove_stale_tmp(os.path.join(inference, name))
    return [str(p) for p in removed]


def finish_completed_run(cfg: CfgNode, trainer: Trainer):
    """Every iteration is done (a rerun of a finished command, or a kill after the last step): write
    ``model_final.pth`` and the final evaluation if the interrupted run did not get to them, then report."""
    results = None
    if os.path.basename(trainer.checkpointer.loaded_path) != FINAL_CHECKPOINT:
        logger.info("all %d iterations are done but %s is missing: writing it", trainer.max_iter, FINAL_CHECKPOINT)
        trainer.checkpointer.save(FINAL_CHECKPOINT[: -len(".pth")], iteration=trainer.start_iter - 1)
    final_time = os.path.getmtime(os.path.join(cfg.OUTPUT_DIR, FINAL_CHECKPOINT))

    def evaluated(name: str) -> bool:  # by the final evaluation, not a periodic one before it
        metrics = os.path.join(cfg.OUTPUT_DIR, "inference", name, "coco_metrics.json")
        return os.path.isfile(metrics) and os.path.getmtime(metrics) >= final_time

    unevaluated = [n for n in cfg.DATASETS.TEST if not evaluated(n)]
    if unevaluated:
        results = Trainer.test(cfg, trainer.model)
    message = (f"OUTPUT_DIR {cfg.OUTPUT_DIR} holds a finished run ({trainer.start_iter} of SOLVER.MAX_ITER "
               f"{trainer.max_iter} iterations, {FINAL_CHECKPOINT}); nothing to train. Rerun with --no-resume to "
               "train again, or --eval-only --resume to evaluate it.")
    logger.info(message)
    if comm.is_main_process():
        print(message)
    return results


class _NoTracebackForFullDisk(logging.Filter):
    """detectron2's train loop logs every exception with its traceback before re-raising it. A full disk is
    reported in one line naming the file (``exit_2_on_bad_input``): its traceback (torch's inline_container
    RuntimeError) would only bury that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[1] is not None and full_disk_error(record.exc_info[1]))


_NO_TRACEBACK_FOR_FULL_DISK = _NoTracebackForFullDisk()


def run(args: argparse.Namespace):
    """One process's work: train (with periodic evaluation) or, with ``--eval-only``, evaluate."""
    if comm.get_world_size() > 1:  # a process spawned by detectron2's launch: do not outlive the launcher
        die_with_parent()
    if comm.is_main_process():  # this package's warnings (dropped boxes, random weights), as detectron2's own
        show_package_logs()
    logging.getLogger("detectron2.engine.train_loop").addFilter(_NO_TRACEBACK_FOR_FULL_DISK)  # once: same object
    cfg = setup(args)
    # detectron2's writers (metrics.json, log.txt, the COCO results) name no file when the disk is full
    with disk_full_errors(cfg.OUTPUT_DIR, folder=True, key="OUTPUT_DIR"):
        return _run(cfg, args)


def _run(cfg: CfgNode, args: argparse.Namespace):
    if comm.is_main_process():
        remove_stale_outputs(cfg)
    if args.eval_only:
        # MODEL.WEIGHTS (the detector) replaces every NASNet tensor: don't require the ImageNet file too.
        build_cfg = cfg.clone()
        build_cfg.defrost()
        build_cfg.MODEL.NASNET.WEIGHTS = ""
        model = Trainer.build_model(build_cfg)
        NASNetDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                                   resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    if getattr(args, "no_resume", False):
        if comm.is_main_process():
            start_over(cfg.OUTPUT_DIR)
        comm.synchronize()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=not getattr(args, "no_resume", False))
    if trainer.start_iter >= trainer.max_iter:
        return finish_completed_run(cfg, trainer)
    if trainer.start_iter > 0:
        logger.info("resuming from iteration %d in %s (rerun with --no-resume to start over)", trainer.start_iter,
                    cfg.OUTPUT_DIR)
    return trainer.train()


@exit_2_on_bad_input
def train_main(argv: list[str] | None = None) -> int:
    """``tools/train_net.py``: parse detectron2-style arguments and launch (multi-GPU / multi-machine)."""
    args = argument_parser().parse_args(argv)
    if args.resume and args.no_resume:
        raise BadInputError("--resume and --no-resume contradict each other; give one")
    launch(run, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return 0
