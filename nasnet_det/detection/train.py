"""``tools/train_net.py`` (= ``nasnet-det detect train``): detectron2's command line for training and evaluating
NASNet Faster R-CNN (:class:`nasnet_det.detection.trainer.Trainer`), on one or several processes.

Rerunning the same command into the same OUTPUT_DIR resumes (model, optimizer, scheduler, iteration, every
process's RNG state and the position in the data stream); a finished run is reported as done. ``--no-resume``
starts over, deleting the old checkpoints and metrics.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from nasnet_det.config import load_cfg
from nasnet_det.detection.checkpoint import FINAL_CHECKPOINT, NASNetDetectionCheckpointer
from nasnet_det.detection.config import get_nasnet_cfg, validate_input_sizes, validate_solver_values
from nasnet_det.detection.data import check_dataset_classes, register_builtin_datasets, register_datasets
from nasnet_det.detection.hooks import METRICS_FILE, ExactResume
from nasnet_det.detection.precision import validate_amp_precision
from nasnet_det.detection.trainer import (
    Trainer,
    build_nasnet_detector,
    check_same_batch,
    effective_config,
    written_record,
)
from nasnet_det.engine.checkpoint import LAST_CHECKPOINT, remove_files
from nasnet_det.engine.devices import require_cuda
from nasnet_det.engine.process import PARENT_PID_AT_IMPORT, die_with_parent
from nasnet_det.engine.scaling import SCHEDULE_FILE, detection_schedule
from nasnet_det.models.hub import check_named_weights, is_named_weights
from nasnet_det.utils.errors import BadInputError, check_output_dir, exit_2_on_bad_input
from nasnet_det.utils.io import disk_full_errors, full_disk_error, remove_stale_tmp
from nasnet_det.utils.logs import show_package_logs

# Trainer and its parts are imported from here by the tools and tests that predate nasnet_det.detection.trainer.
__all__ = ["SCHEDULE_FILE", "ExactResume", "Trainer", "argument_parser", "build_nasnet_detector", "effective_config",
           "check_resumable_schedule", "finalize_completed_run", "finish_completed_run", "prepare_devices",
           "remove_stale_outputs", "run", "setup", "start_over", "train_main", "unevaluated_datasets",
           "validate_detection_config"]
logger = logging.getLogger(__name__)


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
    if cfg.SOLVER.MAX_ITER < 1:
        raise BadInputError(f"SOLVER.MAX_ITER must be >= 1, got {cfg.SOLVER.MAX_ITER}")
    validate_solver_values(cfg)  # BASE_LR, MOMENTUM, WEIGHT_DECAY..., DATALOADER.NUM_WORKERS
    if cfg.SOLVER.CHECKPOINT_PERIOD < 1:
        raise BadInputError(f"SOLVER.CHECKPOINT_PERIOD must be >= 1, got {cfg.SOLVER.CHECKPOINT_PERIOD}")
    for key in ("REFERENCE_IMS_PER_BATCH", "REFERENCE_WORLD_SIZE"):
        if cfg.SOLVER[key] < 0:
            raise BadInputError(f"SOLVER.{key} must be >= 0 (0: as written), got {cfg.SOLVER[key]}")
    ref_world = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if ref_world > 0 and cfg.SOLVER.IMS_PER_BATCH % ref_world:
        raise BadInputError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} must be divisible by "
                            f"SOLVER.REFERENCE_WORLD_SIZE {ref_world} (it is the batch of that many processes)")
    # The batch the run will have (with REFERENCE_WORLD_SIZE > 0 it follows the process count and always divides).
    if detection_schedule(cfg, num_processes).ims_per_batch % num_processes:
        raise BadInputError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} must be divisible by the number of "
                            f"processes ({num_processes}) with SOLVER.REFERENCE_WORLD_SIZE 0")
    validate_amp_precision(cfg)
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
    if cfg.MODEL.DEVICE.startswith("cuda"):
        require_cuda("MODEL.DEVICE", cfg.MODEL.DEVICE)
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


def unevaluated_datasets(cfg: CfgNode) -> list[str]:
    """DATASETS.TEST whose final evaluation is missing: no ``coco_metrics.json``, or one older than
    ``model_final.pth`` (written by a periodic evaluation before it)."""
    final_time = os.path.getmtime(os.path.join(cfg.OUTPUT_DIR, FINAL_CHECKPOINT))

    def evaluated(name: str) -> bool:
        metrics = os.path.join(cfg.OUTPUT_DIR, "inference", name, "coco_metrics.json")
        return os.path.isfile(metrics) and os.path.getmtime(metrics) >= final_time

    return [n for n in cfg.DATASETS.TEST if not evaluated(n)]


def finalize_completed_run(cfg: CfgNode, trainer: Trainer) -> list[str]:
    """Every iteration is done: rank 0 writes ``model_final.pth`` if the interrupted run did not get to it and,
    once every rank has passed the barrier after that, alone decides from the files which DATASETS.TEST still
    need their final evaluation. Returns that list, the same on every rank: ranks reading the files themselves
    could find no ``model_final.pth`` yet, or disagree, and one would enter evaluation's collectives alone (a
    hang)."""
    if comm.is_main_process() and os.path.basename(trainer.checkpointer.loaded_path) != FINAL_CHECKPOINT:
        logger.info("all %d iterations are done but %s is missing: writing it", trainer.max_iter, FINAL_CHECKPOINT)
        trainer.checkpointer.save(FINAL_CHECKPOINT[: -len(".pth")], iteration=trainer.start_iter - 1)
    comm.synchronize()
    return comm.all_gather(unevaluated_datasets(cfg) if comm.is_main_process() else None)[0]


def finish_completed_run(cfg: CfgNode, trainer: Trainer):
    """A rerun of a finished command, or a kill after the last step: ``model_final.pth`` and the final evaluation
    are completed if the interrupted run did not get to them (:func:`finalize_completed_run`), then reported."""
    results = None
    unevaluated = finalize_completed_run(cfg, trainer)
    if unevaluated:
        logger.info("the final evaluation of %s is missing: evaluating %s", ", ".join(unevaluated), FINAL_CHECKPOINT)
        eval_cfg = cfg.clone()
        eval_cfg.defrost()
        eval_cfg.DATASETS.TEST = tuple(unevaluated)
        eval_cfg.freeze()
        results = Trainer.test(eval_cfg, trainer.model)
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
        die_with_parent(PARENT_PID_AT_IMPORT)
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


def check_resumable_schedule(cfg: CfgNode, processes: int) -> None:
    """The launcher's view of what :meth:`Trainer.load_state_dict` checks: OUTPUT_DIR's newest checkpoint was
    trained with the batch (and, for one without the record, the schedule) this run would have on ``processes``
    processes (:func:`nasnet_det.detection.trainer.check_same_batch`). Read on the CPU without building the model
    (memory-mapped: only the trainer state is read), so that the refusal is one line before any process starts. A
    checkpoint that cannot be read is left to the trainer, which names it and resumes from an earlier one."""
    candidates = NASNetDetectionCheckpointer(torch.nn.Module(), save_dir=cfg.OUTPUT_DIR).resume_candidates()
    if not candidates:
        return
    try:
        saved = torch.load(candidates[0], map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 (any damage: the trainer's resume reports it and falls back)
        return
    state = saved.get("trainer") if isinstance(saved, dict) else None
    if isinstance(state, dict) and "iteration" in state:
        check_same_batch(state.get("batch"), detection_schedule(cfg, processes), written_record(cfg))


def prepare_devices(args: argparse.Namespace) -> str:
    """Before detectron2's ``launch`` and any CUDA call: ``MODEL.DEVICE`` (config file + opts, as :func:`setup`
    reads them) decides what the processes may see. ``cpu``: the GPUs are hidden (``CUDA_VISIBLE_DEVICES=""``,
    inherited by the spawned processes; :func:`train_main` restores the variable when ``launch`` returns), else
    ``launch`` would start NCCL processes, one per GPU, and assert that there are ``--num-gpus`` of them; hidden,
    it starts gloo processes. With ``--num-gpus 1`` the run is in this process, where torch may have counted the
    GPUs before (the count is cached): then the variable hides nothing from it. ``cuda``: a usable GPU per
    process, or one line saying why not. The config's values and OUTPUT_DIR's checkpoint are checked here too
    (:func:`validate_detection_config`, :func:`check_resumable_schedule`), so that bad input is one line,
    not a traceback of each launched process. Returns MODEL.DEVICE."""
    cfg = load_cfg(get_nasnet_cfg(), args.config_file, args.opts)
    processes = max(1, args.num_gpus) * max(1, args.num_machines)
    device = cfg.MODEL.DEVICE
    if device == "cpu":
        # Set before torch first asks CUDA for its devices: the CUDA runtime reads the variable once per process.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device.startswith("cuda"):
        require_cuda("MODEL.DEVICE", device)
        if args.num_gpus > torch.cuda.device_count():
            raise BadInputError(f"--num-gpus {args.num_gpus} with MODEL.DEVICE {device}, but this machine has "
                                f"{torch.cuda.device_count()} usable GPU(s)")
        if device != "cuda" and args.num_gpus > 1:
            raise BadInputError(f"MODEL.DEVICE {device} pins every one of the --num-gpus {args.num_gpus} processes "
                                "to that GPU: use MODEL.DEVICE cuda (each process takes its own), or restrict the "
                                "GPUs with CUDA_VISIBLE_DEVICES")
    validate_detection_config(cfg, processes, eval_only=args.eval_only)
    if not args.eval_only and not getattr(args, "no_resume", False):
        check_resumable_schedule(cfg, processes)
    return device


@exit_2_on_bad_input
def train_main(argv: list[str] | None = None) -> int:
    """``tools/train_net.py``: parse detectron2-style arguments and launch (multi-GPU / multi-machine)."""
    args = argument_parser().parse_args(argv)
    if args.resume and args.no_resume:
        raise BadInputError("--resume and --no-resume contradict each other; give one")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        prepare_devices(args)
        launch(run, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    finally:  # the caller (a test, a notebook) keeps the GPUs it saw
        if visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible
    return 0
