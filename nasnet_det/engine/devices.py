"""Which device a process trains on, said out loud.

``auto`` takes CUDA when it works and says which it chose; ``cuda`` (or a stage expecting GPUs) without a
usable GPU is one line saying why -- the CUDA version torch was built for, the driver ``nvidia-smi`` reports,
and what to install -- never a silent CPU run. The pinned torch wheel is a CUDA 13 build, which needs an NVIDIA
driver >= 580: on an older driver ``torch.cuda.is_available()`` is False although ``nvidia-smi`` shows GPUs.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from functools import lru_cache

import torch

from nasnet_det.utils.errors import BadInputError

logger = logging.getLogger(__name__)

# Oldest NVIDIA Linux driver of each CUDA major version (NVIDIA's CUDA toolkit release notes, table 3:
# "CUDA Toolkit and Minimum Required Driver Version for CUDA Minor Version Compatibility").
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
# What setup can install instead (scripts/setup_env.sh TORCH_CUDA=...): the build, the driver it needs.
TORCH_BUILDS = {"cu126": 525, "cu128": 525, "cu130": 580, "cpu": 0}


@lru_cache(maxsize=1)
def nvidia_driver() -> str:
    """The driver version ``nvidia-smi`` reports ("" when there is no nvidia-smi or it fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    return lines[0] if out.returncode == 0 and lines else ""


def cuda_unavailable_reason() -> str:
    """Why ``torch.cuda.is_available()`` is False here, and what to do, in one sentence or two."""
    built = torch.version.cuda
    if not built:
        return (f"torch {torch.__version__} is a CPU-only build; install a CUDA build: "
                "TORCH_CUDA=cu128 FORCE=1 make setup (or cu126 / cu130)")
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU from this process"
    driver = nvidia_driver()
    major = int(built.split(".")[0])
    need = MIN_DRIVER.get(major)
    if not driver:
        return (f"torch {torch.__version__} is built for CUDA {built}, but no NVIDIA driver answers (nvidia-smi "
                "is missing or found no GPU): is this a GPU machine, with the driver installed?")
    try:
        driver_major = int(driver.split(".")[0])
    except ValueError:
        driver_major = 0
    if need and driver_major and driver_major < need:
        fits = [b for b, d in TORCH_BUILDS.items() if b != "cpu" and d <= driver_major]
        return (f"torch {torch.__version__} is built for CUDA {built}, which needs an NVIDIA driver >= {need}, "
                f"but nvidia-smi reports driver {driver}: update the driver, or install a build for it: "
                f"TORCH_CUDA={fits[-1] if fits else 'cu126'} FORCE=1 make setup")
    return (f"torch {torch.__version__} (CUDA {built}) finds no usable GPU although nvidia-smi reports driver "
            f"{driver}; check CUDA_VISIBLE_DEVICES and the GPUs' state (nvidia-smi)")


def require_cuda(key: str, value: str = "cuda") -> None:
    """Raise a one-line :class:`BadInputError` naming ``key`` when CUDA cannot be used."""
    if not torch.cuda.is_available():
        raise BadInputError(f"{key} is {value!r} but CUDA is not usable here: {cuda_unavailable_reason()}; "
                            f"or set {key} cpu to train on the CPU on purpose")


def local_process_count(local_processes: int | None = None) -> int:
    """Training processes on this machine: ``local_processes`` when given, else torchrun's ``LOCAL_WORLD_SIZE``
    (1 outside torchrun)."""
    if local_processes is not None:
        return max(1, local_processes)
    value = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, int(value)) if value.isdigit() else 1


def _gpu_of(local_rank: int, key: str, requested: str, local: int) -> torch.device:
    # One GPU per process: two NCCL processes on one GPU fail later ("Duplicate GPU detected"), and two
    # processes of any backend sharing a GPU train at half speed each with twice the memory.
    count = torch.cuda.device_count()
    if max(local, local_rank + 1) > count:
        raise BadInputError(f"{key} {requested} with {max(local, local_rank + 1)} training processes on this machine "
                            f"but {count} usable GPU(s): start at most {count} process(es) per machine (torchrun "
                            f"--nproc-per-node / --num-gpus), one per GPU")
    return torch.device("cuda", local_rank)


def resolve_device(requested: str, key: str, local_rank: int = 0, announce: bool = True,
                   local_processes: int | None = None) -> torch.device:
    """``requested`` ("auto", "cpu", "cuda" or "cuda:i") as a device for the process of ``local_rank``, one of
    ``local_processes`` on this machine (default: :func:`local_process_count`).

    ``auto`` logs what it chose (and, on a CPU, why not CUDA); ``cuda`` without a usable GPU, more processes
    than GPUs, or ``cuda:i`` for several processes (all would share GPU i) raise :class:`BadInputError` naming
    ``key`` and the reason."""
    local = local_process_count(local_processes)
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "auto":
        if torch.cuda.is_available():
            device = _gpu_of(local_rank, key, requested, local)
            if announce:
                logger.info("%s auto: using %s (%s)", key, device, torch.cuda.get_device_name(device))
            return device
        if announce:
            logger.warning("%s auto: no usable GPU, training on the CPU (%s)", key, cuda_unavailable_reason())
        return torch.device("cpu")
    if requested == "cuda" or requested.startswith("cuda:"):
        require_cuda(key, requested)
        if requested == "cuda":
            return _gpu_of(local_rank, key, requested, local)
        if local > 1:
            raise BadInputError(f"{key} {requested} pins every one of the {local} training processes on this "
                                f"machine to that GPU: use {key} cuda (each process takes the GPU of its local "
                                "rank), or restrict the GPUs with CUDA_VISIBLE_DEVICES")
        return torch.device(requested)
    raise BadInputError(f"{key} must be auto, cpu, cuda or cuda:N, got {requested!r}")


def describe_device(device: torch.device) -> dict[str, str]:
    """What a manifest or metrics file records of a device: its name, and torch's CUDA build."""
    info = {"device": str(device), "torch": torch.__version__, "torch_cuda": torch.version.cuda or "cpu"}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["driver"] = nvidia_driver()
    return info
