"""The stages: search -> select -> cifar (optional) -> pretrain -> detect -> evaluate -> report, one module
each; the framework (:class:`Stage`, :data:`STAGES`, :func:`pipeline_stages`) is :mod:`.base`.

Importing this package registers every stage, in the order below (the tie-break of the run order where
``needs`` leaves a choice). A new stage is one module here, imported below.
"""

from nasnet_det.pipeline.stages.base import STAGES, Context, Stage, pipeline_stages, stage_names

# isort: off
# Registration by import, in this order.
from nasnet_det.pipeline.stages import search, select, cifar, pretrain, detect, evaluate, report  # noqa: F401
# isort: on

__all__ = ["STAGES", "Context", "Stage", "pipeline_stages", "stage_names"]
