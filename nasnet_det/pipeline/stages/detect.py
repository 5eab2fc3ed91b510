"""The detect stage: Faster R-CNN training with the pretrained backbone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fvcore.common.config import CfgNode as CN

from nasnet_det.pipeline.backends import Workers
from nasnet_det.pipeline.launch import StageError, python, run_tool, tool_path
from nasnet_det.pipeline.paths import resolve_path
from nasnet_det.pipeline.plan import Check, PlanContext, StagePlan
from nasnet_det.pipeline.report import Part, Report, ReportSection, fmt_num
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
from nasnet_det.utils.io import save_figure

# Below this many iterations a detector has barely begun: its figures check the chain, they do not measure.
SMOKE_DETECTION_ITERATIONS = 1_000
DETECTIONS_DIR = "detections"  # under the report folder: the drawn photos and detections.json (issue 21)


@STAGES.register()
class DetectStage(Stage):
    """Faster R-CNN training with the pretrained backbone (``tools/train_net.py``, detectron2 launch)."""

    name, needs, order, resumes = "detect", ("select", "pretrain"), 50, True
    positive_keys = ("NUM_GPUS", "NUM_MACHINES")

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

    def plan(self, pc: PlanContext) -> StagePlan:
        from nasnet_det.engine.scaling import detection_schedule
        from nasnet_det.pipeline.plan_data import coco_datasets
        from nasnet_det.pipeline.plan_stages import (
            config_row,
            device_checks,
            launch_row,
            load_detection,
            multi_machine_check,
            plural,
            throughput_rows,
        )

        cfg, name = pc.cfg, self.name
        c = cfg.DETECT
        dcfg = load_detection(name, c.CONFIG_FILE, [*network_opts(cfg, "nasnet_a"), *c.OPTS])
        workers = self.workers(pc.ctx)
        world = workers.world_size
        data = coco_datasets(list(dcfg.DATASETS.TRAIN), "DATASETS.TRAIN", list(dcfg.DATASETS.COCO_FILES), True,
                             pc.count_images)
        gpu, checks = device_checks(pc, name, "MODEL.DEVICE", dcfg.MODEL.DEVICE, workers, "DETECT.NUM_GPUS")
        checks += multi_machine_check(pc, name, workers.machines, c.DIST_URL == "auto",
                                      "DETECT.MACHINE_RANK 0..N-1 and a shared DETECT.DIST_URL tcp://HOST:PORT")
        rows = [config_row(c.CONFIG_FILE, "DETECT.OPTS", list(c.OPTS)),
                launch_row(pc, workers, "detectron2 launch", gpu),
                ("devices", f"{plural(world, 'GPU')}, one per process (MODEL.DEVICE {dcfg.MODEL.DEVICE})" if gpu else
                 f"CPU (MODEL.DEVICE {dcfg.MODEL.DEVICE})")]
        values: dict[str, Any] = {"processes": world, "per_machine": workers.per_machine, "machines": workers.machines,
                                  "device": "cuda" if gpu else "cpu"}
        try:
            s = detection_schedule(dcfg, world, data.images)
        except ValueError as e:
            checks.append(Check("FAIL", name, str(e)))
            s = None
        if s is not None:
            sv = dcfg.SOLVER
            if s.ims_per_batch % world:
                checks.append(Check("FAIL", name, f"the global batch of {s.ims_per_batch} images per iteration "
                                                  f"(SOLVER.IMS_PER_BATCH {sv.IMS_PER_BATCH}, REFERENCE_WORLD_SIZE "
                                                  f"{sv.REFERENCE_WORLD_SIZE}) is not divisible by the {world} "
                                                  "processes"))
            rule = (f"; SOLVER.IMS_PER_BATCH {sv.IMS_PER_BATCH} is the batch of REFERENCE_WORLD_SIZE "
                    f"{s.reference_world_size} devices" if s.reference_world_size > 0 else "")
            stated = (f"stated for {s.reference_ims} images per iteration" if s.reference_ims > 0 else
                      f"stated for SOLVER.IMS_PER_BATCH {sv.IMS_PER_BATCH}" if s.reference_world_size > 0 else
                      "as written (SOLVER.REFERENCE_IMS_PER_BATCH 0)")
            precision = sv.AMP.get("PRECISION", "auto")
            on_gpu = {"auto": "bf16 where the GPU computes it natively (A100, H100, ...), else fp16 with a gradient "
                              "scaler (SOLVER.AMP.PRECISION auto; detectron2 AMPTrainer)",
                      "bfloat16": "bf16 (detectron2 AMPTrainer)",
                      "float16": "fp16 with a gradient scaler (detectron2 AMPTrainer)"}.get(precision, precision)
            amp = (on_gpu if gpu else "bf16 autocast (CPU)") if sv.AMP.ENABLED else "off: fp32"
            rows += [("batch", f"{s.ims_per_device or '-'} per device = {s.ims_per_batch} images per iteration "
                               f"(global){rule}"),
                     ("learning rate", f"{s.lr:.6g} (BASE_LR {s.base_lr:g} {stated}); {s.lr_per_image:.6g} per image"),
                     ("iterations", f"{s.max_iter:,}; LR x{sv.GAMMA:g} at {list(s.steps)}"),
                     ("epochs", f"{s.epochs:.2f} of {s.train_images:,} training images" if s.train_images else
                      "unknown"),
                     ("warm-up", f"{s.warmup_iters:,} iterations"),
                     ("AMP", f"{amp} (SOLVER.AMP.ENABLED {sv.AMP.ENABLED})")]
            values.update(schedule=s.as_dict(), amp=amp)
        more, tv = throughput_rows(pc, "DETECT", float(s.max_iter * s.ims_per_batch) if s else None, world, gpu)
        rows += [*more, ("data", data.summary)]
        checks += [Check("FAIL", name, p) for p in data.problems] + [Check("WARN", name, r) for r in data.remarks]
        values.update(tv, data={"summary": data.summary, "train_images": data.images})
        return StagePlan(name, rows, values, checks)

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
        return [ReportSection("Training", lines),
                ReportSection("Sample detections", self.sample_detections(report), Part.DEMO)]

    def smoke_reasons(self, report: Report) -> list[str]:
        iters = report.manifest(self.name).get("metrics", {}).get("iterations")
        if isinstance(iters, int) and iters < SMOKE_DETECTION_ITERATIONS:
            return [f"the detector trained {iters} iterations"]
        return []

    def sample_detections(self, report: Report) -> list[str]:
        """Markdown showing the trained detector's top-scoring boxes on the embedded COCO photos, drawn by the demo
        tool (``--samples``) in a process of its own: the pipeline driver does not load torch or detectron2."""
        ctx, detect, workdir = report.ctx, report.manifest(self.name), report.workdir
        lines: list[str] = []
        outputs = detect.get("outputs", {})
        if detect.get("status") != "done" or not outputs.get("config"):
            return lines + ["Not drawn: no trained detector.", ""]
        folder = workdir / DETECTIONS_DIR
        shutil.rmtree(folder, ignore_errors=True)  # no picture of an earlier detector is left to be shown
        if not ctx.cfg.REPORT.SAMPLE_DETECTIONS:
            return lines + ["Not drawn (REPORT.SAMPLE_DETECTIONS False).", ""]
        argv = [python(ctx.cfg), str(tool_path("report", "demo.py")), "--config-file",
                str(ctx.abspath(outputs["config"])), "--samples", "--output", str(folder), "MODEL.WEIGHTS",
                str(ctx.abspath(outputs["weights"]))]
        try:  # run by the report stage, which writes these lines
            run_tool("report", argv, workdir, ctx.quiet)
        except StageError as e:  # e.g. a detector of other classes than the sample's 80 COCO ones
            return lines + [f"Not drawn: {e}", ""]
        listing = json.loads((folder / "detections.json").read_text())
        dataset = listing[0].get("dataset", "the embedded COCO sample") if listing else "the embedded COCO sample"
        lines += [f"Photos of `{dataset}` (embedded in the package): left, the ground-truth boxes; right, the "
                  "detector's top-scoring boxes (no score threshold), labelled with class and score.", "",
                  "| ground truth | detector |", "| --- | --- |"]
        for item in listing:
            truth = (f"![{item['truth_image']}]({DETECTIONS_DIR}/{item['truth_image']})" if item.get("truth_image")
                     else "-")
            lines.append(f"| {truth} | ![{item['image']}]({DETECTIONS_DIR}/{item['image']}) |")
        lines.append("")
        for item in listing:
            found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in item["detections"]) or "no boxes"
            truth = f"{len(item['truth'])} ground-truth boxes; " if "truth" in item else ""
            lines += [f"`{item['image']}`: {truth}detected {found}", ""]
        return lines


def plot_detection_loss(events: Path, out: Path) -> Path | None:
    """Total and per-term losses per iteration from detectron2's ``metrics.json`` (JSON lines)."""
    if not events.is_file():
        return None
    rows = [json.loads(ln) for ln in events.read_text().splitlines() if ln.strip().startswith("{")]
    rows = [r for r in rows if "total_loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    it = [r["iteration"] for r in rows]
    for key in ["total_loss", *sorted(k for k in rows[-1] if k.startswith("loss_"))]:
        ax.plot(it, [r.get(key) for r in rows], label=key, lw=2 if key == "total_loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("Faster R-CNN training loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out, dpi=100)
