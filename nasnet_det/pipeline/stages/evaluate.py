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
from nasnet_det.pipeline.plan import Check, PlanContext, StagePlan
from nasnet_det.pipeline.report import Report, ReportSection, fmt_num
from nasnet_det.pipeline.stages.base import (
    STAGES,
    Context,
    Stage,
    check_detection,
    network_opts,
    network_settings,
    tool_settings,
)

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
SAMPLE_DATASET_PREFIX = "coco_sample"  # the embedded 32-photo COCO sample (nasnet_det.data.sample)
# An AP on the photos the detector trained on: what it shows, said beside the number.
TRAINING_FIT = ("AP on the training photos (a fit of the training data, smoke scale: it checks that gradients "
                "reach every part of the chain, not accuracy)")


@STAGES.register()
class EvaluateStage(Stage):
    """COCO box AP of the trained detector (``tools/train_net.py --eval-only``): the 12 numbers and per
    category."""

    name, needs, order, positive_keys = "evaluate", ("select", "detect"), 60, ("NUM_GPUS",)

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

    def plan(self, pc: PlanContext) -> StagePlan:
        from nasnet_det.pipeline.plan_data import coco_datasets
        from nasnet_det.pipeline.plan_stages import (
            config_row,
            device_checks,
            launch_row,
            load_detection,
            plural,
            throughput_rows,
        )

        cfg, name = pc.cfg, self.name
        opts = [*cfg.DETECT.OPTS, *cfg.EVALUATE.OPTS]
        ecfg = load_detection(name, cfg.DETECT.CONFIG_FILE, [*network_opts(cfg, "nasnet_a"), *opts])
        workers = self.workers(pc.ctx)
        tests = list(ecfg.DATASETS.TEST)
        data = coco_datasets(tests, "DATASETS.TEST", list(ecfg.DATASETS.COCO_FILES), False, pc.count_images)
        gpu, checks = device_checks(pc, name, "MODEL.DEVICE", ecfg.MODEL.DEVICE, workers, "EVALUATE.NUM_GPUS")
        if not tests:
            checks.append(Check("FAIL", name, "DATASETS.TEST is empty (DETECT.CONFIG_FILE + DETECT.OPTS + "
                                              "EVALUATE.OPTS): nothing to evaluate"))
        rows = [config_row(cfg.DETECT.CONFIG_FILE, "DETECT.OPTS + EVALUATE.OPTS", opts),
                launch_row(pc, workers, "detectron2 launch", gpu),
                ("devices", f"{plural(workers.world_size, 'GPU')} (MODEL.DEVICE {ecfg.MODEL.DEVICE})" if gpu else
                 f"CPU (MODEL.DEVICE {ecfg.MODEL.DEVICE})"),
                ("images", f"{data.images:,} ({', '.join(tests)}), 1 per device at a time" if data.images else
                 f"unknown ({', '.join(tests) or 'none'})")]
        more, values = throughput_rows(pc, "EVALUATE", float(data.images) if data.images else None,
                                       workers.world_size, gpu)
        rows += [*more, ("data", data.summary)]
        checks += [Check("FAIL", name, p) for p in data.problems] + [Check("WARN", name, r) for r in data.remarks]
        return StagePlan(name, rows, {"processes": workers.world_size, "device": "cuda" if gpu else "cpu",
                                      "images": data.images, **values}, checks)

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
        training_sets = detector_training_sets(report)
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

    def smoke_reasons(self, report: Report) -> list[str]:
        reasons = []
        datasets = list(report.manifest(self.name).get("metrics", {}).get("bbox", {}))
        if datasets and all(d.startswith(SAMPLE_DATASET_PREFIX) for d in datasets):
            reasons.append(f"AP is on photos of the embedded COCO sample ({', '.join(datasets)})")
        trained = detector_training_sets(report) if datasets else []
        fitted = [d for d in datasets if d in trained]
        if fitted:
            reasons.append(f"AP is on the photos the detector trained on ({', '.join(fitted)}): a fit, not "
                           "generalisation")
        return reasons


def detector_training_sets(report: Report) -> list[str]:
    """``DATASETS.TRAIN`` of the trained detector, from the config detectron2 saved beside it (empty when there is
    none)."""
    import yaml

    detect, ctx = report.manifest("detect"), report.ctx
    config = detect.get("outputs", {}).get("config")
    if detect.get("status") != "done" or not config or not Path(ctx.abspath(config)).is_file():
        return []
    saved = yaml.safe_load(Path(ctx.abspath(config)).read_text()) or {}
    return [str(name) for name in (saved.get("DATASETS") or {}).get("TRAIN") or []]
