"""Cell drawings: moved to :mod:`nasnet_det.draw` (the pipeline's report draws genotypes too, and
``nasnet_det`` never imports ``search``); kept here for the search's own imports."""

from nasnet_det.draw import draw_cell, draw_genotype

__all__ = ["draw_cell", "draw_genotype"]
