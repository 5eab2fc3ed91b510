"""The report stage: ``report.md`` from every stage's manifest and report sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fvcore.common.config import CfgNode as CN

from nasnet_det.pipeline.manifest import MANIFEST_NAME
from nasnet_det.pipeline.plan import PlanContext, StagePlan
from nasnet_det.pipeline.report import write_report
from nasnet_det.pipeline.stages.base import STAGES, Context, Stage, network_settings, pipeline_stages


@STAGES.register()
class ReportStage(Stage):
    """``report.md`` with its PNGs (see :mod:`nasnet_det.pipeline.report`)."""

    name, needs, runs_last = "report", ("select",), True

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        cfg.REPORT = CN()
        cfg.REPORT.PROFILE_IMAGE_SIZE = 224  # image size of the backbone's mult-add count
        # draw the detector's top boxes on 4 embedded COCO photos (the demo tool, ~10 s of a CPU)
        cfg.REPORT.SAMPLE_DETECTIONS = True

    def reported(self) -> list[Stage]:
        return [s for s in pipeline_stages() if s.name != self.name]

    def settings(self, ctx: Context) -> dict[str, Any]:
        return {"profile_image_size": ctx.cfg.REPORT.PROFILE_IMAGE_SIZE, "network": network_settings(ctx.cfg),
                "sample_detections": bool(ctx.cfg.REPORT.SAMPLE_DETECTIONS)}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        # The report shows every stage's manifest: a stage rerun on its own (--only) must redo the report.
        manifests = {f"{s.name}_manifest": ctx.stage_dir(s.name) / MANIFEST_NAME for s in self.reported()
                     if (ctx.stage_dir(s.name) / MANIFEST_NAME).is_file()}
        return {"genotype": ctx.outputs_of("select", self.name)["genotype"], **manifests}

    def plan(self, pc: PlanContext) -> StagePlan:
        drawn = (", the detector's top boxes on 4 embedded photos (one demo process)"
                 if pc.cfg.REPORT.SAMPLE_DETECTIONS else "")
        return StagePlan(self.name, [("runs", "in the pipeline's process, on this machine's CPU: tables, plots, the "
                                              f"backbone's params and mult-adds{drawn}")])

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        write_report(ctx, workdir, self.reported())

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"report": str(workdir / "report.md")}, {}
