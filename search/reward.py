"""Rewards: training a small child network on CIFAR-10 (held-out accuracy), and a synthetic
op-scoring reward used to check that the search optimises at all."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nasnet_det.data.cifar import CIFAR_MEAN, CIFAR_STD, holdout_split
from nasnet_det.models import create_model
from nasnet_det.space import OPS, Genotype
from search.base_config import base_cfg_defaults, check_child_network, check_child_settings


class ChildDiverged(RuntimeError):
    """The child's training loss became NaN or infinite."""


@dataclass
class ChildData:
    """Training and held-out images as uint8 NHWC arrays (shipped once to each worker)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, val_size: int, seed: int = 0,
                    train_limit: int = 0) -> ChildData:
        if val_size >= len(x):
            raise ValueError(f"DATA.VAL_SIZE={val_size} must be smaller than the {len(x)} training images")
        tr, va = holdout_split(len(x), val_size, seed)
        if 0 < train_limit < len(tr):  # a seeded random subset, not the lowest-numbered images
            keep = np.random.default_rng([seed, 1]).permutation(len(tr))[:train_limit]
            tr = tr[np.sort(keep)]
        return cls(x[tr], y[tr].astype(np.int64), x[va], y[va].astype(np.int64))


def load_search_data(cfg: Any) -> ChildData:
    """The training / held-out split of the search config's ``DATA`` (a ``CfgNode``)."""
    from nasnet_det.data.cifar import load_cifar_source

    x, y = load_cifar_source(cfg.DATA.SOURCE)
    return ChildData.from_arrays(x, y, cfg.DATA.VAL_SIZE, cfg.DATA.SPLIT_SEED, cfg.DATA.TRAIN_LIMIT)


def images_to_tensor(x: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """uint8 images [N, H, W, 3] as a normalised float batch [N, 3, size, size] on ``device`` (CIFAR-10's
    mean and std; resized with antialiasing when ``size`` differs)."""
    t = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1)
    t = (t - mean) / std
    if size != t.shape[-1]:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Batched pad-4 random crop + horizontal flip (the standard CIFAR augmentation)."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)
    batch_idx = torch.arange(n, device=x.device)[:, None, None, None]
    chan_idx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = xp[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def cosine_factor(step: float, total: int) -> float:
    """The cosine schedule's factor at ``step`` of ``total``: 1 -> 0 (the children's LR multiplier; the supernet's
    LR is LR_MIN + (LR - LR_MIN) x this)."""
    return 0.5 * (1 + math.cos(math.pi * step / total))


def build_child(genotype: Genotype, network: Mapping[str, Any]) -> torch.nn.Module:
    """The child network: ``network`` (a ``MODEL.NASNET`` node) with ``genotype``'s cells, for CIFAR-10."""
    return create_model(network, dataset="cifar", num_classes=10, genotype=genotype)


def train_child(genotype: Genotype, child: dict[str, Any], data: ChildData, seed: int = 0,
                device: str | torch.device = "cpu", network: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train the CIFAR network ``network`` (a ``MODEL.NASNET`` node; default: the search's default,
    preset ``search_child_tiny``) with ``genotype``'s cells, with SGD + cosine LR as ``child`` (``CHILD``)
    says, and return ``{"reward": held-out accuracy, "params": int, "steps": int}``. Raises
    :class:`ChildDiverged` on NaN."""
    check_child_settings(child)
    network = default_child_network() if network is None else network
    device = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_child(genotype, network).to(device)
    params = sum(p.numel() for p in model.parameters())
    size = int(child.get("IMAGE_SIZE", 32))
    x_tr, y_tr = images_to_tensor(data.x_train, size, device), torch.from_numpy(data.y_train).to(device)
    bs = int(child["BATCH_SIZE"])
    steps_per_epoch = max(1, len(x_tr) // bs)
    total = steps_per_epoch * int(child["EPOCHS"])
    if int(child.get("MAX_STEPS", 0)) > 0:
        total = min(total, int(child["MAX_STEPS"]))
    opt = torch.optim.SGD(model.parameters(), lr=float(child["LR"]), momentum=float(child["MOMENTUM"]),
                          weight_decay=float(child["WEIGHT_DECAY"]), nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_factor(s, total))
    model.train()
    step = 0
    while step < total:
        perm = torch.randperm(len(x_tr), generator=gen).to(device)
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[i * bs:(i + 1) * bs]
            xb = x_tr[idx]
            if child.get("AUGMENT", True):
                xb = augment_batch(xb, gen)
            model.set_drop_path_progress(step / total)
            loss = F.cross_entropy(model(xb, return_aux=True)[0], y_tr[idx])
            if not torch.isfinite(loss):
                raise ChildDiverged(f"training loss became {float(loss.detach())} at step {step}/{total}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    return {"reward": evaluate_accuracy(model, data, child, device), "params": params, "steps": step}


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, data: ChildData, child: dict[str, Any],
                      device: torch.device) -> float:
    model.eval()
    size = int(child.get("IMAGE_SIZE", 32))
    bs = int(child.get("EVAL_BATCH_SIZE", 256))
    correct = 0
    for i in range(0, len(data.x_val), bs):
        xb = images_to_tensor(data.x_val[i:i + bs], size, device)
        logits = model(xb)
        if not torch.isfinite(logits).all():
            raise ChildDiverged("held-out logits contain NaN/inf")
        correct += int((logits.argmax(1).cpu() == torch.from_numpy(data.y_val[i:i + bs])).sum())
    return correct / len(data.x_val)


class SyntheticOpReward:
    """Pure-function reward for testing the search: the mean of a fixed per-op score over the 4B ops of a
    genotype, plus Gaussian noise. Random search averages ~0.5; the best genotype (all ops = the top op)
    scores 1.0. Each op's score is a fixed shuffle of ``linspace(0, 1, 13)`` chosen by ``seed``."""

    def __init__(self, seed: int = 0, noise: float = 0.05):
        rng = np.random.default_rng(seed)
        self.scores = dict(zip(OPS, rng.permutation(np.linspace(0.0, 1.0, len(OPS)))))
        self.noise, self.rng = noise, np.random.default_rng(seed + 1)

    def clean(self, genotype: Genotype) -> float:
        ops = [op for cell in (genotype.normal, genotype.reduce) for b in cell.blocks for op in b.ops()]
        return float(np.mean([self.scores[o] for o in ops]))

    def __call__(self, genotype: Genotype, seed: int = 0) -> dict[str, Any]:
        return {"reward": self.clean(genotype) + float(self.rng.normal(0, self.noise)), "params": 0}


def default_child_network() -> dict[str, Any]:
    """The search's default ``MODEL.NASNET`` (preset ``search_child_tiny``)."""
    return dict(base_cfg_defaults().MODEL.NASNET)


class ChildEvaluator:
    """Picklable evaluator for the work queue: trains one child (network ``network``, a ``MODEL.NASNET``
    node, default :func:`default_child_network`) on the arrays it carries.
    ``device`` is set by the worker it lands on (:meth:`place_on`); ``CHILD.DEVICE`` other than "auto" overrides it."""

    def __init__(self, child: dict[str, Any], data: ChildData, network: Mapping[str, Any] | None = None):
        check_child_settings(child)
        network = default_child_network() if network is None else dict(network)
        check_child_network(network)
        self.child, self.data, self.network = dict(child), data, network
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def place_on(self, device: str) -> None:
        self.device = device

    def __call__(self, genotype: Genotype, seed: int) -> dict[str, Any]:
        forced = str(self.child.get("DEVICE", "auto"))
        device = self.device if forced == "auto" else forced
        return train_child(genotype, self.child, self.data, seed=seed, device=device, network=self.network)


class SleepingReward(SyntheticOpReward):
    """Stands in for child training in work-queue tests and benchmarks: sleeps for a heavy-tailed time
    (lognormal: median ``median_s``, ``sigma`` 1 makes the slowest of 100 children ~10x the median),
    then returns the op-score reward plus noise. Duration and noise are drawn from the child's seed, so a
    re-run child gets the same. With ``log_path`` each call appends ``seed start end`` (wall-clock) to it,
    from whichever process ran the child."""

    def __init__(self, seed: int = 0, median_s: float = 0.03, sigma: float = 1.0, noise: float = 0.05,
                 log_path: str | None = None):
        super().__init__(seed, noise)
        self.median_s, self.sigma, self.log_path = median_s, sigma, log_path

    def duration(self, seed: int) -> float:
        return self.median_s * math.exp(self.sigma * np.random.default_rng([seed, 7]).standard_normal())

    def __call__(self, genotype: Genotype, seed: int = 0) -> dict[str, Any]:
        import time

        start = time.time()
        time.sleep(self.duration(seed))
        if self.log_path:
            with open(self.log_path, "a") as f:  # one short write per line: lines of workers do not mix
                f.write(f"{seed} {start:.6f} {time.time():.6f}\n")
        noise = float(np.random.default_rng([seed, 8]).normal(0, self.noise))
        return {"reward": self.clean(genotype) + noise, "params": 0}
