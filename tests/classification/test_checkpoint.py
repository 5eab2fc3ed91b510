"""Crash safety of classification training: a damaged newest checkpoint falls back to an intact one, stale
temporary files go, rerunning a finished run adds no evaluation row, processes sharing a machine share its cores."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from helpers.train import tiny_cfg

from nasnet_det.classification import Trainer
from nasnet_det.classification.trainer import default_num_threads

OPTS = ("SOLVER.MAX_STEPS", 4, "TRAIN.CHECKPOINT_PERIOD", 1, "TRAIN.KEEP_CHECKPOINTS", 10, "SOLVER.EMA_DECAY", 0.9)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _eval_steps(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r["type"] == "eval"]


def test_damaged_newest_checkpoint_is_named_and_an_intact_one_resumed(tmp_path, caplog):
    Trainer(tiny_cfg(tmp_path / "a", *OPTS)).train()
    run = tmp_path / "b"
    assert Trainer(tiny_cfg(run, *OPTS)).train(interrupt_at_step=3) == {"interrupted_at_step": 3}
    damaged = run / "checkpoints" / "ckpt_00000003.pth"
    _truncate(damaged)  # e.g. a disk that filled up, or a copy cut short
    stale = [run / "checkpoints" / ".ckpt_00000004.pth.ab12cd34.tmp", run / ".last_checkpoint.ab12cd34.tmp"]
    for path in stale:  # what a kill during an atomic write leaves
        path.write_bytes(b"")
    with caplog.at_level(logging.INFO):
        trainer = Trainer(tiny_cfg(run, *OPTS))
        trainer.train()
    assert f"checkpoint {damaged} is not a readable PyTorch checkpoint" in caplog.text
    assert "ckpt_00000002.pth at step 2" in caplog.text
    assert not any(path.exists() for path in stale)
    # The run redid steps 3 and 4 and ends where an uninterrupted one does.
    a = torch.load(tmp_path / "a" / "checkpoints" / "ckpt_00000004.pth", weights_only=False)
    b = torch.load(run / "checkpoints" / "ckpt_00000004.pth", weights_only=False)
    for key in ("state_dict", "ema_state_dict"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    torch.load(damaged, weights_only=False)  # rewritten whole at step 3
    assert _eval_steps(run) == _eval_steps(tmp_path / "a") == [4]


def test_no_intact_checkpoint_is_one_clear_error_naming_the_files(tmp_path):
    Trainer(tiny_cfg(tmp_path, *OPTS)).train(interrupt_at_step=2)
    for path in (tmp_path / "checkpoints").glob("ckpt_*.pth"):
        _truncate(path)
    with pytest.raises(ValueError, match=r"no intact checkpoint to resume from: .*ckpt_00000002\.pth.*"
                                         r"ckpt_00000001\.pth are damaged"):
        Trainer(tiny_cfg(tmp_path, *OPTS)).train(resume=True)


def test_rerunning_a_finished_run_adds_no_evaluation_row(tmp_path):
    opts = ("SOLVER.MAX_STEPS", 3, "TRAIN.CHECKPOINT_PERIOD", 2, "TRAIN.EVAL_PERIOD", 2)
    first = Trainer(tiny_cfg(tmp_path, *opts)).train()
    log = (tmp_path / "metrics.jsonl").read_text()
    assert _eval_steps(tmp_path) == [2, 3]
    again = Trainer(tiny_cfg(tmp_path, *opts)).train()
    assert (tmp_path / "metrics.jsonl").read_text() == log
    assert again == first
    # A run resumed at its end from a checkpoint without an evaluation (here: MAX_STEPS lowered to the
    # checkpoint's step) evaluates once; a further rerun adds nothing.
    other = tmp_path / "other"
    Trainer(tiny_cfg(other, "SOLVER.MAX_STEPS", 4, "TRAIN.CHECKPOINT_PERIOD", 2)).train(interrupt_at_step=2)
    assert _eval_steps(other) == []
    for _ in range(2):
        Trainer(tiny_cfg(other, "SOLVER.MAX_STEPS", 2, "TRAIN.CHECKPOINT_PERIOD", 2)).train()
        assert _eval_steps(other) == [2]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_thread_count_shares_the_machine_and_can_be_set(tmp_path, monkeypatch, restore_threads):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun --nproc-per-node 2
    assert default_num_threads() == max(1, cores // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's blanket default does not win over the share
    assert default_num_threads() == max(1, cores // 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own choice does
    assert default_num_threads() == 3
    Trainer(tiny_cfg(tmp_path, "TRAIN.NUM_THREADS", 1))
    assert torch.get_num_threads() == 1


def test_truncated_weights_given_to_the_cli_are_one_clear_error(tmp_path, capsys):
    from pathlib import Path

    from nasnet_det.classification.cli import main

    Trainer(tiny_cfg(tmp_path / "run", "SOLVER.MAX_STEPS", 1)).train()
    torn = tmp_path / "torn.pth"
    torn.write_bytes((tmp_path / "run" / "model_final.pth").read_bytes()[:1000])
    config = str(Path(__file__).resolve().parents[2] / "configs/train/cifar10_smoke.yaml")
    for argv in (["--export-backbone", str(torn), str(tmp_path / "out.pth")],
                 ["--config-file", config, "--output-dir", str(tmp_path / "ft"), "DATA.SOURCE", "synthetic:48",
                  "DATA.VAL_SIZE", "16", "MODEL.NASNET.WEIGHTS", str(torn)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"error: checkpoint {torn} is not a readable PyTorch checkpoint" in err and "Traceback" not in err, err


def test_pruning_keeps_the_newest_checkpoints_and_never_the_just_written_one_away(tmp_path):
    run = tmp_path / "run"
    opts = ("SOLVER.MAX_STEPS", 4, "TRAIN.CHECKPOINT_PERIOD", 1)
    Trainer(tiny_cfg(run, *opts, "TRAIN.KEEP_CHECKPOINTS", 10)).train(interrupt_at_step=3)
    names = lambda: sorted(p.name for p in (run / "checkpoints").glob("ckpt_*.pth"))  # noqa: E731
    assert names() == ["ckpt_00000001.pth", "ckpt_00000002.pth", "ckpt_00000003.pth"]
    _truncate(run / "checkpoints" / "ckpt_00000003.pth")
    # Resumed from step 2 (the newest intact one) with fewer checkpoints to keep: the checkpoint of step 3 it
    # writes next must survive (the damaged file of step 3 is rewritten; a newer one would not count).
    trainer = Trainer(tiny_cfg(run, *opts, "SOLVER.MAX_STEPS", 6, "TRAIN.KEEP_CHECKPOINTS", 1))
    trainer.train(interrupt_at_step=3)
    assert names() == ["ckpt_00000003.pth"]
    assert trainer.last_checkpoint() == run / "checkpoints" / "ckpt_00000003.pth"
    torch.load(run / "checkpoints" / "ckpt_00000003.pth", weights_only=False)


def test_a_checkpoint_newer_than_the_resumed_one_does_not_push_out_the_new_ones(tmp_path):
    run = tmp_path / "run"
    opts = ("SOLVER.MAX_STEPS", 5, "TRAIN.CHECKPOINT_PERIOD", 2, "TRAIN.KEEP_CHECKPOINTS", 10)
    Trainer(tiny_cfg(run, *opts)).train(interrupt_at_step=4)
    _truncate(run / "checkpoints" / "ckpt_00000004.pth")  # resume falls back to step 2
    trainer = Trainer(tiny_cfg(run, "SOLVER.MAX_STEPS", 5, "TRAIN.CHECKPOINT_PERIOD", 1,
                               "TRAIN.KEEP_CHECKPOINTS", 1))
    trainer.train(interrupt_at_step=3)
    # The step-3 checkpoint just written is the one to resume from; the damaged step-4 file of the
    # abandoned run is neither counted nor trusted.
    assert (run / "checkpoints" / "ckpt_00000003.pth").is_file()
    assert not (run / "checkpoints" / "ckpt_00000002.pth").exists()
    resumed = Trainer(tiny_cfg(run, "SOLVER.MAX_STEPS", 5, "TRAIN.CHECKPOINT_PERIOD", 1,
                               "TRAIN.KEEP_CHECKPOINTS", 1))
    assert resumed.resume() == run / "checkpoints" / "ckpt_00000003.pth"
