""":func:`make_plan`: the plan of a pipeline config, each stage's part from its own :meth:`Stage.plan` (which
plans with the helpers of :mod:`nasnet_det.pipeline.plan_stages`). Above the stages: it imports them, they do not
import it."""

from __future__ import annotations

from pathlib import Path

from fvcore.common.config import CfgNode as CN

from nasnet_det.pipeline.plan import Machine, Plan, PlanContext, StagePlan, Target
from nasnet_det.pipeline.stages.base import Context, pipeline_stages


def make_plan(cfg: CN, stages: list[str] | None = None, target: Target | None = None, config_file: str = "",
              ctx: Context | None = None, count_images: bool = True) -> Plan:
    """The plan of the pipeline config ``cfg`` for the ``stages`` named (default: all, in order). A plan for
    another machine: ``cfg`` loaded with :func:`nasnet_det.pipeline.plan.scale_opts` and ``target`` naming
    its gpus / nodes. ``ctx``: the running pipeline's stage context. ``count_images`` False: the data folders are
    listed, not counted (ImageNet: a 1.28M-file walk), and the epochs use the datasets' published sizes. Bad
    input (a stage config that does not load) raises ``ValueError`` naming the stage and key."""
    target = target or Target(Machine.this_one())
    ctx = ctx or Context(cfg, Path(cfg.OUTPUT_DIR).resolve(), quiet=True)
    pc = PlanContext(cfg, ctx, target, count_images)
    planned = []
    for stage in pipeline_stages():
        if stages is not None and stage.name not in stages:
            continue
        if not stage.enabled(ctx):
            planned.append(StagePlan(stage.name, [("runs", f"no: disabled ({stage.name.upper()}.ENABLED False)")]))
            continue
        planned.append(stage.plan(pc))
    return Plan(config_file or "the pipeline config", target, planned)
