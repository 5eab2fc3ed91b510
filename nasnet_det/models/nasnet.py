"""NASNet networks: cells stacked into CIFAR and ImageNet skeletons scaled by N @ F (TF-slim layout).

``N`` is the number of normal cells per stack (3 stacks, separated by 2 reduction cells); ``F`` is the
channel count of the penultimate layer. With per-op filters ``f`` in the first stack, reduction cells and
the following stacks use ``2f`` and ``4f``, so ``F = 4 f x (cell output multiplier)`` (24 f for NASNet-A).

Module names follow TF-slim / timm (``conv0``, ``cell_stem_0``, ``cell_0`` .. ``cell_{3N-1}`` numbered
straight through, ``reduction_cell_0/1``, ``last_linear``), so checkpoints map by name.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nasnet_det.models.cell import Cell, output_multiplier
from nasnet_det.models.ops import PAD_MODES, Conv2dSame
from nasnet_det.space import Genotype

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellPlan:
    """Where a cell sits: its name, which outputs feed it (h_i, h_{i-1}) and its depth index for drop path."""

    name: str
    h: str
    h_prev: str | None
    reduction: bool
    filters: int
    index: int


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    channels: int
    stride: int


def filters_for_penultimate(genotype: Genotype, penultimate_filters: int, strict: bool = True) -> int:
    """Per-op filters ``f`` of the first stack for a network whose last cell outputs ``F`` channels.

    ``F`` must be a multiple of 4 x the normal cell's concat width. A searched cell may concat any number of
    blocks (1..5, plus the unused inputs), so a paper-scale ``F`` (768, 1056, 4032) need not fit it:
    ``strict=False`` then takes the nearest ``f`` (so ``F`` becomes the nearest valid value) and logs it."""
    per_f = 4 * output_multiplier(genotype.normal)
    if penultimate_filters % per_f:
        nearest = max(1, round(penultimate_filters / per_f))
        if strict:
            raise ValueError(f"F={penultimate_filters} is not a multiple of {per_f} (= 4 x the normal cell's "
                             f"output multiplier {per_f // 4} for genotype {genotype.name or '<custom>'}); "
                             f"nearest valid F: {nearest * per_f}")
        logger.info("genotype %s concatenates %d outputs, so F=%d is not a multiple of %d: using f=%d (F=%d)",
                    genotype.name or "<custom>", per_f // 4, penultimate_filters, per_f, nearest, nearest * per_f)
        return nearest
    return penultimate_filters // per_f


class AuxHead(nn.Module):
    """Auxiliary classifier (slim ``_build_aux_head``): ReLU, 5x5/3 avg pool, 1x1 conv 128, BN, ReLU,
    conv over the whole remaining map to 768, BN, ReLU, FC. Placed after the last normal cell of stack 2.

    slim sizes the 768-filter conv to the map it sees at the training image size (4x4 for CIFAR and mobile,
    6x6 for large); ``kernel_size`` fixes that, and other input sizes are pooled to it.
    """

    def __init__(self, c_in: int, num_classes: int, norm, kernel_size: int):
        super().__init__()
        self.act = nn.ReLU()
        self.proj = nn.Conv2d(c_in, 128, 1, bias=False)
        self.bn_proj = norm(128)
        self.pool_to_kernel = nn.AdaptiveAvgPool2d(kernel_size)
        self.conv = nn.Conv2d(128, 768, kernel_size, bias=False)
        self.bn = norm(768)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        if min(x.shape[-2:]) >= 5:
            x = F.avg_pool2d(x, 5, 3)
        x = self.act(self.bn_proj(self.proj(x)))
        x = self.act(self.bn(self.conv(self.pool_to_kernel(x))))
        return self.classifier(torch.flatten(x, 1))


def aux_kernel_size(image_size: int, stride: int, imagenet_stem: bool) -> int:
    """The map size slim's aux conv covers at ``image_size`` (see :class:`AuxHead`)."""
    size = (image_size - 3) // 2 + 1 if imagenet_stem else image_size
    for _ in range(stride.bit_length() - (2 if imagenet_stem else 1)):
        size = -(-size // 2)
    return max(1, (size - 5) // 3 + 1) if size >= 5 else 1


def stack_cells(parent: nn.Module, num_cells: int, filters: int, stem_channels: int, stem_stride: int,
                make_cell: Callable[[str, bool, int, int | None, int, int], nn.Module], *,
                imagenet_stem: bool = False, skip_reduction_layer_input: bool = False
                ) -> tuple[list[CellPlan], dict[str, int], dict[str, int]]:
    """The NASNet skeleton after the stem ``conv0``: the ImageNet stem cells (f/4, f/2), then 3 stacks of N normal
    cells (f, 2f, 4f) with a reduction cell before stacks 2 and 3, each fed by the two previous outputs (slim's
    ``cell_outputs``). ``make_cell(name, reduction, c_in, c_prev, filters, prev_stride)`` builds a cell (with an
    ``out_channels`` attribute; ``c_prev`` None: the first cell has one input); the cells are added to ``parent``
    in order. Returns the cells' plans and every output's channels and stride (by name, ``conv0`` included).
    The search's supernet (search/supernet.py) stacks its cells with it too."""
    channels: dict[str, int] = {"conv0": stem_channels}
    strides: dict[str, int] = {"conv0": stem_stride}
    plans: list[CellPlan] = []
    outputs: list[str | None] = [None, "conv0"]  # slim's cell_outputs

    def add(name: str, reduction: bool, cell_filters: int, prev: str | None) -> None:
        h = outputs[-1]
        assert h is not None
        prev_stride = 2 if prev is not None and strides[prev] != strides[h] else 1
        cell = make_cell(name, reduction, channels[h], channels[prev] if prev else None, cell_filters, prev_stride)
        parent.add_module(name, cell)
        plans.append(CellPlan(name, h, prev, reduction, cell_filters, len(plans)))
        channels[name] = cell.out_channels
        strides[name] = strides[h] * (2 if reduction else 1)
        outputs.append(name)

    if imagenet_stem:
        add("cell_stem_0", True, filters // 4, outputs[-2])
        add("cell_stem_1", True, filters // 2, outputs[-2])
    reduction_at = [num_cells, 2 * num_cells]
    scale = 1
    for i in range(3 * num_cells):
        prev = outputs[-2]
        if i in reduction_at:
            scale *= 2
            add(f"reduction_cell_{reduction_at.index(i)}", True, filters * scale, outputs[-2])
            if not skip_reduction_layer_input:
                prev = outputs[-2]
        add(f"cell_{i}", False, filters * scale, prev)
    return plans, channels, strides


class NASNet(nn.Module):
    """A NASNet classifier for any genotype.

    ``forward(x)`` returns logits; ``forward(x, return_aux=True)`` returns ``(logits, aux_logits)`` where
    ``aux_logits`` is ``None`` unless training with an aux head. ``forward_features(x, names)`` returns the
    outputs of the named cells (see :attr:`feature_info`) and stops after the deepest one.
    """

    def __init__(self, genotype: Genotype, num_classes: int = 1000, num_cells: int = 4,
                 filters: int = 44, *, imagenet_stem: bool = True, stem_filters: int | None = None,
                 skip_reduction_layer_input: bool = False, aux_head: bool = True,
                 drop_path_keep_prob: float = 1.0, dropout: float = 0.0, bn_eps: float = 1e-3,
                 bn_momentum: float = 0.1, pad_mode: str = "tf", in_chans: int = 3,
                 image_size: int | None = None, channels_last: bool = True):
        super().__init__()
        if not isinstance(genotype, Genotype):  # names and files are resolved once, by create_model
            raise TypeError(f"NASNet takes a Genotype, got {type(genotype).__name__}; build from a genotype name "
                            "or file with nasnet_det.models.create_model")
        genotype.validate()
        # Everything needed to rebuild this network, stored in checkpoints (see nasnet_det.models.pretrained).
        self.arch: dict = dict(genotype=genotype.to_dict(), num_classes=num_classes, num_cells=num_cells,
                               filters=filters, imagenet_stem=imagenet_stem, stem_filters=stem_filters,
                               skip_reduction_layer_input=skip_reduction_layer_input, aux_head=aux_head,
                               drop_path_keep_prob=drop_path_keep_prob, dropout=dropout, bn_eps=bn_eps,
                               bn_momentum=bn_momentum, pad_mode=pad_mode, in_chans=in_chans,
                               image_size=image_size)
        if num_cells < 1 or filters < 1:
            raise ValueError(f"need num_cells >= 1 and filters >= 1, got N={num_cells}, f={filters}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if not 0.0 < drop_path_keep_prob <= 1.0:
            raise ValueError(f"drop_path_keep_prob must be in (0, 1], got {drop_path_keep_prob}")
        self.genotype = genotype
        # A memory layout, not part of the architecture (not in ``arch``): see set_channels_last.
        self.channels_last = channels_last
        self.num_cells, self.filters, self.imagenet_stem = num_cells, filters, imagenet_stem
        self.drop_path_keep_prob = drop_path_keep_prob
        self.num_classes = num_classes
        norm = functools.partial(nn.BatchNorm2d, eps=bn_eps, momentum=bn_momentum)

        if stem_filters is None:
            stem_filters = 96 if imagenet_stem else 3 * filters
        self.conv0 = nn.Sequential()
        if imagenet_stem:  # 3x3 stride-2 VALID conv
            self.conv0.add_module("conv", nn.Conv2d(in_chans, stem_filters, 3, 2, 0, bias=False))
        else:
            self.conv0.add_module("conv", Conv2dSame(in_chans, stem_filters, 3, 1))
        self.conv0.add_module("bn", norm(stem_filters))

        def make_cell(name: str, reduction: bool, c_in: int, c_prev: int | None, cell_filters: int,
                      prev_stride: int) -> Cell:
            spec = genotype.reduce if reduction else genotype.normal
            try:
                return Cell(spec, c_in, c_prev, cell_filters, reduction, prev_stride, norm, pad_mode)
            except ValueError as e:
                raise ValueError(f"{name} ({cell_filters} filters per op) cannot be built: {e}. Use more "
                                 f"filters (the ImageNet stem cells use f//4 and f//2 of f={filters})") from None

        if imagenet_stem and filters < 4:
            raise ValueError(f"the ImageNet stem cells use f//4 and f//2 filters per op: f={filters} is too "
                             "small (need f >= 4)")
        plans, channels, strides = stack_cells(self, num_cells, filters, stem_filters, 2 if imagenet_stem else 1,
                                               make_cell, imagenet_stem=imagenet_stem,
                                               skip_reduction_layer_input=skip_reduction_layer_input)
        self.aux_after = f"cell_{2 * num_cells - 1}"  # the aux head reads the last cell of the second stack
        self.plan: tuple[CellPlan, ...] = tuple(plans)
        self.feature_info: tuple[FeatureInfo, ...] = tuple(
            FeatureInfo(n, channels[n], strides[n]) for n in ["conv0"] + [p.name for p in plans])
        last = plans[-1].name
        self.num_features = channels[last]

        self.image_size = image_size or (224 if imagenet_stem else 32)
        self.aux_head = None
        if aux_head and num_classes:
            k = aux_kernel_size(self.image_size, strides[self.aux_after], imagenet_stem)
            self.aux_head = AuxHead(channels[self.aux_after], num_classes, norm, k)
        self.act = nn.ReLU()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.last_linear = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        # Last use of each output, so forward can free intermediate maps early.
        self._last_use = {}
        for p in plans:
            for src in (p.h, p.h_prev):
                if src is not None:
                    self._last_use[src] = p.index
        self._init_weights()
        self.set_drop_path_progress(0.0)
        self.set_channels_last(channels_last)

    def _init_weights(self) -> None:
        # slim: variance scaling (factor 2, fan-out) for conv and FC weights. TF's fan-out of a depthwise
        # kernel [k, k, C, 1] is k*k, not PyTorch's C*k*k, so it is computed per group here.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                fan_out = kh * kw * (m.out_channels // m.groups)
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.out_features))
                nn.init.zeros_(m.bias)

    def set_channels_last(self, enabled: bool = True) -> NASNet:
        """Run in the channels_last (NHWC) memory layout, or back in NCHW. Same outputs (to float rounding).

        On by default: NASNet is mostly depthwise and 1x1 convolutions, which oneDNN runs much faster in NHWC
        (docs/benchmarks.md; ``bench/bench_model.py --nchw`` measures ours in NCHW).
        The 4-D weights are stored NHWC (loading a checkpoint keeps that) and the input is converted on entry,
        so the feature maps and gradients are NHWC too. Returns ``self``."""
        self.channels_last = bool(enabled)
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def to_layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in this network's memory layout (what its cells expect)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def fuse_for_inference(self, channels_last: bool | None = None, compile: bool = False) -> nn.Module:
        """The fast inference switch: an eval-only copy with BatchNorm folded into the convolutions, same
        logits (see :mod:`nasnet_det.models.fuse`). Call it after loading the weights. ``channels_last``
        defaults to this network's layout; ``compile=True`` adds ``torch.compile`` (see fuse.py)."""
        from nasnet_det.models.fuse import fuse_for_inference

        return fuse_for_inference(self, channels_last=channels_last, compile=compile)

    # ScheduledDropPath ---------------------------------------------------------------------------------
    def set_drop_path_progress(self, progress: float) -> None:
        """Set every cell's drop probability for training progress in [0, 1] (slim's v3 schedule):
        drop = (1 - keep_prob) x (cell_index + 1) / num_cells_total x min(1, progress)."""
        progress = min(max(float(progress), 0.0), 1.0)
        total = len(self.plan)
        for p in self.plan:
            # A network split into parts (the C4 detector's trunk and ROI head) keeps only its own cells;
            # depth still counts every cell of the full plan.
            cell: Cell | None = getattr(self, p.name, None)
            if cell is not None:
                cell.drop_prob = (1.0 - self.drop_path_keep_prob) * (p.index + 1) / total * progress

    # Forward ---------------------------------------------------------------------------------------------
    @property
    def cell_names(self) -> list[str]:
        return [p.name for p in self.plan]

    def run_cells(self, outputs: dict[str, torch.Tensor], plans: tuple[CellPlan, ...] | list[CellPlan],
                  keep: set[str] = frozenset(), aux: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Run ``plans`` in order on ``outputs`` (name -> tensor), freeing maps nobody needs later."""
        for p in plans:
            cell = getattr(self, p.name)
            outputs[p.name] = cell(outputs[p.h], outputs[p.h_prev] if p.h_prev else None)
            if aux is not None and p.name == self.aux_after:
                aux.append(self.aux_head(outputs[p.name]))
            for src in (p.h, p.h_prev):
                if src is not None and self._last_use.get(src) == p.index and src not in keep:
                    del outputs[src]
        return outputs

    def forward_features(self, x: torch.Tensor, names: list[str] | tuple[str, ...] | None = None
                         ) -> dict[str, torch.Tensor]:
        """Outputs of the named cells (default: the last cell). Runs only as deep as needed."""
        known = {f.name for f in self.feature_info}
        names = list(names) if names else [self.plan[-1].name]
        for n in names:
            if n not in known:
                raise KeyError(f"no feature named {n!r}; available: {', '.join(f.name for f in self.feature_info)}")
        depth = max((p.index for p in self.plan if p.name in names), default=-1)
        stem = self.conv0(self.to_layout(x))
        outputs = self.run_cells({"conv0": stem}, self.plan[: depth + 1], keep=set(names))
        return {n: outputs[n] for n in names}

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        x = self.global_pool(self.act(features)).flatten(1)
        return self.last_linear(self.dropout(x))

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        aux: list[torch.Tensor] | None = [] if (return_aux and self.training and self.aux_head) else None
        last = self.plan[-1].name
        outputs = self.run_cells({"conv0": self.conv0(self.to_layout(x))}, self.plan, keep={last}, aux=aux)
        logits = self.forward_head(outputs[last])
        if return_aux:
            return logits, (aux[0] if aux else None)
        return logits
