"""Drawing of a genotype's normal and reduction cells as a graph (matplotlib only, no graphviz). Used by the
search (best cells) and the pipeline report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from nasnet_det.space import NUM_INPUTS, CellSpec, Genotype  # noqa: E402
from nasnet_det.utils.io import save_figure  # noqa: E402

_STATE_NAMES = {0: "h_i", 1: "h_{i-1}"}


def _box(ax, x: float, y: float, text: str, colour: str, w: float = 1.5, h: float = 0.5) -> None:
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05", fc=colour,
                                ec="black", lw=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=7)


def _arrow(ax, a: tuple[float, float], b: tuple[float, float]) -> None:
    ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="->", lw=0.7, color="0.3",
                                                    shrinkA=9, shrinkB=9))


def draw_cell(ax, cell: CellSpec, title: str) -> None:
    """Inputs at the bottom, one column per block (two op boxes -> combine), the concat output on top."""
    n, col = cell.num_blocks, 3.2
    mid = 0.5 * (n - 1) * col
    pos: dict[int, tuple[float, float]] = {0: (mid - 1.5, 0.0), 1: (mid + 1.5, 0.0)}
    for s in (0, 1):
        _box(ax, *pos[s], _STATE_NAMES[s], "#cfe8ff")
    for b, block in enumerate(cell.blocks):
        x = b * col
        y_op, y_comb = 1.6 + 0.9 * b, 2.5 + 0.9 * b
        for k, (inp, op) in enumerate(zip(block.inputs(), block.ops())):
            ox = x + (k - 0.5) * 1.55
            _box(ax, ox, y_op, op, "#fff2cc", w=1.4, h=0.45)
            _arrow(ax, pos[inp], (ox, y_op))
            _arrow(ax, (ox, y_op), (x, y_comb))
        _box(ax, x, y_comb, f"{block.combine}\n(state {NUM_INPUTS + b})", "#d9ead3", w=1.0, h=0.5)
        pos[NUM_INPUTS + b] = (x, y_comb)
    out = (mid, 2.5 + 0.9 * n + 0.6)
    _box(ax, *out, "concat -> h_{i+1}", "#f4cccc", w=1.8)
    for s in cell.concat:
        _arrow(ax, pos[s], out)
    ax.set_xlim(-1.8, (n - 1) * col + 1.8)
    ax.set_ylim(-0.6, out[1] + 0.6)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def draw_genotype(genotype: Genotype, path: str | Path, title: str = "") -> Path:
    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(18, 6.5))
    draw_cell(axes[0], genotype.normal, "normal cell")
    draw_cell(axes[1], genotype.reduce, "reduction cell")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
