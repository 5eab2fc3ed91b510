"""torch.distributed plumbing: init from torchrun's env vars, rank-0 helpers, collectives on plain values."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nasnet_det.engine.devices import resolve_device
from nasnet_det.engine.process import PARENT_PID_AT_IMPORT, die_with_parent


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0, key: str = "TRAIN.DEVICE",
                announce: bool = True) -> torch.device:
    """The device of the process of ``local_rank`` (:func:`nasnet_det.engine.devices.resolve_device`): ``auto``
    logs what it chose, ``cuda`` without a usable GPU is a one-line BadInputError naming ``key`` and why."""
    return resolve_device(requested, key, local_rank, announce=announce)


def init_distributed(device: str = "auto", key: str = "TRAIN.DEVICE") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1 in the environment).

    ``device``: the config's device setting, ``key`` its name (for the log line and the error). Backend: nccl
    on CUDA, gloo on CPU. Without the env vars this is a single process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # Every process resolves its own GPU; rank 0 alone says what "auto" chose (the others chose alike).
    dev = pick_device(device, local_rank, key, announce=rank == 0)
    if world_size > 1 and not dist.is_initialized():
        if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun: do not outlive it
            die_with_parent(PARENT_PID_AT_IMPORT)
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world_size} but {var} is not set; launch with torchrun")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum floats over all processes (identity in a single process)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_union(items: set[str]) -> set[str]:
    """The union of every process's set of strings (the set itself in a single process)."""
    if not dist.is_initialized():
        return set(items)
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, sorted(items))
    return {item for part in gathered for item in (part or [])}
