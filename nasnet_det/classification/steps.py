"""One optimizer step's gradients (with accumulation and the auxiliary head) and the evaluation pass."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from nasnet_det.classification.metrics import topk_correct
from nasnet_det.engine.distributed import all_gather_union, all_reduce_sum


def classification_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, aux_weight: float,
                        label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total loss incl. aux head, main loss, logits); losses are computed in float32 even under autocast.

    With ``aux_weight`` 0 the aux head is not computed (no work for nothing): DDP's unused-parameter detection,
    which the trainer then turns on, traverses the graph from the forward's outputs and requires each of them to
    take part in the loss."""
    if aux_weight > 0:
        logits, aux_logits = model(x, return_aux=True)
    else:
        logits, aux_logits = model(x), None
    main = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    total = main
    if aux_logits is not None and aux_weight > 0:
        total = main + aux_weight * F.cross_entropy(aux_logits.float(), y, label_smoothing=label_smoothing)
    return total, main, logits


def accumulate_gradients(model: nn.Module, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         num_micro_batches: int, aux_weight: float, label_smoothing: float = 0.0,
                         scaler: torch.amp.GradScaler | None = None,
                         autocast: contextlib.AbstractContextManager | None = None) -> dict[str, float]:
    """Backpropagate ``num_micro_batches`` micro-batches into ``.grad`` as one batch of their union.

    Each micro-batch's mean loss is divided by the count, so k equal micro-batches give the gradient of
    one k-times larger batch. Under DDP, gradients are all-reduced only on the last micro-batch
    (``no_sync`` before), which is what makes accumulation cheap across processes.
    """
    stats = {"loss": 0.0, "correct": 0, "count": 0}
    for j, (x, y) in enumerate(micro_batches):
        last = j == num_micro_batches - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else \
            contextlib.nullcontext()
        with sync:
            with autocast or contextlib.nullcontext():
                total, main, logits = classification_loss(model, x, y, aux_weight, label_smoothing)
            scaled = total / num_micro_batches
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        stats["loss"] += float(main.detach()) * len(y)
        stats["correct"] += topk_correct(logits.detach(), y, (1,))[0]
        stats["count"] += len(y)
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             autocast: contextlib.AbstractContextManager | None = None,
             channels_last: bool = False) -> dict[str, float]:
    """Loss, top-1/top-5 accuracy and top-1 error (%) over the loader, summed over all processes, and
    ``skipped_images``: the distinct corrupt images the loader replaced (batches of ``(x, y, paths)``)."""
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, count = 0.0, 0, 0, 0
    skipped: set[str] = set()
    for batch in loader:
        if len(batch) > 2:
            skipped.update(batch[2])
        x, y = to_device(batch, device, channels_last)
        with autocast or contextlib.nullcontext():
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        c1, c5 = topk_correct(logits, y, (1, 5))
        top1, top5, count = top1 + c1, top5 + c5, count + len(y)
    model.train(was_training)
    loss_sum, top1, top5, count = all_reduce_sum([loss_sum, top1, top5, count], device)
    skipped = all_gather_union(skipped)
    if count == 0:
        raise ValueError("the evaluation set is empty")
    acc1 = 100.0 * top1 / count
    return {"loss": loss_sum / count, "top1": acc1, "top5": 100.0 * top5 / count, "error": 100.0 - acc1,
            "images": int(count), "skipped_images": len(skipped)}


def to_device(batch, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = batch[0].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, batch[1].to(device, non_blocking=True)

