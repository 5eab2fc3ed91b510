"""An inference-only NASNet with every BatchNorm folded into the convolution before it.

Every NASNet op is ReLU -> conv -> BN (a separable conv: ReLU -> depthwise -> pointwise -> BN), so in eval
mode each BN is an affine map per output channel that folds exactly into the weights and a bias of the conv
that feeds it (the pointwise conv of a separable conv; both path convs of a factorized reduction, split by
channel). The folded network computes the same logits with about 190 fewer kernels per forward (mobile).

    fast = fuse_for_inference(model)        # or create_model(..., fast_inference=True)
    with torch.inference_mode():
        logits = fast(images)

The result is a copy (the original keeps training) and is eval-only: ``fast.train()`` raises, because
folded BN statistics cannot be updated. Works on a full :class:`NASNet` and on the partial ones the detection
backbones keep (cells deleted), with ``nn.BatchNorm2d``, ``SyncBatchNorm`` or detectron2's ``FrozenBatchNorm2d``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from nasnet_det.models.cell import Cell
from nasnet_det.models.ops import FactorizedConv, FactorizedReduce, PoolOp, ReLUConvBN, StackedSeparable

# (conv attribute, norm attribute) pairs folded in each module type.
_FOLD_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    ReLUConvBN: (("conv", "bn"),),
    StackedSeparable: (("separable_1.pointwise_conv2d", "bn_sep_1"), ("separable_2.pointwise_conv2d", "bn_sep_2")),
    PoolOp: (("conv", "bn"),),
}


def _is_norm(module: nn.Module) -> bool:
    return all(getattr(module, a, None) is not None for a in ("running_mean", "running_var", "eps"))


@torch.no_grad()
def fold_norm_into_conv(conv: nn.Conv2d, norm: nn.Module, channels: slice = slice(None)) -> None:
    """Fold the eval-mode affine map of ``norm`` (its ``channels`` slice) into ``conv``'s weight and bias."""
    if not _is_norm(norm):
        raise TypeError(f"cannot fold {type(norm).__name__} into a convolution: it keeps no running statistics")
    mean, var = norm.running_mean[channels], norm.running_var[channels]
    n = mean.numel()
    weight = norm.weight[channels] if getattr(norm, "weight", None) is not None else torch.ones_like(mean)
    bias = norm.bias[channels] if getattr(norm, "bias", None) is not None else torch.zeros_like(mean)
    scale = weight / torch.sqrt(var + norm.eps)
    if conv.weight.shape[0] != n:
        raise ValueError(f"conv has {conv.weight.shape[0]} output channels, norm slice has {n}")
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((conv_bias - mean) * scale + bias, requires_grad=False)


def _fold_factorized_reduce(m: FactorizedReduce) -> None:
    if m.stride == 1:
        fold_norm_into_conv(m.path_conv, m.path_bn)
        m.path_bn = nn.Identity()
        return
    half = m.path_1.conv.out_channels
    fold_norm_into_conv(m.path_1.conv, m.final_path_bn, slice(0, half))
    fold_norm_into_conv(m.path_2.conv, m.final_path_bn, slice(half, None))
    m.final_path_bn = nn.Identity()


def _fold_sequential(seq: nn.Module, conv_name: str, norm_name: str) -> None:
    conv, norm = getattr(seq, conv_name, None), getattr(seq, norm_name, None)
    if isinstance(conv, nn.Conv2d) and norm is not None and _is_norm(norm):
        fold_norm_into_conv(conv, norm)
        setattr(seq, norm_name, nn.Identity())


def _eval_only(model: nn.Module):
    def train(mode: bool = True) -> nn.Module:
        if mode:
            raise RuntimeError("this NASNet has its BatchNorm folded into its convolutions (fuse_for_inference) "
                               "and runs in eval mode only; train the original model instead")
        return model
    return train


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BN of a NASNet (or any module holding NASNet parts) in place; returns ``model``."""
    for module in list(model.modules()):
        if isinstance(module, FactorizedReduce):
            _fold_factorized_reduce(module)
            continue
        for conv_path, norm_name in _FOLD_PAIRS.get(type(module), ()):
            norm = getattr(module, norm_name, None)
            if norm is None or isinstance(norm, nn.Identity):
                continue  # a PoolOp without projection
            fold_norm_into_conv(module.get_submodule(conv_path), norm)
            setattr(module, norm_name, nn.Identity())
    # The stem (conv0: conv, bn) and the aux head (proj/bn_proj, conv/bn).
    for name in ("conv0",):
        stem = getattr(model, name, None)
        if stem is not None:
            _fold_sequential(stem, "conv", "bn")
    aux = getattr(model, "aux_head", None)
    if aux is not None:
        _fold_sequential(aux, "proj", "bn_proj")
        _fold_sequential(aux, "conv", "bn")
    return model


def _take_leading_relu(op: nn.Module) -> bool:
    """Remove the ReLU that ``op`` applies first to its input, if it has one (True then)."""
    holder, name = {ReLUConvBN: (op, "act"), StackedSeparable: (op, "act_1"),
                    FactorizedConv: (getattr(op, "conv_1", None), "act"),
                    FactorizedReduce: (op, "act")}.get(type(op), (None, ""))
    if holder is None or not isinstance(getattr(holder, name), nn.ReLU):
        return False
    setattr(holder, name, nn.Identity())
    return True


class FusedCell(Cell):
    """A cell of the folded network. Several ops of a cell read the same input state and each began with its
    own ReLU of it; here each state goes through ReLU once and the ops that want it share the result."""

    relu_input: dict[str, bool]

    @classmethod
    def convert(cls, cell: Cell) -> FusedCell:
        names = ["conv_1x1", *([cell.state_1_adapter] if cell.state_1_adapter else [])]
        names += [f"comb_iter_{b}_{side}" for b in range(len(cell.spec.blocks)) for side in ("left", "right")]
        cell.relu_input = {n: _take_leading_relu(getattr(cell, n)) for n in names}
        cell.__class__ = cls
        return cell  # type: ignore[return-value]

    def forward(self, h: torch.Tensor, h_prev: torch.Tensor | None) -> torch.Tensor:
        relu_h = F.relu(h)
        if h_prev is None:
            state_1, relu_1 = h, relu_h
        elif self.state_1_adapter is not None:
            state_1, relu_1 = getattr(self, self.state_1_adapter)(F.relu(h_prev)), None
        else:
            state_1, relu_1 = h_prev, None
        states: list[torch.Tensor] = [self.conv_1x1(relu_h), state_1]
        relus: dict[int, torch.Tensor] = {} if relu_1 is None else {1: relu_1}
        for b, block in enumerate(self.spec.blocks):
            outs = []
            for side, idx in (("left", block.input_1), ("right", block.input_2)):
                name = f"comb_iter_{b}_{side}"
                x = states[idx]
                if self.relu_input[name]:
                    if idx not in relus:
                        relus[idx] = F.relu(x)
                    x = relus[idx]
                outs.append(getattr(self, name)(x))
            states.append(outs[0] + outs[1] if block.combine == "add" else torch.cat(outs, 1))
        outputs = [getattr(self, f"output_reduce_{i}")(states[i]) if i in self._reduced_outputs else states[i]
                   for i in self.spec.concat]
        return torch.cat(outputs, 1)


def fuse_for_inference(model: nn.Module, channels_last: bool | None = None, compile: bool = False) -> nn.Module:
    """An eval-only copy of ``model`` with BatchNorm folded into the convolutions (same outputs in eval
    mode).

    ``channels_last``: the copy's memory layout (default: the model's own; a NASNet converts its input).
    ``compile``: wrap the copy in ``torch.compile`` with Inductor's freezing (called under ``inference_mode`` or
    ``no_grad``, the weights become constants, so Inductor can prepack them and fuse the ReLUs and adds into the
    convolutions). Compiling takes tens of seconds per input shape on a CPU (numbers: docs/benchmarks.md), so it pays
    off for long runs at fixed sizes; every new input shape compiles again. It needs a C++ compiler on a CPU."""
    fused = copy.deepcopy(model).eval()
    fold_batchnorm(fused)
    for module in list(fused.modules()):
        if type(module) is Cell:
            FusedCell.convert(module)
    left = [n for n, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase) or _is_norm(m)]
    if left:
        raise RuntimeError(f"BatchNorm layers not folded (no conv to fold into): {left[:5]}")
    fused.requires_grad_(False)
    if channels_last is not None:
        if hasattr(fused, "set_channels_last"):
            fused.set_channels_last(channels_last)
        else:  # a module holding NASNet parts (detection): its caller feeds it the layout it wants
            fused.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    fused.train = _eval_only(fused)  # type: ignore[method-assign]
    fused.is_fused = True
    return torch.compile(fused, options={"freezing": True}) if compile else fused


class FusedForEval:
    """A BN-folded copy of a network for eval mode, rebuilt whenever a weight or statistic changed (an
    optimizer step, a loaded checkpoint, a move to another device), so a training job that evaluates now and
    then always evaluates its current weights. Held as a plain attribute: the copy is not part of the owner's
    parameters or state dict."""

    def __init__(self) -> None:
        self._copy: nn.Module | None = None
        self._key: tuple | None = None

    @staticmethod
    def _fingerprint(model: nn.Module) -> tuple:
        return tuple((id(t), t._version, t.device) for t in (*model.parameters(), *model.buffers()))

    def get(self, model: nn.Module) -> nn.Module:
        key = self._fingerprint(model)
        if self._copy is None or key != self._key:
            self._copy, self._key = fuse_for_inference(model), key
        return self._copy
