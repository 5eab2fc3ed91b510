"""The evaluate stage: COCO box AP of the trained detector."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fvcore.common.config import CfgNode as CN

from nasnet_det.pipeline.backends import Workers
from nasnet_det.pipeline.launch import StageError
from nasnet_det.pipeline.paths import resolve_path
from nasnet_det.pipeline.report import AP_KEYS, TRAINING_FIT, Report, ReportSection, detector_training_sets, fmt_num
from nasnet_det.pipeline.stages.base import (
    STAGES,
    Context,
    Stage,
    check_detection,
    network_opts,
    network_settings,
    tool_settings,
)


@STAGES.register()
class EvaluateStage(Stage):
    """COCO box AP of the trained detector (``tools/train_net.py --eval-only``): the 12 numbers and per
    category."""

    name, needs, positive_keys = "evaluate", ("select", "detect"), ("NUM_GPUS",)

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        cfg.EVALUATE = CN()
        cfg.EVALUATE.OPTS = []  # on top of DETECT.CONFIG_FILE + DETECT.OPTS (e.g. DATASETS.TEST)
        cfg.EVALUATE.NUM_GPUS = 1

    def workers(self, ctx: Context) -> Workers:
        return Workers(ctx.cfg.EVALUATE.NUM_GPUS)

    def settings(self, ctx: Context) -> dict[str, Any]:
        return {**tool_settings(ctx, "DETECT"), "eval_opts": list(ctx.cfg.EVALUATE.OPTS),
                "network": network_settings(ctx.cfg), "launch": ctx.cfg.EVALUATE.NUM_GPUS}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        return {"genotype": ctx.outputs_of("select", self.name)["genotype"],
                "detector": ctx.outputs_of("detect", self.name)["weights"]}

    def check(self, ctx: Context) -> None:
        self.detection_config(ctx)

    def detection_config(self, ctx: Context) -> CN:
        """The detectron2 config as the evaluation loads it (its MODEL.DEVICE places the workers)."""
        return check_detection(self.name, ctx.cfg.DETECT.CONFIG_FILE, [*network_opts(ctx.cfg, "nasnet_a"),
                                                                        *ctx.cfg.DETECT.OPTS, *ctx.cfg.EVALUATE.OPTS])

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        if workdir.is_dir():  # evaluation has nothing to resume: start clean so no stale result is read
            shutil.rmtree(workdir / "inference", ignore_errors=True)
        c = ctx.cfg.DETECT
        ctx.backend.run_detection(self.name, workdir, resolve_path(c.CONFIG_FILE),
                                  ["OUTPUT_DIR", str(workdir), *network_opts(ctx.cfg, inputs["genotype"]),
                                   *c.OPTS, *ctx.cfg.EVALUATE.OPTS, "MODEL.WEIGHTS", str(inputs["detector"])],
                                  self.workers(ctx), eval_only=True, quiet=ctx.quiet,
                                  device=self.detection_config(ctx).MODEL.DEVICE)

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        found = sorted((workdir / "inference").glob("*/coco_metrics.json"))
        if not found:
            raise StageError(self.name, f"the evaluation wrote no {workdir}/inference/<dataset>/coco_metrics.json "
                                        "(is DATASETS.TEST empty?)")
        results = {p.parent.name: json.loads(p.read_text()).get("bbox", {}) for p in found}
        return {"coco_metrics": {k: str(workdir / "inference" / k / "coco_metrics.json") for k in results}}, \
            {"bbox": results}

    def report_sections(self, report: Report) -> list[ReportSection]:
        ev, lines = report.manifest(self.name), []
        training_sets = detector_training_sets(report.ctx, report.manifest("detect"))
        for dataset, res in ev.get("metrics", {}).get("bbox", {}).items():
            if dataset in training_sets:  # scored on the photos it trained on: said beside the number
                lines += [f"**{TRAINING_FIT}: {fmt_num(res.get('AP'), 1)}** (dataset `{dataset}`, the detector's "
                          "`DATASETS.TRAIN`).", ""]
            lines += [f"Dataset `{dataset}`{report.tag}:", "", "| " + " | ".join(AP_KEYS) + " |",
                      "|" + " --- |" * len(AP_KEYS), "| " + " | ".join(fmt_num(res.get(k)) for k in AP_KEYS) + " |", ""]
            # Categories without ground truth in the dataset have no AP (NaN): leave them out.
            per_cat = sorted((k[3:], v) for k, v in res.items() if k.startswith("AP-") and v == v)
            if per_cat:
                lines += [f"<details><summary>per-category AP ({len(per_cat)} categories with ground truth)"
                          "</summary>", "", "| category | AP |", "| --- | --- |"]
                lines += [f"| {c} | {fmt_num(v)} |" for c, v in per_cat]
                lines += ["", "</details>", ""]
        if not ev.get("metrics"):
            lines += ["Not evaluated.", ""]
        return [ReportSection("COCO box AP", lines)]
