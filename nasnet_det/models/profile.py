"""Parameter and mult-add counts of NASNet configurations next to the paper's numbers.

Params are trainable parameters without the auxiliary head (the paper's convention; slim's aux head is
built only for training). Mult-adds are fvcore's multiply-accumulate counts of the conv and FC layers only
(BatchNorm, pooling, ReLU and additions are left out, as in the paper).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from nasnet_det.models import create_model
from nasnet_det.models.nasnet import NASNet


@dataclass(frozen=True)
class PaperRow:
    label: str
    dataset: str  # cifar | imagenet
    num_cells: int
    penultimate_filters: int
    image_size: int
    params_m: float  # published, millions
    mult_adds_m: float | None  # published, millions
    checked: bool  # True: must reproduce (2% params, 5% mult-adds); False: published counts do not follow
    note: str = ""


PAPER_ROWS: tuple[PaperRow, ...] = (
    PaperRow("NASNet-A 6@768 (CIFAR-10)", "cifar", 6, 768, 32, 3.3, None, True),
    PaperRow("NASNet-A 4@1056 (mobile)", "imagenet", 4, 1056, 224, 5.3, 564.0, True),
    PaperRow("NASNet-A 6@4032 (large)", "imagenet", 6, 4032, 331, 88.9, 23800.0, True),
    PaperRow("NASNet-A 7@2304 (CIFAR-10)", "cifar", 7, 2304, 32, 27.6, None, False,
             "exact config unpublished"),
    PaperRow("NASNet-A 5@1538", "imagenet", 5, 1538, 299, 10.9, 2350.0, False,
             "1538 is not a multiple of 24: built as 5@1536"),
    PaperRow("NASNet-A 7@1920", "imagenet", 7, 1920, 299, 22.6, 4930.0, False, "exact config unpublished"),
)
PARAM_TOLERANCE = 0.02
MULT_ADD_OPS = ("conv", "linear", "matmul", "addmm")
MULT_ADD_TOLERANCE = 0.05


def count_params(model: nn.Module, include_aux: bool = False) -> int:
    return sum(p.numel() for name, p in model.named_parameters()
               if p.requires_grad and (include_aux or not name.startswith("aux_head.")))


def count_mult_adds(model: nn.Module, image_size: int, in_chans: int = 3) -> int:
    """fvcore's multiply-accumulate count for one image, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # fvcore traces with the deprecated torch.jit API
            analysis = FlopCountAnalysis(model, torch.zeros(1, in_chans, image_size, image_size))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            # The paper counts convolutions and the classifier; fvcore would also count BN and pooling.
            return int(sum(v for op, v in analysis.by_operator().items() if op in MULT_ADD_OPS))
    finally:
        model.train(was_training)


@torch.no_grad()
def conv_mult_adds(model: nn.Module, x: torch.Tensor) -> int:
    """The same count as :func:`count_mult_adds` (multiply-accumulates of the conv and linear layers) from
    forward hooks during one run on ``x``, without fvcore's trace (~2 s a network): for counting every child
    of a search. Covers ``nn.Conv2d`` and ``nn.Linear`` (every multiply-accumulating layer of a NASNet
    backbone); a model with matmuls outside them needs :func:`count_mult_adds`."""
    total = 0

    def conv(mod: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

    def linear(mod: nn.Linear, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * mod.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return int(total)


def row_preset(row: PaperRow) -> str:
    """The preset whose stem and skip settings a row uses (the other ImageNet sizes follow slim's large)."""
    if row.dataset == "cifar":
        return "nasnet_a_cifar"
    return "nasnet_a_mobile" if row.penultimate_filters == 1056 else "nasnet_a_large"


def build_row_model(row: PaperRow) -> NASNet:
    return create_model(row_preset(row), num_cells=row.num_cells, penultimate_filters=row.penultimate_filters,
                        image_size=row.image_size)


@dataclass(frozen=True)
class ProfileResult:
    row: PaperRow
    params: int
    mult_adds: int | None

    @property
    def params_gap(self) -> float:
        return self.params / (self.row.params_m * 1e6) - 1.0

    @property
    def mult_adds_gap(self) -> float | None:
        if self.row.mult_adds_m is None or self.mult_adds is None:
            return None
        return self.mult_adds / (self.row.mult_adds_m * 1e6) - 1.0

    @property
    def within_tolerance(self) -> bool:
        ok = abs(self.params_gap) <= PARAM_TOLERANCE
        gap = self.mult_adds_gap
        return ok and (gap is None or abs(gap) <= MULT_ADD_TOLERANCE)


def profile_row(row: PaperRow, mult_adds: bool = True) -> ProfileResult:
    model = build_row_model(row)
    macs = count_mult_adds(model, row.image_size) if mult_adds else None
    return ProfileResult(row, count_params(model), macs)


def format_table(results: list[ProfileResult]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:+.2f}%"

    header = (f"{'model':<30} {'px':>4} {'params':>9} {'paper':>7} {'gap':>8} "
              f"{'mult-adds':>10} {'paper':>8} {'gap':>8}  status")
    lines = [header, "-" * len(header)]
    for r in results:
        macs = "-" if r.mult_adds is None else f"{r.mult_adds / 1e6:,.0f}M"
        paper_macs = "-" if r.row.mult_adds_m is None else f"{r.row.mult_adds_m:,.0f}M"
        if r.row.checked:
            status = "OK" if r.within_tolerance else "OUT OF TOLERANCE"
        else:
            status = f"reported only ({r.row.note})"
        lines.append(f"{r.row.label:<30} {r.row.image_size:>4} {r.params / 1e6:>8.3f}M {r.row.params_m:>6.1f}M "
                     f"{pct(r.params_gap):>8} {macs:>10} {paper_macs:>8} {pct(r.mult_adds_gap):>8}  {status}")
    lines.append(f"Tolerances for the checked rows: params {PARAM_TOLERANCE:.0%}, mult-adds {MULT_ADD_TOLERANCE:.0%}. "
                 "Params exclude the aux head; mult-adds are fvcore conv+FC counts.")
    return "\n".join(lines)
