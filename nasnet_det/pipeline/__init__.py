"""The end-to-end run: search -> select -> (CIFAR) -> pretrain -> Faster R-CNN -> COCO AP -> report.

``nasnet-det pipeline --config-file configs/pipeline/smoke.yaml`` (or ``tools/run_pipeline.py``). Each stage
writes into ``OUTPUT_DIR/<stage>/`` with a ``manifest.json``; rerunning skips finished stages, resumes an
interrupted one and reruns what changed (see :mod:`nasnet_det.pipeline.runner`).
"""

from nasnet_det.pipeline.config import get_pipeline_cfg, load_pipeline_config
from nasnet_det.pipeline.launch import StageError
from nasnet_det.pipeline.runner import Pipeline, select_stages
from nasnet_det.pipeline.stages import STAGES, Stage, pipeline_stages, stage_names

__all__ = ["STAGES", "Pipeline", "Stage", "StageError", "get_pipeline_cfg", "load_pipeline_config", "pipeline_stages",
           "select_stages", "stage_names"]
