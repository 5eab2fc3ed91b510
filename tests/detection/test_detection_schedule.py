"""Paper-scale Faster R-CNN is right by construction: the batch, LR and iteration counts follow the number of
processes (nasnet_det/engine/scaling.py), mixed precision picks bfloat16 where the GPU has it, and CPU processes
never see the GPUs. CUDA is simulated (torch.cuda queries monkeypatched); nothing here needs a GPU."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.utils import comm
from helpers.data import shapes_dataset
from test_detection_train import train_cfg

from nasnet_det.detection.config import get_nasnet_cfg
from nasnet_det.detection.data import register_coco_dataset
from nasnet_det.detection.precision import AutocastForward, amp_dtype, build_step_trainer
from nasnet_det.detection.train import SCHEDULE_FILE, Trainer, effective_config, train_main, validate_detection_config
from nasnet_det.detection.trainer import schedule_record, written_record
from nasnet_det.engine.scaling import DATASET_IMAGES, detection_schedule
from nasnet_det.pipeline.stages.base import trained_with
from nasnet_det.utils.errors import BadInputError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "detection"
LARGE = ["faster_rcnn_nasnet_a_large_c4_800.yaml", "faster_rcnn_nasnet_a_large_c4_1200.yaml",
         "faster_rcnn_nasnet_a_large_fpn_800.yaml"]
MOBILE = ["faster_rcnn_nasnet_a_mobile_c4_600.yaml", "faster_rcnn_nasnet_a_mobile_fpn_600.yaml"]
SMOKE = ["smoke-nasnet-c4.yaml", "smoke-nasnet-fpn.yaml"]
COCO = DATASET_IMAGES["coco_2017_train"]


def config(name: str) -> CfgNode:
    cfg = get_nasnet_cfg()
    cfg.merge_from_file(str(CONFIGS / name))
    return cfg


# ---- the schedule ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8, 16, 64])
def test_without_reference_ims_the_schedule_is_detectron2s_auto_scale_workers(world):
    cfg = config(MOBILE[0])
    cfg.SOLVER.REFERENCE_IMS_PER_BATCH = 0  # only detectron2's REFERENCE_WORLD_SIZE 8 rule
    cfg.freeze()
    ours, schedule = effective_config(cfg, world)
    theirs = DefaultTrainer.auto_scale_workers(cfg, world)
    assert ours.SOLVER == theirs.SOLVER and ours.TEST == theirs.TEST
    assert ours.is_frozen()
    assert schedule.ims_per_batch == 2 * world and schedule.ims_per_device == 2


@pytest.mark.parametrize("name", LARGE)
def test_large_configs_on_8_gpus_run_the_1x_recipe_at_8_images(name):
    cfg = config(name)
    validate_detection_config(cfg, 8)
    eff, schedule = effective_config(cfg, 8, COCO)
    s = eff.SOLVER
    assert (s.IMS_PER_BATCH, s.MAX_ITER, tuple(s.STEPS)) == (8, 180000, (120000, 160000))
    assert s.BASE_LR == pytest.approx(0.01)
    assert (s.WARMUP_ITERS, eff.TEST.EVAL_PERIOD) == (2000, 20000)
    assert schedule.epochs == pytest.approx(90000 * 16 / COCO)  # detectron2's 1x: ~12.3 COCO epochs
    # applied once: the trainer's effective config gives itself back
    assert effective_config(eff, 8, COCO)[0] == eff


@pytest.mark.parametrize("name", MOBILE)
def test_mobile_configs_see_the_same_epochs_at_the_same_lr_per_image_on_1_8_64_gpus(name):
    cfg = config(name)
    schedules = {world: effective_config(cfg, world, COCO)[1] for world in (1, 8, 64)}
    assert {w: s.ims_per_batch for w, s in schedules.items()} == {1: 2, 8: 16, 64: 128}  # 2 images per GPU
    assert {w: s.max_iter for w, s in schedules.items()} == {1: 720000, 8: 90000, 64: 11250}
    for s in schedules.values():
        validate_detection_config(cfg, s.processes)
        assert s.epochs == pytest.approx(90000 * 16 / COCO)
        assert s.lr_per_image == pytest.approx(0.02 / 16)
        assert s.steps == tuple(round(x * 16 / s.ims_per_batch) for x in (60000, 80000))


@pytest.mark.parametrize("name", SMOKE)
def test_smoke_configs_run_as_written_on_any_number_of_processes(name):
    cfg = config(name)
    for world in (1, 2, 4):
        eff, _ = effective_config(cfg, world)
        assert eff.SOLVER == cfg.SOLVER


@pytest.mark.parametrize("change,world,message", [
    ({"REFERENCE_IMS_PER_BATCH": -16}, 8, "SOLVER.REFERENCE_IMS_PER_BATCH must be >= 0"),
    ({"REFERENCE_WORLD_SIZE": -1}, 8, "SOLVER.REFERENCE_WORLD_SIZE must be >= 0"),
    ({"IMS_PER_BATCH": 12}, 4, "SOLVER.IMS_PER_BATCH 12 must be divisible by SOLVER.REFERENCE_WORLD_SIZE 8"),
    ({"REFERENCE_WORLD_SIZE": 0}, 3, r"SOLVER.IMS_PER_BATCH 16 must be divisible by the number of processes \(3\)"),
])
def test_bad_batch_settings_are_one_line_naming_the_key(change, world, message):
    cfg = config(MOBILE[0])
    for key, value in change.items():
        cfg.SOLVER[key] = value
    with pytest.raises(BadInputError, match=message):
        validate_detection_config(cfg, world)


def test_lr_steps_that_scale_onto_each_other_or_to_zero_are_one_line():
    cfg = config(MOBILE[0])  # STEPS (60000, 80000) for 16 images/iteration
    cfg.SOLVER.STEPS = (3, 4)
    cfg.SOLVER.MAX_ITER = 8
    with pytest.raises(BadInputError, match=r"^SOLVER.STEPS \(3, 4\) scale to \(0, 0\) at 128 images/iteration"):
        detection_schedule(cfg, 64)
    assert detection_schedule(cfg, 8).steps == (3, 4)
    cfg.SOLVER.IMS_PER_BATCH = 12  # not the batch of 8 devices
    with pytest.raises(BadInputError, match=r"^SOLVER.IMS_PER_BATCH 12 must be divisible by "
                                            r"SOLVER.REFERENCE_WORLD_SIZE 8"):
        detection_schedule(cfg, 1)


def test_a_real_run_trains_the_effective_schedule_and_writes_schedule_json(tmp_path):
    from detectron2.engine.hooks import PeriodicCheckpointer

    from nasnet_det.detection.hooks import GatherRngStates

    j, im = shapes_dataset(tmp_path / "data", n_images=3)
    register_coco_dataset("sched_shapes", j, im)
    cfg = train_cfg("c4", "sched_shapes", tmp_path / "out", iters=1)
    # the recipe states 1 iteration of 4 images at LR 0.01; 4 images are 2 processes' batch: one process
    # trains 2 iterations of 2 images at LR 0.005
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.REFERENCE_WORLD_SIZE, cfg.SOLVER.REFERENCE_IMS_PER_BATCH = 4, 2, 4
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.MODEL.NASNET.DROP_PATH_KEEP_PROB = 0.7
    trainer = Trainer(cfg)
    kinds = [type(h) for h in trainer.build_hooks() if h is not None]
    assert kinds.index(GatherRngStates) < kinds.index(PeriodicCheckpointer)  # every rank's RNG reaches the save
    trainer.train()
    assert trainer.max_iter == 2 and len(trainer.storage.history("total_loss").values()) == 2
    assert trainer.optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.005)
    # ScheduledDropPath follows the effective iterations: set before step 2 of 2 (of 1 written: progress 0)
    assert trainer.model.roi_heads.res5.nasnet.cell_2.drop_prob == pytest.approx(0.3 * (1 / 2))
    saved = sorted(p.name for p in (tmp_path / "out").glob("model_*.pth"))
    assert saved == ["model_0000001.pth", "model_final.pth"]  # CHECKPOINT_PERIOD 1 of 4 images -> 2 of 2
    record = json.loads((tmp_path / "out" / SCHEDULE_FILE).read_text())
    assert record["processes"] == 1 and record["ims_per_batch"] == 2 and record["ims_per_device"] == 2
    assert record["lr"] == pytest.approx(0.005) and record["base_lr"] == pytest.approx(0.01)
    assert record["max_iter"] == 2 and record["checkpoint_period"] == 2 and record["warmup_iters"] == 4
    assert record["train_images"] == 3 and record["epochs"] == pytest.approx(2 * 2 / 3)
    assert record["lr_per_image"] == pytest.approx(0.0025)
    assert record["amp"] == "float32" and record["start_iter"] == 0
    assert trained_with("detect", tmp_path / "out") == {"device": "cpu", "torch_cuda": torch.version.cuda or "cpu",
                                                         "global_batch": 2, "effective_lr": pytest.approx(0.005),
                                                         "amp": "float32"}
    assert record["device"]["device"] == "cpu" and record["device"]["torch"] == torch.__version__


def test_resuming_at_another_global_batch_is_refused_with_how_to_resume(tmp_path):
    j, im = shapes_dataset(tmp_path / "data", n_images=2)
    register_coco_dataset("sched_resume_shapes", j, im)
    cfg = train_cfg("c4", "sched_resume_shapes", tmp_path / "out", iters=1)
    Trainer(cfg).train()
    written = (tmp_path / "out" / SCHEDULE_FILE).read_text()
    cfg.SOLVER.IMS_PER_BATCH = 4  # e.g. the same REFERENCE_WORLD_SIZE config on twice the GPUs
    with pytest.raises(BadInputError, match=r"trained with 2 images per iteration on 1 process\(es\); this run has "
                                            r"4 on 1 .* SOLVER.REFERENCE_WORLD_SIZE 0 SOLVER.IMS_PER_BATCH 2"):
        Trainer(cfg).resume_or_load(resume=True)
    # the refused run trained nothing: schedule.json still says what the checkpoints were trained with
    assert (tmp_path / "out" / SCHEDULE_FILE).read_text() == written
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER = 2, 2
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    trainer.train()
    assert json.loads((tmp_path / "out" / SCHEDULE_FILE).read_text())["start_iter"] == 1


def bare_trainer(cfg: CfgNode, step_trainer=None, processes: int = 1) -> Trainer:
    """A Trainer holding only what ``load_state_dict`` reads (no model or data built): the schedule of ``cfg`` on
    ``processes`` processes, the schedule ``cfg`` states as written, and a step trainer."""
    trainer = Trainer.__new__(Trainer)
    TrainerBase.__init__(trainer)
    trainer.written_schedule = written_record(cfg)
    trainer.schedule = detection_schedule(cfg, processes)
    if step_trainer is None:
        model = torch.nn.Linear(2, 2)
        step_trainer = SimpleTrainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.step_trainer = step_trainer
    return trainer


def test_an_unrecorded_checkpoint_resumes_only_where_the_config_means_what_it_did(tmp_path):
    # An old 1-GPU mobile run trained the config as written, 16 images x 90k iterations at LR 0.02; the config now
    # means 2 images/iteration on 1 GPU (REFERENCE_WORLD_SIZE 8), 720k iterations, LR 0.0025.
    cfg = config(MOBILE[0])
    old = {"iteration": 99, "_trainer": bare_trainer(cfg).step_trainer.state_dict()}  # no "batch"
    with pytest.raises(BadInputError, match=r"records no batch or schedule .* 16 images/iteration, 90000 iterations, "
                                            r"LR 0.02\); this run would train 2 images/iteration on 1 process\(es\), "
                                            r"720000 iterations, LR 0.0025: to keep the old meaning resume with "
                                            r"SOLVER.REFERENCE_WORLD_SIZE 0 SOLVER.REFERENCE_IMS_PER_BATCH 0 "
                                            r"SOLVER.IMS_PER_BATCH 16 "):
        bare_trainer(cfg).load_state_dict(old)
    cfg.SOLVER.REFERENCE_WORLD_SIZE, cfg.SOLVER.REFERENCE_IMS_PER_BATCH = 0, 0  # the hint: the old meaning
    trainer = bare_trainer(cfg)
    trainer.load_state_dict(old)
    assert trainer.iter == 99
    # a recorded checkpoint records the schedule, so the same configuration resumes it
    cfg = config(MOBILE[0])
    saved = {"iteration": 5, "_trainer": old["_trainer"], "batch": schedule_record(detection_schedule(cfg, 1))}
    assert saved["batch"] == {"ims_per_batch": 2, "processes": 1, "max_iter": 720_000,
                              "steps": [480_000, 640_000], "lr": pytest.approx(0.0025)}
    bare_trainer(cfg).load_state_dict(saved)
    with pytest.raises(BadInputError, match=r"trained with 2 images per iteration on 1 process\(es\); this run has "
                                            r"16 on 8"):
        bare_trainer(cfg, processes=8).load_state_dict(saved)


@pytest.mark.parametrize("bf16_gpu", [True, False])
def test_a_float32_checkpoint_resumes_in_mixed_precision(monkeypatch, bf16_gpu, caplog):
    # float32 saves SimpleTrainer's state, without the grad_scaler AMPTrainer loads (bfloat16: a disabled scaler)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16_gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, for the gradient scaler
    cfg = config(SMOKE[0])
    float32 = {"iteration": 3, "_trainer": bare_trainer(cfg).step_trainer.state_dict(),
               "batch": schedule_record(detection_schedule(cfg, 1))}
    assert "grad_scaler" not in float32["_trainer"]
    model = torch.nn.Linear(2, 2)
    amp = build_step_trainer(amp_cfg("cuda"), model, [], torch.optim.SGD(model.parameters(), lr=0.1))
    trainer = bare_trainer(cfg, amp)
    with caplog.at_level(logging.WARNING):
        trainer.load_state_dict(float32)
    assert trainer.iter == 3 and amp.grad_scaler.is_enabled() == (not bf16_gpu)
    assert ("gradient-scaler state" in caplog.text) == (not bf16_gpu)  # only float16 has a scale to lose


def _loader_seed(loader) -> int:
    """The seed of the generator the training DataLoader draws its workers' base seed from."""
    inner = loader.loader  # SkippingLoader -> detectron2's aspect-ratio grouping -> torch's DataLoader
    while not isinstance(inner, torch.utils.data.DataLoader):
        inner = inner.dataset
    return inner.generator.initial_seed()


def test_each_rank_and_each_resume_point_seeds_its_loader_workers_apart(monkeypatch):
    # Workers seed their augmentation from the loader's generator (detectron2's worker_init_reset_seed): the same
    # seed on every rank made every rank's workers draw the same crops and flips.
    cfg = get_nasnet_cfg()
    cfg.SEED = 7
    dataset = [{"file_name": f"{i}.jpg", "height": 8, "width": 8, "image_id": i, "annotations": []}
               for i in range(4)]
    loaders = {}
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        loaders[rank] = Trainer.build_train_loader(cfg, dataset)
    assert _loader_seed(loaders[0]) == 7  # a fresh single-process run draws as before
    assert _loader_seed(loaders[1]) != 7
    # a resumed run (ExactResume.before_train) reseeds for the iteration it starts at: not a replay of the start
    from nasnet_det.detection.hooks import reseed_train_loader, train_loader_seed

    resumed = {train_loader_seed(7, rank, start) for rank in (0, 1) for start in (0, 100, 200)}
    assert len(resumed) == 6
    assert reseed_train_loader(loaders[0], train_loader_seed(7, 0, 100))
    assert _loader_seed(loaders[0]) == train_loader_seed(7, 0, 100) != 7
    assert train_loader_seed(-1, 1, 100) is None  # SEED < 0: detectron2's random seed


# ---- mixed precision -------------------------------------------------------------------------------------
def amp_cfg(device: str, precision: str = "auto", enabled: bool = True) -> CfgNode:
    cfg = get_nasnet_cfg()
    cfg.MODEL.DEVICE, cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.PRECISION = device, enabled, precision
    return cfg


@pytest.mark.parametrize("bf16_gpu,expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_precision_is_bfloat16_on_gpus_that_have_it_else_float16(monkeypatch, bf16_gpu, expected):
    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return bf16_gpu

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert amp_dtype(amp_cfg("cuda")) == expected
    assert asked == [False]  # an emulated bfloat16 (older GPUs) is slower than float16
    assert amp_dtype(amp_cfg("cuda", "float16")) == torch.float16
    assert amp_dtype(amp_cfg("cuda", "bfloat16")) == torch.bfloat16
    assert amp_dtype(amp_cfg("cpu")) == torch.bfloat16
    assert amp_dtype(amp_cfg("cuda", enabled=False)) is None


@pytest.mark.parametrize("bf16_gpu", [True, False])
def test_the_cuda_step_trainer_is_amptrainer_with_the_chosen_precision(monkeypatch, bf16_gpu):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16_gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, for the gradient scaler
    model = torch.nn.Linear(2, 2)
    step = build_step_trainer(amp_cfg("cuda"), model, [], torch.optim.SGD(model.parameters(), lr=0.1))
    assert type(step) is AMPTrainer
    assert step.precision == (torch.bfloat16 if bf16_gpu else torch.float16)
    assert step.grad_scaler.is_enabled() == (not bf16_gpu)  # float16 only needs loss scaling


def test_the_cpu_step_trainer_autocasts_to_bfloat16_and_float32_stays_plain():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = build_step_trainer(amp_cfg("cpu"), model, [], opt)
    assert type(step) is SimpleTrainer and isinstance(step.model, AutocastForward)
    assert step.model.dtype == torch.bfloat16
    plain = build_step_trainer(amp_cfg("cuda", enabled=False), model, [], opt)
    assert type(plain) is SimpleTrainer and plain.model is model


@pytest.mark.parametrize("precision,device,message", [
    ("fp8", "cuda", r"SOLVER.AMP.PRECISION must be one of auto, bfloat16, float16, got 'fp8'"),
    ("float16", "cpu", r"SOLVER.AMP.PRECISION float16 needs CUDA .* MODEL.DEVICE is 'cpu'"),
])
def test_bad_amp_precision_is_one_line(precision, device, message):
    with pytest.raises(BadInputError, match=message):
        validate_detection_config(amp_cfg(device, precision))


def test_paper_scale_configs_train_in_mixed_precision_and_smoke_configs_in_float32():
    for name in LARGE + MOBILE:
        assert config(name).SOLVER.AMP.ENABLED and config(name).SOLVER.AMP.PRECISION == "auto", name
    for name in SMOKE:
        assert not config(name).SOLVER.AMP.ENABLED, name


# ---- which processes see the GPUs ------------------------------------------------------------------------
class Stop(Exception):
    """Ends the launch at the process group's creation: what was asked for is recorded by then."""


@pytest.mark.parametrize("device,backend,visible", [("cpu", "GLOO", ""), ("cuda", "NCCL", "0,1")])
def test_cpu_processes_on_a_gpu_machine_see_no_gpu_and_use_gloo(monkeypatch, device, backend, visible):
    # A machine with 2 GPUs, as far as torch can tell, until CUDA_VISIBLE_DEVICES hides them.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")

    def gpus() -> int:
        return 0 if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else 2

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus() > 0)
    monkeypatch.setattr(torch.cuda, "device_count", gpus)
    seen = {}

    def start_processes(fn, args=(), nprocs=1, **kwargs):
        # What a spawned process inherits: this environment. Run detectron2's worker as process 0 would.
        seen["env"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen["nprocs"] = nprocs
        fn(0, *args)

    def init_process_group(backend, **kwargs):
        seen["backend"] = backend
        raise Stop

    monkeypatch.setattr(torch.multiprocessing, "start_processes", start_processes)
    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    with pytest.raises(Stop):
        train_main(["--config-file", str(CONFIGS / "smoke-nasnet-c4.yaml"), "--num-gpus", "2",
                    "MODEL.DEVICE", device])
    assert seen == {"env": visible, "nprocs": 2, "backend": backend}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"  # the caller (here: this test process) keeps its GPUs


def _no_launch(monkeypatch) -> list[int]:
    started: list[int] = []
    monkeypatch.setattr(torch.multiprocessing, "start_processes",
                        lambda fn, args=(), nprocs=1, **kwargs: started.append(nprocs))
    return started


def test_bad_config_for_several_processes_is_one_line_before_any_process_starts(monkeypatch, capsys):
    started = _no_launch(monkeypatch)
    argv = ["--config-file", str(CONFIGS / "smoke-nasnet-c4.yaml"), "--num-gpus", "2", "MODEL.DEVICE", "cpu",
            "SOLVER.IMS_PER_BATCH", "3"]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: SOLVER.IMS_PER_BATCH 3 must be divisible by the number of processes (2) with "
                   "SOLVER.REFERENCE_WORLD_SIZE 0"]
    assert started == []


def test_a_checkpoint_of_another_batch_is_refused_before_any_process_starts(monkeypatch, capsys, tmp_path):
    # a 1-process run's checkpoint (2 images per iteration); 2 processes with REFERENCE_WORLD_SIZE 1 would take 4
    cfg = config(SMOKE[0])
    torch.save({"model": {}, "trainer": {"iteration": 3, "batch": schedule_record(detection_schedule(cfg, 1))}},
               tmp_path / "model_0000003.pth")
    started = _no_launch(monkeypatch)
    argv = ["--config-file", str(CONFIGS / SMOKE[0]), "--num-gpus", "2", "MODEL.DEVICE", "cpu",
            "OUTPUT_DIR", str(tmp_path), "SOLVER.REFERENCE_WORLD_SIZE", "1"]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: the checkpoint in OUTPUT_DIR was trained with "
                                               f"{cfg.SOLVER.IMS_PER_BATCH} images per iteration on 1 process(es)")
    assert started == []
    assert train_main(["--no-resume", *argv]) == 0 and started == [2]  # starting over is not refused


def test_cuda_without_a_usable_gpu_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_main(["--config-file", str(CONFIGS / "smoke-nasnet-c4.yaml"), "MODEL.DEVICE", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: MODEL.DEVICE is 'cuda' but CUDA is not usable here: ")
    assert "or set MODEL.DEVICE cpu" in err[0]


def test_more_processes_than_gpus_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    argv = ["--config-file", str(CONFIGS / "smoke-nasnet-c4.yaml"), "--num-gpus", "4", "MODEL.DEVICE", "cuda"]
    assert train_main(argv) == 2
    assert "error: --num-gpus 4 with MODEL.DEVICE cuda, but this machine has 2 usable GPU(s)" in capsys.readouterr().err
