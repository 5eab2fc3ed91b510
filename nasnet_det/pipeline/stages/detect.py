"""The detect stage: Faster R-CNN training with the pretrained backbone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fvcore.common.config import CfgNode as CN

from nasnet_det.pipeline.backends import Workers
from nasnet_det.pipeline.launch import StageError
from nasnet_det.pipeline.paths import resolve_path
from nasnet_det.pipeline.report import Report, ReportSection, fmt_num, plot_detection_loss
from nasnet_det.pipeline.stages.base import (
    STAGES,
    Context,
    Stage,
    check_detection,
    network_opts,
    network_settings,
    schedule_output,
    tool_node,
    tool_settings,
    trained_with,
)


@STAGES.register()
class DetectStage(Stage):
    """Faster R-CNN training with the pretrained backbone (``tools/train_net.py``, detectron2 launch)."""

    name, needs, positive_keys, resumes = "detect", ("select", "pretrain"), ("NUM_GPUS", "NUM_MACHINES"), True

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        node = tool_node(cfg, "DETECT", "configs/detection/smoke-nasnet-c4.yaml")
        # detectron2 launch: processes per machine (GPUs; gloo processes on a CPU), machines, rank, rendezvous URL.
        node.NUM_GPUS = 1
        node.NUM_MACHINES = 1
        node.MACHINE_RANK = 0
        node.DIST_URL = "auto"

    def workers(self, ctx: Context) -> Workers:
        c = ctx.cfg.DETECT
        return Workers(c.NUM_GPUS, c.NUM_MACHINES, c.MACHINE_RANK, "" if c.DIST_URL == "auto" else c.DIST_URL)

    def settings(self, ctx: Context) -> dict[str, Any]:
        c = ctx.cfg.DETECT
        return {**tool_settings(ctx, "DETECT"), "network": network_settings(ctx.cfg),
                "launch": [c.NUM_GPUS, c.NUM_MACHINES]}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        return {"genotype": ctx.outputs_of("select", self.name)["genotype"],
                "backbone": ctx.outputs_of("pretrain", self.name)["weights"]}

    def detection_config(self, ctx: Context) -> CN:
        """The detectron2 config as the training loads it (its MODEL.DEVICE places the workers)."""
        return check_detection(self.name, ctx.cfg.DETECT.CONFIG_FILE,
                                [*network_opts(ctx.cfg, "nasnet_a"), *ctx.cfg.DETECT.OPTS])

    def check(self, ctx: Context) -> None:
        self.detection_config(ctx)

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        c = ctx.cfg.DETECT
        # Evaluation is the next stage's job: no test set while training (detectron2 would evaluate at the end).
        ctx.backend.run_detection(self.name, workdir, resolve_path(c.CONFIG_FILE),
                                  ["--resume", "OUTPUT_DIR", str(workdir), "DATASETS.TEST", "()",
                                   *network_opts(ctx.cfg, inputs["genotype"]),
                                   "MODEL.NASNET.WEIGHTS", str(inputs["backbone"]), *c.OPTS],
                                  self.workers(ctx), eval_only=False, quiet=ctx.quiet,
                                  device=self.detection_config(ctx).MODEL.DEVICE)

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        if not (workdir / "model_final.pth").is_file():
            raise StageError(self.name, f"the training finished without writing {workdir / 'model_final.pth'}")
        metrics = {}
        events = workdir / "metrics.json"
        if events.is_file():
            rows = [json.loads(ln) for ln in events.read_text().splitlines() if ln.strip().startswith("{")]
            losses = [r for r in rows if "total_loss" in r]
            if losses:
                metrics = {"iterations": losses[-1].get("iteration", 0) + 1,
                           "first_total_loss": losses[0]["total_loss"], "last_total_loss": losses[-1]["total_loss"]}
        return {"weights": str(workdir / "model_final.pth"), "events": str(events),
                "config": str(workdir / "config.yaml"), **schedule_output(workdir)}, \
            {**metrics, **trained_with(self.name, workdir)}

    def report_sections(self, report: Report) -> list[ReportSection]:
        det, lines = report.manifest(self.name), []
        if det.get("status") == "done":
            met = det.get("metrics", {})
            lines += [f"**Faster R-CNN** ({det.get('status')}): {met.get('iterations', '-')} iterations, total loss "
                      f"{fmt_num(met.get('first_total_loss'), 3)} -> {fmt_num(met.get('last_total_loss'), 3)}; "
                      f"detector `{det.get('outputs', {}).get('weights')}`.", ""]
            if plot_detection_loss(Path(report.ctx.abspath(det["outputs"].get("events", ""))),
                                   report.workdir / "detection_loss.png"):
                lines += ["![detection loss](detection_loss.png)", ""]
        return [ReportSection("Training", lines)]
