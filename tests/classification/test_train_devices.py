"""TRAIN.DEVICE, said out loud: each process takes the GPU of its local rank, ``auto`` logs what it chose, and
``cuda`` without a usable GPU is one line naming the key and why (GPUs simulated: no GPU is needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from nasnet_det.classification.cli import main
from nasnet_det.engine import devices
from nasnet_det.engine.devices import cuda_unavailable_reason, resolve_device
from nasnet_det.engine.distributed import init_distributed, pick_device
from nasnet_det.utils.errors import BadInputError

REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Simulated GPU")


@pytest.mark.parametrize("requested", ["auto", "cuda"])
def test_more_local_processes_than_gpus_is_one_line_not_shared_gpus(two_gpus, monkeypatch, requested):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nproc-per-node 4 on a 2-GPU machine
    with pytest.raises(BadInputError, match=rf"^TRAIN.DEVICE {requested} with 4 training processes on this machine "
                                            r"but 2 usable GPU\(s\)"):
        pick_device(requested, 3)
    with pytest.raises(BadInputError, match=r"with 3 training processes on this machine but 2 usable GPU"):
        resolve_device(requested, "CHILD.DEVICE", 2, local_processes=1)  # a local rank past the GPUs
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert pick_device(requested, 1) == torch.device("cuda", 1)


def test_an_explicit_gpu_for_several_local_processes_is_refused(two_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(BadInputError, match=r"^TRAIN.DEVICE cuda:1 pins every one of the 2 training processes"):
        pick_device("cuda:1", 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert pick_device("cuda:1", 0) == torch.device("cuda", 1)


# ---- why CUDA is not usable: each branch of cuda_unavailable_reason ---------------------------------------------
@pytest.fixture
def cuda_13_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def _driver(monkeypatch, version: str) -> None:
    monkeypatch.setattr(devices, "nvidia_driver", lambda: version)


def test_a_cpu_only_torch_build_says_to_install_a_cuda_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    reason = cuda_unavailable_reason()
    assert "is a CPU-only build; install a CUDA build: TORCH_CUDA=cu128 FORCE=1 make setup" in reason


@pytest.mark.parametrize("driver,build", [("550.54.15", "cu128"), ("470.82", "cu126")])
def test_a_driver_too_old_for_the_build_suggests_a_build_that_fits(cuda_13_build, monkeypatch, driver, build):
    _driver(monkeypatch, driver)
    reason = cuda_unavailable_reason()
    assert f"built for CUDA 13.0, which needs an NVIDIA driver >= 580, but nvidia-smi reports driver {driver}" in reason
    assert reason.endswith(f"TORCH_CUDA={build} FORCE=1 make setup")


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_gpus_hidden_by_cuda_visible_devices_are_named(cuda_13_build, monkeypatch, hidden):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    _driver(monkeypatch, "580.65")
    assert cuda_unavailable_reason() == f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU from this process"


def test_no_driver_asks_whether_this_is_a_gpu_machine(cuda_13_build, monkeypatch):
    _driver(monkeypatch, "")
    assert "but no NVIDIA driver answers (nvidia-smi is missing or found no GPU)" in cuda_unavailable_reason()


def test_a_recent_driver_without_a_usable_gpu_points_at_the_gpus_state(cuda_13_build, monkeypatch):
    _driver(monkeypatch, "580.65")
    assert "finds no usable GPU although nvidia-smi reports driver 580.65" in cuda_unavailable_reason()
