"""TRAIN.DEVICE, said out loud: each process takes the GPU of its local rank, ``auto`` logs what it chose, and
``cuda`` without a usable GPU is one line naming the key and why (GPUs simulated: no GPU is needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from nasnet_det.classification.cli import main
from nasnet_det.engine.distributed import init_distributed, pick_device
from nasnet_det.utils.errors import BadInputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def single_process(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def eight_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Simulated GPU")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_each_local_rank_takes_its_gpu_and_auto_says_which(eight_gpus, caplog):
    assert pick_device("cuda", 3) == torch.device("cuda", 3)
    assert pick_device("cpu", 3) == torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="nasnet_det.engine.devices"):
        assert pick_device("auto", 3) == torch.device("cuda", 3)
    assert "TRAIN.DEVICE auto: using cuda:3 (Simulated GPU)" in caplog.text


def test_auto_without_a_gpu_trains_on_the_cpu_and_says_why(no_gpu, single_process, caplog):
    with caplog.at_level(logging.INFO, logger="nasnet_det.engine.devices"):
        assert init_distributed("auto").device == torch.device("cpu")
    assert "TRAIN.DEVICE auto: no usable GPU, training on the CPU (" in caplog.text


def test_cuda_without_a_gpu_is_one_line_naming_the_key_and_the_reason(no_gpu, single_process):
    with pytest.raises(BadInputError, match=r"^TRAIN.DEVICE is 'cuda' but CUDA is not usable here: .*torch") as e:
        init_distributed("cuda")
    assert "\n" not in str(e.value) and "set TRAIN.DEVICE cpu" in str(e.value)


def test_cli_with_cuda_and_no_gpu_prints_one_error_line_and_exits_2(no_gpu, single_process, tmp_path, capsys):
    argv = ["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "--output-dir", str(tmp_path),
            "TRAIN.DEVICE", "cuda"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TRAIN.DEVICE is 'cuda' but CUDA is not usable here: ")
    assert err.count("\n") == 1 and "Traceback" not in err
