"""The cifar stage (optional): final CIFAR-10 training of the chosen cell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fvcore.common.config import CfgNode as CN

from nasnet_det.pipeline.paths import resolve_path
from nasnet_det.pipeline.plan import PlanContext, StagePlan
from nasnet_det.pipeline.stages.base import (
    STAGES,
    ClassificationStage,
    Context,
    check_classification,
    genotype_opts,
    tool_node,
    tool_settings,
)


@STAGES.register()
class CifarStage(ClassificationStage):
    """Final CIFAR-10 training of the chosen cell (``tools/train_cifar.py``; optional: CIFAR.ENABLED)."""

    name, node, tool, dataset = "cifar", "CIFAR", "train_cifar.py", "cifar10"
    title = "CIFAR-10 final training"
    needs, order, positive_keys = ("select",), 30, ("NPROC_PER_NODE",)

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        node = tool_node(cfg, "CIFAR", "configs/train/cifar10_smoke.yaml")
        node.ENABLED = False
        node.NPROC_PER_NODE = 1  # > 1: torchrun --nproc-per-node (one process per GPU; gloo on a CPU)

    def enabled(self, ctx: Context) -> bool:
        return bool(ctx.cfg.CIFAR.ENABLED)

    def settings(self, ctx: Context) -> dict[str, Any]:
        return {**tool_settings(ctx, "CIFAR"), **self.launch_settings(ctx)}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        return {"genotype": ctx.outputs_of("select", self.name)["genotype"]}

    def training_config(self, ctx: Context) -> CN:
        c = ctx.cfg.CIFAR
        return check_classification(self.name, "CIFAR", c.CONFIG_FILE, [*genotype_opts("nasnet_a"), *c.OPTS],
                                     "cifar10")

    def plan(self, pc: PlanContext) -> StagePlan:
        from nasnet_det.pipeline.plan_stages import plan_classification

        c = pc.cfg.CIFAR
        return plan_classification(pc, self.name, "CIFAR", "CIFAR.CONFIG_FILE", c.CONFIG_FILE, list(c.OPTS),
                                   genotype_opts("nasnet_a"), "cifar10", self.workers(pc.ctx), "CIFAR.NPROC_PER_NODE")

    def check(self, ctx: Context) -> None:
        self.training_config(ctx)

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        c = ctx.cfg.CIFAR
        self.train(ctx, workdir, ["--config-file", str(resolve_path(c.CONFIG_FILE)), "--output-dir", str(workdir),
                                  *genotype_opts(inputs["genotype"]), *c.OPTS])
