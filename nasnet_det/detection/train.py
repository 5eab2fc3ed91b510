"""Training and evaluation of NASNet Faster R-CNN in detectron2's style (``DefaultTrainer``)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, HookBase, default_argument_parser, default_setup, launch
from detectron2.engine import defaults as d2_defaults
from detectron2.engine.hooks import PeriodicWriter
from detectron2.evaluation import verify_results
from detectron2.modeling import build_model
from detectron2.utils import comm

import nasnet_det.detection.backbone  # noqa: F401  (registers the backbones)
import nasnet_det.detection.heads  # noqa: F401  (registers NASNetROIHeads)
from nasnet_det.cli import exit_2_on_bad_input
from nasnet_det.detection.backbone import set_drop_path_progress
from nasnet_det.detection.checkpoint import NASNetDetectionCheckpointer
from nasnet_det.detection.config import get_nasnet_cfg, load_nasnet_cfg
from nasnet_det.detection.data import check_dataset_classes, register_builtin_datasets, register_datasets
from nasnet_det.detection.evaluation import NASNetCOCOEvaluator
from nasnet_det.detection.weights import load_pretrained_nasnet
from nasnet_det.genotypes import get_genotype
from nasnet_det.models.cell import leaves_input_unused
from nasnet_det.process import die_with_parent

logger = logging.getLogger(__name__)


def build_nasnet_detector(cfg: CfgNode) -> torch.nn.Module:
    """``build_model(cfg)`` plus the ImageNet NASNet weights of ``MODEL.NASNET.WEIGHTS`` (if set)."""
    model = build_model(cfg)
    if cfg.MODEL.NASNET.WEIGHTS:
        load_pretrained_nasnet(model, cfg.MODEL.NASNET.WEIGHTS, strict=True)
    return model


class DropPathSchedule(HookBase):
    """ScheduledDropPath: drop probability grows linearly with training progress (slim / TF detector)."""

    def before_step(self) -> None:
        progress = self.trainer.iter / max(1, self.trainer.max_iter)
        set_drop_path_progress(self.trainer.model, progress)


@contextlib.contextmanager
def _ddp_options(**kwargs: Any) -> Iterator[None]:
    """DefaultTrainer wraps the model with ``detectron2.engine.defaults.create_ddp_model`` and offers no
    hook for DDP's arguments: pass ``kwargs`` through it while the trainer is built."""
    if not kwargs:
        yield
        return
    original = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = functools.partial(original, **kwargs)
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    def __init__(self, cfg: CfgNode):
        # A searched cell that ignores one of its inputs leaves that input's preprocessing without gradient.
        ddp: dict[str, Any] = {}
        if comm.get_world_size() > 1:
            if leaves_input_unused(get_genotype(cfg.MODEL.NASNET.GENOTYPE)):
                ddp["find_unused_parameters"] = True
            if cfg.MODEL.DEVICE == "cpu":  # gloo processes: detectron2 would pass device_ids=[local rank]
                ddp["device_ids"] = None
        with _ddp_options(**ddp):
            super().__init__(cfg)
        # MODEL.WEIGHTS / --resume of another NASNet must fail, not train on a half-loaded network. The
        # PeriodicCheckpointer hook keeps the stock instance: saving is the same.
        self.checkpointer = NASNetDetectionCheckpointer(self.checkpointer.model, self.checkpointer.save_dir,
                                                        trainer=weakref.proxy(self))

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        model = build_nasnet_detector(cfg)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        os.makedirs(output_folder, exist_ok=True)
        return NASNetCOCOEvaluator(dataset_name, output_dir=output_folder,
                                   distributed=comm.get_world_size() > 1)

    def build_hooks(self):
        hooks = super().build_hooks()
        # detectron2 writes metrics every 20 iterations: a short run would leave one point of its loss curve.
        for h in hooks:
            if isinstance(h, PeriodicWriter):
                h._period = max(1, min(h._period, self.max_iter // 20))
        if self.cfg.MODEL.NASNET.DROP_PATH_KEEP_PROB < 1.0:
            hooks.insert(0, DropPathSchedule())
        return hooks


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` plus ``--dataset NAME=JSON:IMAGE_DIR``."""
    parser = default_argument_parser()
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=JSON:IMAGE_DIR",
                        help="register a COCO-format dataset (repeatable); use NAME in DATASETS.TRAIN/TEST")
    return parser


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from file + opts, datasets registered and checked, detectron2's default setup done."""
    cfg = get_nasnet_cfg()
    if not os.path.isfile(args.config_file):
        raise FileNotFoundError(f"--config-file {args.config_file!r} does not exist")
    load_nasnet_cfg(cfg, args.config_file, args.opts)
    cfg.DATASETS.COCO_FILES = list(cfg.DATASETS.COCO_FILES) + list(getattr(args, "dataset", []))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA device is available; "
                         "add 'MODEL.DEVICE cpu' to the command line")
    cfg.freeze()
    register_datasets(cfg.DATASETS.COCO_FILES)
    register_builtin_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    check_dataset_classes(cfg)
    default_setup(cfg, args)
    return cfg


def run(args: argparse.Namespace):
    """One process's work: train (with periodic evaluation) or, with ``--eval-only``, evaluate."""
    if comm.get_world_size() > 1:  # a process spawned by detectron2's launch: do not outlive the launcher
        die_with_parent()
    cfg = setup(args)
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
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


@exit_2_on_bad_input
def train_main(argv: list[str] | None = None) -> int:
    """``tools/train_net.py``: parse detectron2-style arguments and launch (multi-GPU / multi-machine)."""
    args = argument_parser().parse_args(argv)
    launch(run, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return 0
