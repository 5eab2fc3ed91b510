"""The 13 NASNet operations as modules, with TensorFlow 'SAME' padding.

Every convolution is ReLU -> conv -> BN (paper A.4), convs have no bias, and a selected separable conv is
applied twice with no BN/ReLU between its depthwise and pointwise parts. Parameter names follow timm /
Cadene (``separable_1.depthwise_conv2d``, ``bn_sep_1``, ...) so released checkpoints map by name.

Padding: the released weights were trained with TF 'SAME' padding, which for a stride-2 op on an even
input pads one pixel more at the bottom/right than at the top/left, and whose average pooling never counts
padded pixels. ``pad_mode="tf"`` reproduces that exactly. timm's port counts the zero padding of stride-2
average pools (its ``AvgPool2dSame``); ``pad_mode="timm"`` reproduces that, so logits match timm's model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NormFactory = Callable[[int], nn.Module]
PAD_MODES = ("tf", "timm")


def same_pad_amounts(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for one spatial dimension."""
    effective = (kernel - 1) * dilation + 1
    # Integer ops only, and clamp for a traced size (a tensor while torch.jit.trace runs): the exported graph
    # then computes the padding from its input's size instead of keeping the traced input's as constants. The
    # ceiling as (size + stride - 1) // stride: no floor division of a negative number, which ONNX truncates.
    total = ((size + stride - 1) // stride - 1) * stride + effective - size
    total = total.clamp(min=0) if isinstance(total, torch.Tensor) else max(total, 0)
    return total // 2, total - total // 2


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
              dilation: tuple[int, int] = (1, 1), value: float = 0.0) -> torch.Tensor:
    top, bottom = same_pad_amounts(x.shape[-2], kernel[0], stride[0], dilation[0])
    left, right = same_pad_amounts(x.shape[-1], kernel[1], stride[1], dilation[1])
    if not torch.jit.is_tracing() and top == bottom == left == right == 0:  # traced: sizes vary
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def _is_static(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> bool:
    # Stride 1 with an odd effective kernel pads symmetrically, so a fixed PyTorch padding is exact.
    return all(s == 1 and (d * (k - 1)) % 2 == 0 for k, s, d in zip(kernel, stride, dilation))


# oneDNN's float32 kernels work on channels in blocks of one vector register: 8 floats on AVX2, 16 on AVX-512
# (the widest any CPU has). Its strided 1x1 backward-weights kernels write past their workspace for an NHWC input
# with fewer channels than that block (uxlfoundation/oneDNN#6035): wrong weight gradients, segfaults or hangs.
NARROW_CHANNELS = 16


def subsampled_conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       stride: tuple[int, int], groups: int = 1) -> torch.Tensor:
    """A strided 1x1 convolution computed as the exact subsample ``x[..., ::s, ::s]`` (TF 'SAME' pads a 1x1
    kernel by nothing) followed by a stride-1 convolution, which never reaches oneDNN's strided kernels."""
    return F.conv2d(x[:, :, :: stride[0], :: stride[1]], weight, bias, 1, 0, 1, groups)


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TF 'SAME' padding, computed per input size where it is not symmetric.

    A strided 1x1 convolution of fewer than :data:`NARROW_CHANNELS` input channels runs as
    :func:`subsampled_conv1x1` (oneDNN#6035, above). Only those: the subsample is slower than oneDNN's strided
    kernel (0.56-0.93x for the op, 0.89x for a training step of a network of such cells; bench/RESULTS.md,
    bench_strided_1x1), and from one block up that kernel is right (tests/models/layout_sweep.py checks 1..32). The
    kernel blocks the channels of one group, so the threshold is on channels per group.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, dilation: int | tuple[int, int] = 1, groups: int = 1):
        k, s, d = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.subsample = k == (1, 1) and s != (1, 1) and in_channels // groups < NARROW_CHANNELS
        self._dynamic = not _is_static(k, s, d)
        padding = (0, 0) if self._dynamic else tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
        super().__init__(in_channels, out_channels, k, s, padding, d, groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.subsample:
            return subsampled_conv1x1(x, self.weight, self.bias, self.stride, self.groups)  # type: ignore[arg-type]
        if self._dynamic:
            x = _pad_same(x, self.kernel_size, self.stride, self.dilation)  # type: ignore[arg-type]
        return super().forward(x)


class Pool2dSame(nn.Module):
    """Max or average pooling with TF 'SAME' padding (see the module docstring for ``pad_mode``)."""

    def __init__(self, kind: str, kernel_size: int, stride: int = 1, pad_mode: str = "tf"):
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"pool kind must be 'max' or 'avg', got {kind!r}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.kind, self.kernel_size, self.stride, self.pad_mode = kind, kernel_size, stride, pad_mode

    def extra_repr(self) -> str:
        return f"{self.kind}, kernel_size={self.kernel_size}, stride={self.stride}, pad_mode={self.pad_mode}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        if s == 1:
            if self.kind == "max":
                return F.max_pool2d(x, k, 1, k // 2)
            return F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)
        # TF 'SAME' pads (before, before or before + 1). The pooling's own implicit padding of ``before`` plus
        # ceil_mode (a last window running past the input) covers exactly the same windows without copying the
        # input into a padded one: max pooling ignores both, count_include_pad=False counts only real pixels
        # (TF), and timm's zero padding is a fixed k*k divisor.
        if torch.jit.is_tracing():
            return self._explicitly_padded(x)
        pad = (same_pad_amounts(x.shape[-2], k, s)[0], same_pad_amounts(x.shape[-1], k, s)[0])
        if self.kind == "max":
            return F.max_pool2d(x, k, s, pad, ceil_mode=True)
        if self.pad_mode == "timm":
            return F.avg_pool2d(x, k, s, pad, ceil_mode=True, divisor_override=k * k)
        return F.avg_pool2d(x, k, s, pad, ceil_mode=True, count_include_pad=False)

    def _explicitly_padded(self, x: torch.Tensor) -> torch.Tensor:
        """The same pooling with the 'SAME' padding as an explicit ``F.pad`` and none in the pool, for tracing
        (TorchScript, ONNX): a pool's own padding is a constant of the exported graph (ONNX MaxPool/AveragePool
        ``pads`` attribute), which cannot follow the input size; a Pad node takes the amounts as a tensor."""
        k, s = self.kernel_size, self.stride
        top, bottom = same_pad_amounts(x.shape[-2], k, s)
        left, right = same_pad_amounts(x.shape[-1], k, s)
        pads = (left, right, top, bottom)
        if self.kind == "max":
            return F.max_pool2d(F.pad(x, pads, value=float("-inf")), k, s)
        summed = F.avg_pool2d(F.pad(x, pads), k, s)
        if self.pad_mode == "timm":  # zero padding counted: the mean over k*k
            return summed
        real = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), pads), k, s)  # share of real pixels per window
        return summed / real


class ReLUConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int | tuple[int, int], stride: int | tuple[int, int],
                 norm: NormFactory, dilation: int = 1):
        super().__init__()
        self.act = nn.ReLU()
        self.conv = Conv2dSame(c_in, c_out, kernel_size, stride, dilation)
        self.bn = norm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.act(x)))


class SeparableConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int):
        super().__init__()
        self.depthwise_conv2d = Conv2dSame(c_in, c_in, kernel_size, stride, groups=c_in)
        self.pointwise_conv2d = Conv2dSame(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv2d(self.depthwise_conv2d(x))


class StackedSeparable(nn.Module):
    """A separable conv applied twice: stride and the channel change happen in the first one only."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, norm: NormFactory):
        super().__init__()
        self.act_1 = nn.ReLU()
        self.separable_1 = SeparableConv2d(c_in, c_out, kernel_size, stride)
        self.bn_sep_1 = norm(c_out)
        self.act_2 = nn.ReLU()
        self.separable_2 = SeparableConv2d(c_out, c_out, kernel_size, 1)
        self.bn_sep_2 = norm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_sep_1(self.separable_1(self.act_1(x)))
        return self.bn_sep_2(self.separable_2(self.act_2(x)))


class FactorizedConv(nn.Module):
    """1xK then Kx1 convolution, each ReLU-conv-BN; the stride is split between the two."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, norm: NormFactory):
        super().__init__()
        self.conv_1 = ReLUConvBN(c_in, c_out, (1, kernel_size), (1, stride), norm)
        self.conv_2 = ReLUConvBN(c_out, c_out, (kernel_size, 1), (stride, 1), norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_2(self.conv_1(x))


class PoolOp(nn.Module):
    """Pooling, then a 1x1 conv + BN (no ReLU, as in slim) only when the channel count must change."""

    def __init__(self, kind: str, kernel_size: int, c_in: int, c_out: int, stride: int, norm: NormFactory,
                 pad_mode: str):
        super().__init__()
        self.pool = Pool2dSame(kind, kernel_size, stride, pad_mode)
        self.project = c_in != c_out
        if self.project:
            self.conv = Conv2dSame(c_in, c_out, 1)
            self.bn = norm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return self.bn(self.conv(x)) if self.project else x


def _identity(c_in: int, c_out: int, stride: int, norm: NormFactory, pad_mode: str) -> nn.Module:
    # An identity that must change resolution or channels becomes a 1x1 ReLU-conv-BN (slim).
    return nn.Identity() if stride == 1 and c_in == c_out else ReLUConvBN(c_in, c_out, 1, stride, norm)


# The op table, DARTS style: name -> factory(c_in, c_out, stride, norm, pad_mode). Its keys are exactly
# nasnet_det.space.OPS (tested), the search space's 13 operations.
OpFactory = Callable[[int, int, int, NormFactory, str], nn.Module]
OPS: dict[str, OpFactory] = {
    "identity": _identity,
    "conv_1x3_3x1": lambda c_in, c_out, stride, norm, pad_mode: FactorizedConv(c_in, c_out, 3, stride, norm),
    "conv_1x7_7x1": lambda c_in, c_out, stride, norm, pad_mode: FactorizedConv(c_in, c_out, 7, stride, norm),
    # The paper gives no dilation rate; 2 is the usual reading (DARTS, AmoebaNet).
    "dil_conv_3x3": lambda c_in, c_out, stride, norm, pad_mode: ReLUConvBN(c_in, c_out, 3, stride, norm,
                                                                           dilation=2),
    "avg_pool_3x3": lambda c_in, c_out, stride, norm, pad_mode: PoolOp("avg", 3, c_in, c_out, stride, norm,
                                                                       pad_mode),
    "max_pool_3x3": lambda c_in, c_out, stride, norm, pad_mode: PoolOp("max", 3, c_in, c_out, stride, norm,
                                                                       pad_mode),
    "max_pool_5x5": lambda c_in, c_out, stride, norm, pad_mode: PoolOp("max", 5, c_in, c_out, stride, norm,
                                                                       pad_mode),
    "max_pool_7x7": lambda c_in, c_out, stride, norm, pad_mode: PoolOp("max", 7, c_in, c_out, stride, norm,
                                                                       pad_mode),
    "conv_1x1": lambda c_in, c_out, stride, norm, pad_mode: ReLUConvBN(c_in, c_out, 1, stride, norm),
    "conv_3x3": lambda c_in, c_out, stride, norm, pad_mode: ReLUConvBN(c_in, c_out, 3, stride, norm),
    "sep_conv_3x3": lambda c_in, c_out, stride, norm, pad_mode: StackedSeparable(c_in, c_out, 3, stride, norm),
    "sep_conv_5x5": lambda c_in, c_out, stride, norm, pad_mode: StackedSeparable(c_in, c_out, 5, stride, norm),
    "sep_conv_7x7": lambda c_in, c_out, stride, norm, pad_mode: StackedSeparable(c_in, c_out, 7, stride, norm),
}


def build_op(name: str, c_in: int, c_out: int, stride: int, norm: NormFactory, pad_mode: str = "tf") -> nn.Module:
    """The module for operation ``name`` mapping ``c_in`` to ``c_out`` channels with the given stride."""
    try:
        factory = OPS[name]
    except KeyError:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(OPS)}") from None
    return factory(c_in, c_out, stride, norm, pad_mode)


class FactorizedReduce(nn.Module):
    """slim's factorized reduction: two 1x1 convs on the input and on its one-pixel shift, each sampled
    with stride 2, concatenated; with stride 1 a plain 1x1 conv. ReLU first when ``relu`` is set."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: NormFactory, relu: bool = True):
        super().__init__()
        if stride == 2 and c_out < 2:
            raise ValueError(f"a stride-2 factorized reduction splits its output over two paths and needs at "
                             f"least 2 output channels, got {c_out}")
        self.act = nn.ReLU() if relu else nn.Identity()
        self.stride = stride
        if stride == 1:
            self.path_conv = nn.Conv2d(c_in, c_out, 1, bias=False)
            self.path_bn = norm(c_out)
            return
        self.path_1 = nn.Sequential()
        self.path_1.add_module("conv", nn.Conv2d(c_in, c_out // 2, 1, bias=False))
        self.path_2 = nn.Sequential()
        self.path_2.add_module("conv", nn.Conv2d(c_in, c_out - c_out // 2, 1, bias=False))
        self.final_path_bn = norm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        if self.stride == 1:
            return self.path_bn(self.path_conv(x))
        path_1 = self.path_1(x[:, :, ::2, ::2])
        # slim samples path 2 from the input shifted one pixel up-left with a zero row/column appended; that
        # is x[1::2, 1::2] plus a zero row (column) only where the height (width) is odd.
        shifted = x[:, :, 1::2, 1::2]
        missing_h, missing_w = path_1.shape[-2] - shifted.shape[-2], path_1.shape[-1] - shifted.shape[-1]
        if torch.jit.is_tracing() or missing_h or missing_w:  # traced: the amounts follow the input's size
            shifted = F.pad(shifted, (0, missing_w, 0, missing_h))
        path_2 = self.path_2(shifted)
        return self.final_path_bn(torch.cat([path_1, path_2], 1))


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Drop whole examples of a path with probability ``drop_prob``, rescaling the kept ones (FractalNet)."""
    if not training or drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep
