"""The NASNet Faster R-CNN trainer: ``DefaultTrainer``'s workflow, built from detectron2's public parts
(``SimpleTrainer`` / ``AMPTrainer``, ``create_ddp_model``, hooks constructed here), at the batch, learning rate
and iteration counts that follow the number of processes (nasnet_det/engine/scaling.py)."""

from __future__ import annotations

import json
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
from detectron2.engine import HookBase, TrainerBase, create_ddp_model, default_writers, hooks
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset, print_csv_format, verify_results
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.utils import comm
from detectron2.utils.events import EventWriter
from detectron2.utils.logger import setup_logger
from fvcore.nn.precise_bn import get_bn_modules

import nasnet_det.detection.backbone  # noqa: F401  (registers the backbones)
import nasnet_det.detection.heads  # noqa: F401  (registers NASNetROIHeads)
from nasnet_det.detection.checkpoint import NASNetDetectionCheckpointer
from nasnet_det.detection.data import ResumableTrainingSampler, SkippingLoader, SkipUnreadableMapper
from nasnet_det.detection.evaluation import NASNetCOCOEvaluator
from nasnet_det.detection.hooks import (
    DropPathSchedule,
    ExactResume,
    GatherRngStates,
    SkippedImagesMetric,
    WriteMetricsAtCheckpoints,
    train_loader_seed,
)
from nasnet_det.detection.precision import amp_dtype, build_step_trainer, resumable_step_state
from nasnet_det.detection.weights import load_pretrained_nasnet
from nasnet_det.engine.devices import describe_device
from nasnet_det.engine.scaling import SCHEDULE_FILE, DetectionSchedule, apply_detection_schedule, detection_schedule
from nasnet_det.models import NASNet
from nasnet_det.models.cell import leaves_input_unused
from nasnet_det.utils.errors import BadInputError
from nasnet_det.utils.io import atomic_write

logger = logging.getLogger(__name__)


def build_nasnet_detector(cfg: CfgNode) -> torch.nn.Module:
    """``build_model(cfg)`` plus the ImageNet NASNet weights of ``MODEL.NASNET.WEIGHTS`` (if set)."""
    model = build_model(cfg)
    if cfg.MODEL.NASNET.WEIGHTS:
        load_pretrained_nasnet(model, cfg.MODEL.NASNET.WEIGHTS, strict=True)
    return model


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


def effective_config(cfg: CfgNode, world_size: int, train_images: int = 0) -> tuple[CfgNode, DetectionSchedule]:
    """``cfg`` with the batch, LR, iteration counts and periods of a run on ``world_size`` processes (the rule of
    nasnet_det/engine/scaling.py: ``SOLVER.REFERENCE_WORLD_SIZE`` keeps the images per device, and what
    ``SOLVER.REFERENCE_IMS_PER_BATCH`` states follows the batch linearly; with the latter 0 this is detectron2's
    ``DefaultTrainer.auto_scale_workers``), and that schedule. ``train_images``: the training set's size (0 =
    unknown), for the epochs the schedule reports."""
    schedule = detection_schedule(cfg, world_size, train_images)
    return apply_detection_schedule(cfg, schedule), schedule


def schedule_record(schedule: DetectionSchedule) -> dict[str, Any]:
    """What a checkpoint records of the schedule its iterations count in (``batch`` in its trainer state)."""
    return {"ims_per_batch": schedule.ims_per_batch, "processes": schedule.processes, "max_iter": schedule.max_iter,
            "steps": list(schedule.steps), "lr": schedule.lr}


def written_record(cfg: CfgNode) -> dict[str, Any]:
    """The schedule ``cfg`` states, read as written (no process-count or reference rule applied)."""
    s = cfg.SOLVER
    return {"ims_per_batch": s.IMS_PER_BATCH, "max_iter": s.MAX_ITER, "steps": list(s.STEPS), "lr": float(s.BASE_LR)}


def _same(a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
    return abs(a[key] - b[key]) <= 1e-9 * max(abs(a[key]), abs(b[key])) if key == "lr" else a[key] == b[key]


def check_same_batch(saved: dict[str, Any] | None, schedule: DetectionSchedule, written: dict[str, Any]) -> None:
    """A checkpoint's iteration counts batches of the size it was trained with: resumed at another global batch
    (another number of processes with ``SOLVER.REFERENCE_WORLD_SIZE`` > 0), the rest of its LR schedule and data
    stream would run in other units. Raises :class:`BadInputError` saying how to resume.

    ``saved`` None: a checkpoint from before the batch was recorded, when a config's values were used as written;
    it resumes only if this run's effective schedule is ``written`` (``cfg``'s values as written), else the
    reference rules would change what its iterations mean. A recorded schedule whose iterations, LR steps or LR
    were edited (at the same batch) resumes with the new values, and the log says so."""
    now = schedule_record(schedule)
    if not saved:
        if all(_same(now, written, k) for k in written):
            return
        raise BadInputError(
            f"the checkpoint in OUTPUT_DIR records no batch or schedule (it predates SOLVER.REFERENCE_IMS_PER_BATCH,"
            f" when configs were run as written: {written['ims_per_batch']} images/iteration, {written['max_iter']} "
            f"iterations, LR {written['lr']:g}); this run would train {now['ims_per_batch']} images/iteration on "
            f"{schedule.processes} process(es), {now['max_iter']} iterations, LR {now['lr']:g}: to keep the old "
            f"meaning resume with SOLVER.REFERENCE_WORLD_SIZE 0 SOLVER.REFERENCE_IMS_PER_BATCH 0 "
            f"SOLVER.IMS_PER_BATCH {written['ims_per_batch']} (the batch it trained with), or rerun with "
            "--no-resume to start over")
    if saved["ims_per_batch"] != schedule.ims_per_batch:
        raise BadInputError(
            f"the checkpoint in OUTPUT_DIR was trained with {saved['ims_per_batch']} images per iteration on "
            f"{saved['processes']} process(es); this run has {schedule.ims_per_batch} on {schedule.processes} "
            "(SOLVER.IMS_PER_BATCH follows the process count when SOLVER.REFERENCE_WORLD_SIZE > 0), whose iterations "
            f"count other batches: resume on {saved['processes']} process(es), or keep its batch with "
            f"SOLVER.REFERENCE_WORLD_SIZE 0 SOLVER.IMS_PER_BATCH {saved['ims_per_batch']} (a multiple of the process "
            "count), or rerun with --no-resume to start over")
    changed = [f"{k} {saved[k]} -> {now[k]}" for k in ("max_iter", "steps", "lr") if k in saved and not
               _same(saved, now, k)]
    if changed:
        logger.warning("the checkpoint in OUTPUT_DIR was trained with another schedule at the same batch (%s): "
                       "continuing with this run's", ", ".join(changed))


class Trainer(TrainerBase):
    """``DefaultTrainer``'s workflow (build, ``resume_or_load``, ``train``, ``test``) from detectron2's public parts,
    with the hooks and writers built and held here: DefaultTrainer offers no way to pass DDP's arguments or to
    set its writers' period. Checkpoints keep DefaultTrainer's layout (``trainer`` -> ``_trainer``).

    ``cfg`` states the recipe; the trainer runs its effective values on this many processes
    (:func:`effective_config`), held in ``self.cfg`` and ``self.schedule``, which every hook, the sampler's
    resume position and the checkpoints use."""

    def __init__(self, cfg: CfgNode):
        super().__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # as DefaultTrainer: setup not called
            setup_logger()
        dataset = self.build_train_dataset(cfg)  # its size turns the iterations into epochs
        self.written_schedule = written_record(cfg)  # what an older, unrecorded checkpoint trained with
        cfg, self.schedule = effective_config(cfg, comm.get_world_size(), len(dataset))
        model = self.build_model(cfg)
        self.optimizer = build_optimizer(cfg, model)
        self.data_loader = self.build_train_loader(cfg, dataset)
        del dataset  # the loader holds its own serialized copy
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
        self.device = getattr(model, "device", torch.device(cfg.MODEL.DEVICE))
        if comm.is_main_process():
            logger.info("schedule: %s", self.schedule.describe())

    def write_schedule(self) -> dict[str, Any]:
        """``OUTPUT_DIR/schedule.json`` (:data:`SCHEDULE_FILE`): the effective schedule, the iteration training
        starts from, the training precision and the device. Written when training starts: after the resume check,
        so a refused resume leaves the last run's record."""
        record = {**self.schedule.as_dict(), "start_iter": self.start_iter,
                  "amp": str(amp_dtype(self.cfg) or torch.float32).removeprefix("torch."),
                  "device": describe_device(self.device)}
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        atomic_write(os.path.join(self.cfg.OUTPUT_DIR, SCHEDULE_FILE), json.dumps(record, indent=2) + "\n")
        return record

    def build_hooks(self) -> list[HookBase | None]:
        """DefaultTrainer's hooks (timer, LR schedule, PreciseBN, checkpointer, evaluation, writers) plus ours:
        the drop-path schedule first, the skip count, the metrics flush and the gathering of every rank's RNG state
        right before the checkpointer (they reach disk with the checkpoint of their step), the exact resume last."""
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

        exact_resume = ExactResume()
        return [
            DropPathSchedule() if cfg.MODEL.NASNET.DROP_PATH_KEEP_PROB < 1.0 else None,
            hooks.IterationTimer(),
            hooks.LRScheduler(self.optimizer, self.scheduler),
            precise_bn,  # before the checkpointer: it changes the weights the checkpoint saves
            SkippedImagesMetric(),
            WriteMetricsAtCheckpoints(cfg.SOLVER.CHECKPOINT_PERIOD, self.writers),
            # on every rank, collectively: the checkpointer (rank 0's) saves every rank's RNG state
            GatherRngStates(cfg.SOLVER.CHECKPOINT_PERIOD, exact_resume),
            hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD) if main else None,
            # after the checkpointer: if evaluation fails, the checkpoint is there to debug it
            hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results),
            hooks.PeriodicWriter(self.writers, period=self.writer_period) if main else None,  # evaluation included
            exact_resume,
        ]

    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from OUTPUT_DIR's last checkpoint (``resume`` and there is one), else load MODEL.WEIGHTS."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1  # the checkpoint holds the iteration that had just finished

    def train(self) -> OrderedDict | dict | None:
        """Train from ``start_iter``; returns the last evaluation when TEST.EXPECTED_RESULTS is set (verified)."""
        if comm.is_main_process():
            self.write_schedule()
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
        return {**super().state_dict(), "_trainer": self.step_trainer.state_dict(),
                "batch": schedule_record(self.schedule)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_same_batch(state_dict.get("batch"), self.schedule, self.written_schedule)
        super().load_state_dict(state_dict)
        self.step_trainer.load_state_dict(resumable_step_state(self.step_trainer, state_dict["_trainer"]))

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        model = build_nasnet_detector(cfg)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_train_dataset(cls, cfg: CfgNode) -> list[dict]:
        """DATASETS.TRAIN's records as the loader draws them (images without boxes dropped as configured)."""
        return get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=0, proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode, dataset: list[dict] | None = None):
        if dataset is None:
            dataset = cls.build_train_dataset(cfg)
        sampler = None
        if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
            sampler = ResumableTrainingSampler(len(dataset))
        # seed: the DataLoader draws its base seed from its own generator, not from the global RNG whose state
        # a resumed run restores (the draw happens lazily, at the first batch); one per rank, and ExactResume
        # reseeds it for the iteration a resumed run starts at (hooks.train_loader_seed).
        loader = SkippingLoader(build_detection_train_loader(cfg, mapper=SkipUnreadableMapper(DatasetMapper(cfg, True)),
                                                             dataset=dataset, sampler=sampler,
                                                             seed=train_loader_seed(cfg.SEED, comm.get_rank())),
                                "training")
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

