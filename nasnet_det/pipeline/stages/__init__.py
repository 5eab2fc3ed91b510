"""The stages: search -> select -> cifar (optional) -> pretrain -> detect -> evaluate -> report, one module
each; the framework (:class:`Stage`, :data:`STAGES`, :func:`pipeline_stages`) is :mod:`.base`.

Every module of this package is imported here, so a new stage is its file: it registers itself
(``@STAGES.register()``), and its ``needs`` and ``order`` place it in the run order.
"""

import sys

from nasnet_det.pipeline.stages.base import STAGES, Context, Stage, pipeline_stages, stage_names
from nasnet_det.utils.registry import import_modules

import_modules(sys.modules[__name__])

__all__ = ["STAGES", "Context", "Stage", "pipeline_stages", "stage_names"]
