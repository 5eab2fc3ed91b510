"""Fault suite: kill -9 each long job at several points, rerun the same command, and check that nothing
finished was lost or repeated and that the result equals an uninterrupted run.

Each job runs in a subprocess under a small driver that SIGKILLs itself at a chosen point:
``backward:N`` (in the N-th backward pass, i.e. mid-step), ``save:N`` (half-way through writing the N-th
``torch.save``: a torn checkpoint write) or ``replace:N`` (right after the N-th ``.pth`` file is renamed into
place, before anything else is recorded). Configs are tiny so the suite stays within the CI budget.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.data import shapes_dataset
from helpers.jobs import ENTRY_CODE, Jobs

REPO = Path(__file__).resolve().parents[2]

# Sets up the fault of $FAULT (each driver below ends by calling the entry: helpers.jobs.ENTRY_CODE).
FAULTS = r"""
import io, os, signal, sys
import torch

mode, _, n = os.environ.get("FAULT", "none:0").partition(":")
n, count = int(n or 0), [0]

def die():
    sys.stdout.flush(); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "save":  # a torn write: half the bytes of the N-th torch.save reach the file, then the kill
    real_save = torch.save
    def save(obj, f, *a, **k):
        count[0] += 1
        if count[0] == n:
            buf = io.BytesIO(); real_save(obj, buf, *a, **k); data = buf.getvalue()[: len(buf.getvalue()) // 2]
            if hasattr(f, "write"):
                f.write(data); f.flush()
            else:
                open(f, "wb").write(data)
            die()
        return real_save(obj, f, *a, **k)
    torch.save = save
elif mode == "replace":  # right after the N-th .pth is renamed into place
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        real_replace(src, dst, *a, **k)
        if str(dst).endswith(".pth"):
            count[0] += 1
            if count[0] == n:
                die()
    os.replace = replace
elif mode == "backward":  # mid-step
    real_backward = torch.Tensor.backward
    def backward(self, *a, **k):
        count[0] += 1
        if count[0] == n:
            die()
        return real_backward(self, *a, **k)
    torch.Tensor.backward = backward
"""
DRIVER = FAULTS + ENTRY_CODE


# a job server per tool, shared by this module's tests (helpers.jobs: ~4 s of imports paid once, not per job;
# conftest.py closes it after them)
JOBS = Jobs({"OMP_NUM_THREADS": "1"})


def run_job(entry: str, argv: list[str], fault: str = "none:0", timeout: int = 300,
            driver: str = DRIVER) -> subprocess.CompletedProcess:
    """``entry`` (``module:function``) with ``argv`` as its own process under ``driver``, which kills it at
    ``fault``."""
    return JOBS.run(entry, argv, code=driver, env={"FAULT": fault}, timeout=timeout)


def run_with_faults(entry: str, argv: list[str], faults: list[str]) -> None:
    """Run ``argv`` once per fault (each must die by SIGKILL), then once to completion."""
    for fault in faults:
        proc = run_job(entry, argv, fault)
        assert proc.returncode == -signal.SIGKILL, (f"{fault}: expected a kill, got exit {proc.returncode}\n"
                                                    f"{proc.stderr[-3000:]}")
    proc = run_job(entry, argv)
    assert proc.returncode == 0, proc.stderr[-3000:]


def no_tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tmp")]


def assert_same_state_dicts(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs from the uninterrupted run"


# ---- detection ---------------------------------------------------------------------------------------------
def detection_argv(data: Path, out: Path) -> list[str]:
    j, im = shapes_dataset(data, n_images=2, categories=((1, "red"), (2, "blue")), boxes_per_image=1)
    return ["--config-file", str(REPO / "configs" / "detection" / "smoke-nasnet-c4.yaml"), "--dataset",
            f"shapes={j}:{im}", "DATASETS.COCO_FILES", "[]", "DATASETS.TRAIN", "('shapes',)", "DATASETS.TEST", "()",
            "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.NASNET.FILTERS", "4", "MODEL.NASNET.STEM_FILTERS", "8",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "SOLVER.IMS_PER_BATCH", "1",
            "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
            "SOLVER.BASE_LR", "0.01", "OUTPUT_DIR", str(out)]


@pytest.mark.slow  # a kill -9 drill
def test_detection_training_survives_kill_9_anywhere(tmp_path):
    entry = "nasnet_det.detection.train:train_main"
    reference = tmp_path / "reference"
    proc = run_job(entry, detection_argv(tmp_path / "data", reference))
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "faulty"
    argv = detection_argv(tmp_path / "data", out)
    # mid-iteration 2 (after model_0000001) / torn write of model_0000003 / killed right after model_0000003's
    # rename but before last_checkpoint names it / torn model_final.pth (after model_0000005) / then to the end.
    faults = ["backward:3", "save:1", "replace:1", "save:2"]
    for fault in faults:
        proc = run_job(entry, argv, fault)
        assert proc.returncode == -signal.SIGKILL, f"{fault}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        assert not (out / "model_final.pth").exists() or fault != "save:2"
    assert no_tmp_files(out), "the torn writes should have left temporaries behind for the next start to clean"
    proc = run_job(entry, argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not no_tmp_files(out), no_tmp_files(out)
    # nothing finished was lost: every periodic checkpoint, the final one, and the tag
    assert {p.name for p in out.glob("model_*.pth")} == {"model_0000001.pth", "model_0000003.pth",
                                                         "model_0000005.pth", "model_final.pth"}
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    # the result equals the uninterrupted run's: weights, optimizer state, schedule, iteration
    a = torch.load(reference / "model_final.pth", map_location="cpu", weights_only=False)
    b = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert a["iteration"] == b["iteration"] == 5
    assert_same_state_dicts(a["model"], b["model"], "detector weights")
    opt_a, opt_b = a["trainer"]["_trainer"]["optimizer"], b["trainer"]["_trainer"]["optimizer"]
    for pid, state in opt_a["state"].items():
        assert torch.equal(state["momentum_buffer"], opt_b["state"][pid]["momentum_buffer"])
    # nothing repeated: one metrics row per logged iteration, as in the uninterrupted run
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (reference / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [r["iteration"] for r in ref_rows]
    for row, ref in zip(rows, ref_rows):  # smoothed losses too: the resumed run restores their history
        for key in ("total_loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "lr"):
            assert row.get(key) == pytest.approx(ref.get(key), rel=1e-6), (key, row["iteration"])

    # a damaged model_final.pth (a disk problem) is named; the rerun falls back to model_0000005.pth, writes
    # model_final.pth again and reports the run as finished without training
    final = (out / "model_final.pth").read_bytes()
    (out / "model_final.pth").write_bytes(final[: len(final) // 3])
    proc = run_job(entry, argv)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "model_final.pth is not a readable PyTorch checkpoint" in log and "model_0000005.pth" in log
    assert "holds a finished run" in proc.stdout and "Starting training" not in log
    c = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert_same_state_dicts(a["model"], c["model"], "rewritten model_final.pth")

    # --no-resume starts over from iteration 0 and first removes the old run's checkpoints
    proc = run_job(entry, ["--no-resume", *argv], "backward:1")
    assert proc.returncode == -signal.SIGKILL
    assert "Starting training from iteration 0" in proc.stdout + proc.stderr
    assert not list(out.glob("model_*.pth")) and not (out / "last_checkpoint").exists()


# ---- CIFAR training and ImageNet pretraining ---------------------------------------------------------------
CLASSIFY = "nasnet_det.classification.cli:main"
CIFAR_TINY = ["MODEL.NASNET.NUM_CELLS", "1", "MODEL.NASNET.FILTERS", "4", "DATA.SOURCE", "synthetic:48",
              "DATA.VAL_SIZE", "16", "DATA.NUM_WORKERS", "0", "SOLVER.MAX_STEPS", "6", "SOLVER.BATCH_SIZE", "8",
              "TRAIN.DEVICE", "cpu", "TRAIN.CHECKPOINT_PERIOD", "2", "TRAIN.EVAL_PERIOD", "2", "TRAIN.LOG_PERIOD", "1",
              "TRAIN.EVAL_BATCH_SIZE", "16"]
IMAGENET_TINY = ["MODEL.NASNET.NUM_CELLS", "1", "MODEL.NASNET.FILTERS", "4", "DATA.FAKE_CLASSES", "2",
                 "DATA.FAKE_TRAIN_PER_CLASS", "8", "DATA.FAKE_VAL_PER_CLASS", "2", "DATA.IMAGE_SIZE", "32",
                 "DATA.NUM_WORKERS", "0", "SOLVER.MAX_STEPS", "6", "SOLVER.BATCH_SIZE", "4", "TRAIN.DEVICE", "cpu",
                 "TRAIN.CHECKPOINT_PERIOD", "2", "TRAIN.EVAL_PERIOD", "3", "TRAIN.LOG_PERIOD", "1",
                 "TRAIN.EVAL_BATCH_SIZE", "4"]


def _steps(out: Path) -> list[tuple[str, int]]:
    return [(r["type"], r["step"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow  # a kill -9 drill
@pytest.mark.parametrize("job", ["cifar10", "imagenet"])
def test_classification_training_survives_kill_9_anywhere(tmp_path, job):
    config = REPO / "configs" / "train" / ("cifar10_smoke.yaml" if job == "cifar10" else "imagenet_smoke.yaml")
    tiny = CIFAR_TINY if job == "cifar10" else IMAGENET_TINY + ["DATA.DATASET", "imagenet"]
    reference, out = tmp_path / "reference", tmp_path / "faulty"
    proc = run_job(CLASSIFY, ["--config-file", str(config), "--output-dir", str(reference), *tiny])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # CIFAR: mid-step 3 / torn checkpoint write / right after a checkpoint's rename. ImageNet: killed while
    # generating the smoke ImageFolder (the rerun must not see a partial folder) / torn write of the 2nd save.
    faults = ["backward:3", "save:1", "replace:2"] if job == "cifar10" else ["generate:0", "save:2"]
    argv = ["--config-file", str(config), "--output-dir", str(out), *tiny]
    for fault in faults:
        if fault == "generate:0":
            proc = _kill_while_generating(argv)
        else:
            proc = run_job(CLASSIFY, argv, fault)
        assert proc.returncode == -signal.SIGKILL, f"{fault}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    proc = run_job(CLASSIFY, argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(reference / "model_final.pth", map_location="cpu", weights_only=False)
    b = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert a["step"] == b["step"] == 6
    assert_same_state_dicts(a["state_dict"], b["state_dict"], f"{job} weights")
    assert _steps(out) == _steps(reference)  # nothing lost, nothing repeated
    ref_rows = (reference / "metrics.jsonl").read_text().splitlines()
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["top1"] == json.loads(ref_rows[-1])["top1"]
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("ckpt_*.pth"))
    assert ckpts == sorted(p.name for p in (reference / "checkpoints").glob("ckpt_*.pth"))


def _kill_while_generating(argv: list[str]) -> subprocess.CompletedProcess:
    """Runs the ImageNet job with a SIGKILL after the 5th JPEG of the generated smoke folder."""
    driver = FAULTS + '''
from PIL import Image
real_img_save, saved = Image.Image.save, [0]
def img_save(self, *a, **k):
    saved[0] += 1
    if saved[0] == 5:
        die()
    return real_img_save(self, *a, **k)
Image.Image.save = img_save
''' + ENTRY_CODE
    out = Path(argv[argv.index("--output-dir") + 1])
    proc = run_job(CLASSIFY, argv, driver=driver)
    assert not (out / "fake_imagenet").exists(), "a partial smoke folder was left under its final name"
    return proc


# ---- the search ----------------------------------------------------------------------------------------------
SEARCH_TINY = ["--no-progress", "--config-file", str(REPO / "configs" / "search" / "smoke.yaml"),
               "SEARCH.STRATEGY", "ppo", "SEARCH.BUDGET", "6", "SEARCH.BATCH_SIZE", "2", "WORKERS.BACKEND", "inline",
               "DATA.SOURCE", "synthetic:96", "DATA.VAL_SIZE", "32", "DATA.TRAIN_LIMIT", "64", "CHILD.MAX_STEPS", "2",
               "CHILD.BATCH_SIZE", "16", "CHILD.IMAGE_SIZE", "16"]


def _journal(out: Path) -> list[tuple]:
    db = sqlite3.connect(out / "journal.sqlite")
    try:
        cols = [r[1] for r in db.execute("PRAGMA table_info(evaluations)")]
        keep = [c for c in ("strategy", "batch", "genotype", "status", "reward") if c in cols]
        return db.execute(f"SELECT {', '.join(keep)} FROM evaluations ORDER BY id").fetchall()
    finally:
        db.close()


@pytest.mark.slow  # a kill -9 drill
def test_search_survives_kill_9_anywhere(tmp_path):
    from search.session import JOURNAL_NAME

    entry = "search.cli:main"
    reference, out = tmp_path / "reference", tmp_path / "faulty"
    proc = run_job(entry, [*SEARCH_TINY, "OUTPUT_DIR", str(reference)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # mid-child of batch 1 / torn controller checkpoint after a batch / right after the next one's rename
    run_with_faults(entry, [*SEARCH_TINY, "OUTPUT_DIR", str(out)], ["backward:3", "save:1", "replace:1"])
    assert JOURNAL_NAME == "journal.sqlite"
    a, b = _journal(reference), _journal(out)
    assert len(a) == len(b) == 6
    assert b == a  # the same children, the same rewards, none lost or evaluated twice
    assert json.loads((out / "best_genotype.json").read_text()) == json.loads(
        (reference / "best_genotype.json").read_text())
    assert not no_tmp_files(out), no_tmp_files(out)


# ---- the shared helpers --------------------------------------------------------------------------------------
def test_stale_temporaries_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    from nasnet_det.utils.io import remove_stale_tmp, tmp_path_for

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    names = [f".model_0000003.pth.{dead.stdout.strip()}-abcd1234.tmp",  # a killed writer's
             ".ckpt.pth.x1y2z3w4.tmp",  # an earlier version's (no pid)
             ".notes.bak.tmp", "results.tmp", "model_0000001.pth"]  # not ours
    for name in names:
        (tmp_path / name).write_bytes(b"")
    live = tmp_path_for(tmp_path / "model_final.pth")  # this process is writing it right now
    removed = remove_stale_tmp(tmp_path)
    assert sorted(p.name for p in removed) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:] + [live.name])


def test_atomic_writes_keep_the_old_file_when_the_writer_fails(tmp_path):
    from nasnet_det.utils.io import atomic_directory, atomic_open, atomic_torch_save, load_torch_file

    target = tmp_path / "ckpt.pth"
    atomic_torch_save({"w": torch.ones(3)}, target)
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as f:
            f.write(b"half a checkpoint")
            raise RuntimeError("killed")
    assert torch.equal(load_torch_file(target)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
    folder = tmp_path / "generated"
    with pytest.raises(RuntimeError):
        with atomic_directory(folder) as tmp:
            (tmp / "part").write_text("1")
            raise RuntimeError("killed")
    assert not folder.exists() and [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
    target.write_bytes(target.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"ckpt.pth is not a readable PyTorch checkpoint"):
        load_torch_file(target)


@pytest.mark.parametrize("writer", ["genotype", "search_json"])
def test_files_later_runs_read_are_replaced_atomically(tmp_path, monkeypatch, writer):
    # Genotype.save (best_genotype.json, the pipeline's genotype.json) and the search's summary/top_k JSON
    # were written in place: a kill mid-write left a torn file for the next stage to read.
    from helpers.genotypes import random_genotype

    from search.outputs import write_json_atomic

    target = tmp_path / "out.json"
    write = {"genotype": lambda: random_genotype(0).save(target),
             "search_json": lambda: write_json_atomic(target, {"best": 1})}[writer]
    write()
    before = target.read_text()

    def killed(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(OSError, match="killed"):
        write()
    assert target.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_writes_give_the_permissions_of_a_plain_write(tmp_path):
    # mkstemp/mkdtemp make 0600/0700 entries: checkpoints and data folders came out unreadable to the group.
    from nasnet_det.utils.io import atomic_directory, atomic_torch_save

    (tmp_path / "plain").write_bytes(b"")
    (tmp_path / "plain_dir").mkdir()
    atomic_torch_save({"w": torch.ones(1)}, tmp_path / "ckpt.pth")
    with atomic_directory(tmp_path / "generated") as tmp:
        (tmp / "x").write_text("1")
    assert (tmp_path / "ckpt.pth").stat().st_mode == (tmp_path / "plain").stat().st_mode
    assert (tmp_path / "generated").stat().st_mode == (tmp_path / "plain_dir").stat().st_mode


def test_detection_start_removes_dead_temporaries_of_the_evaluation_too(tmp_path):
    # coco_metrics.json is written atomically in inference/<dataset>/; a kill there left its temporary forever.
    from detectron2.config import CfgNode

    from nasnet_det.detection.train import remove_stale_outputs
    from nasnet_det.utils.io import tmp_path_for

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = dead.stdout.strip()
    evaluation = tmp_path / "inference" / "coco_val"
    evaluation.mkdir(parents=True)
    stale = [tmp_path / f".model_0000001.pth.{pid}-abcd1234.tmp", evaluation / f".coco_metrics.json.{pid}-abcd1234.tmp"]
    for p in stale:
        p.write_bytes(b"")
    live = tmp_path_for(evaluation / "coco_metrics.json")
    (evaluation / "coco_metrics.json").write_text("{}")
    removed = remove_stale_outputs(CfgNode({"OUTPUT_DIR": str(tmp_path)}))
    assert sorted(removed) == sorted(map(str, stale))
    assert sorted(p.name for p in evaluation.iterdir()) == sorted(["coco_metrics.json", live.name])


def test_detection_resume_keeps_counting_skipped_images(tmp_path):
    # data/skipped_images restarted from 0 after a resume: the images the killed run had skipped were lost.
    from types import SimpleNamespace

    from detectron2.config import CfgNode
    from detectron2.utils.events import EventStorage

    from nasnet_det.detection.data import SkippingLoader
    from nasnet_det.detection.train import ExactResume

    def trainer_with(loader, start_iter):
        cfg = CfgNode({"OUTPUT_DIR": str(tmp_path), "SOLVER": {"IMS_PER_BATCH": 1}})
        return SimpleNamespace(data_loader=loader, start_iter=start_iter, cfg=cfg,
                               storage=EventStorage(start_iter))

    killed = SkippingLoader([], "training")
    killed.skipped += ["a.jpg", "b.jpg"]
    hook = ExactResume()
    hook.trainer = trainer_with(killed, 4)
    state = hook.state_dict()

    resumed = SkippingLoader([], "training")
    hook = ExactResume()
    hook.trainer = trainer_with(resumed, 5)
    hook.load_state_dict(state)
    hook.before_train()
    assert resumed.skipped == ["a.jpg", "b.jpg"]
