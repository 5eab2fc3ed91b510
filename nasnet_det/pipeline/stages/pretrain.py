"""The pretrain stage: ImageNet pretraining of the pipeline's network with the chosen cell, or given weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fvcore.common.config import CfgNode as CN

from nasnet_det.pipeline.launch import StageError
from nasnet_det.pipeline.paths import resolve_path
from nasnet_det.pipeline.plan import Check, PlanContext, StagePlan
from nasnet_det.pipeline.stages.base import (
    STAGES,
    ClassificationStage,
    Context,
    check_classification,
    file_setting,
    network_opts,
    network_settings,
    tool_node,
    tool_settings,
)


@STAGES.register()
class PretrainStage(ClassificationStage):
    """ImageNet pretraining at the MODEL.NASNET's N@F (``tools/pretrain_imagenet.py``, torchrun for > 1
    process), or given weights (the shortcut: our checkpoint, or a timm / pretrainedmodels state dict)."""

    name, node, tool, dataset = "pretrain", "PRETRAIN", "pretrain_imagenet.py", "imagenet"
    title = "ImageNet pretraining"
    needs, order, positive_keys = ("select",), 40, ("NPROC_PER_NODE", "NNODES")

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        node = tool_node(cfg, "PRETRAIN", "configs/train/imagenet_smoke.yaml")
        # Shortcut: a nasnet-det checkpoint (.pth with arch + state_dict) or a timm / pretrainedmodels state
        # dict of the MODEL.NASNET network; pretraining then does not run.
        node.WEIGHTS = ""
        # torchrun: processes per machine, machines, this machine's rank, rendezvous HOST:PORT (multi-machine
        # only).
        node.NPROC_PER_NODE = 1
        node.NNODES = 1
        node.NODE_RANK = 0
        node.RDZV_ENDPOINT = ""

    def settings(self, ctx: Context) -> dict[str, Any]:
        if ctx.cfg.PRETRAIN.WEIGHTS:  # checked against the network: a changed network checks them again
            return {"weights": file_setting(ctx.cfg.PRETRAIN.WEIGHTS), "network": network_settings(ctx.cfg)}
        return {**tool_settings(ctx, "PRETRAIN"), **self.launch_settings(ctx), "network": network_settings(ctx.cfg)}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        inputs = {"genotype": ctx.outputs_of("select", self.name)["genotype"]}
        if ctx.cfg.PRETRAIN.WEIGHTS:
            w = resolve_path(ctx.cfg.PRETRAIN.WEIGHTS)
            if not w.is_file():
                raise StageError(self.name, f"PRETRAIN.WEIGHTS {ctx.cfg.PRETRAIN.WEIGHTS!r} does not exist "
                                            "(expected a nasnet-det checkpoint or a timm / pretrainedmodels "
                                            "state dict .pth of the MODEL.NASNET network)")
            inputs["weights"] = w
        return inputs

    def training_config(self, ctx: Context) -> CN:
        c = ctx.cfg.PRETRAIN
        return check_classification(self.name, "PRETRAIN", c.CONFIG_FILE,
                                     [*network_opts(ctx.cfg, "nasnet_a"), *c.OPTS], "imagenet")

    def plan(self, pc: PlanContext) -> StagePlan:
        from nasnet_det.pipeline.plan_stages import multi_machine_check, plan_classification

        c = pc.cfg.PRETRAIN
        if c.WEIGHTS:
            found = resolve_path(c.WEIGHTS).is_file()
            missing = [] if found else [Check("FAIL", self.name, f"PRETRAIN.WEIGHTS {c.WEIGHTS} does not exist")]
            return StagePlan(self.name, [("runs", f"no: PRETRAIN.WEIGHTS {c.WEIGHTS} given ("
                                                  f"{'found' if found else 'MISSING'})")], {}, missing)
        workers = self.workers(pc.ctx)
        p = plan_classification(pc, self.name, "PRETRAIN", "PRETRAIN.CONFIG_FILE", c.CONFIG_FILE, list(c.OPTS),
                                network_opts(pc.cfg, "nasnet_a"), "imagenet", workers, "PRETRAIN.NPROC_PER_NODE")
        p.checks += multi_machine_check(pc, self.name, workers.machines, not c.RDZV_ENDPOINT,
                                        "PRETRAIN.NODE_RANK 0..N-1 and a shared PRETRAIN.RDZV_ENDPOINT HOST:PORT")
        return p

    def check(self, ctx: Context) -> None:
        if not ctx.cfg.PRETRAIN.WEIGHTS:
            self.training_config(ctx)

    def validate(self, ctx: Context, inputs: dict[str, Path]) -> None:
        if not ctx.cfg.PRETRAIN.WEIGHTS:
            return
        # Given weights must fit the network and the chosen cell: find out now, not in the detection stage.
        import torch
        from torch import nn

        from nasnet_det.detection.weights import load_pretrained_nasnet
        from nasnet_det.models import create_model

        try:
            torch.load(inputs["weights"], map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - whatever torch.load raises, the file is not a checkpoint
            raise StageError(self.name, f"PRETRAIN.WEIGHTS {inputs['weights']} is not a readable PyTorch file "
                                        f"(expected a nasnet-det checkpoint or a timm / pretrainedmodels state "
                                        f"dict .pth): {type(e).__name__}: {e}") from None
        try:  # the path, not the loaded dict: a nasnet-det checkpoint's arch is checked too
            backbone = create_model(ctx.cfg, num_classes=0, genotype=str(inputs["genotype"]))  # no classifier
            load_pretrained_nasnet(nn.Sequential(backbone), inputs["weights"], strict=True)
        except Exception as e:  # noqa: BLE001 - a mismatched file is the same bad input
            raise StageError(self.name, f"PRETRAIN.WEIGHTS {inputs['weights']} does not fit MODEL.NASNET and the "
                                        f"selected genotype {inputs['genotype']}: {e}") from None

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        c = ctx.cfg.PRETRAIN
        workdir.mkdir(parents=True, exist_ok=True)
        if c.WEIGHTS:  # checked by validate
            return
        self.train(ctx, workdir, ["--config-file", str(resolve_path(c.CONFIG_FILE)), "--output-dir", str(workdir),
                                  *network_opts(ctx.cfg, inputs["genotype"]), *c.OPTS])

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        if ctx.cfg.PRETRAIN.WEIGHTS:
            return {"kind": "given", "weights": str(resolve_path(ctx.cfg.PRETRAIN.WEIGHTS).resolve())}, {}
        outputs, metrics = super().collect(ctx, workdir)
        return {"kind": "pretrained", **outputs}, metrics
