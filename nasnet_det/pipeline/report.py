"""``report.md`` and the PNGs beside it, from the stage manifests and the artifacts they name.

The report's own parts (the scale, the stage table, the drawn detections, the backbone's size, the artifacts)
are written here; each stage adds its sections (:meth:`Stage.report_sections`), in run order."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from nasnet_det.pipeline.launch import StageError, python, run_tool, tool_path
from nasnet_det.pipeline.manifest import read_manifest
from nasnet_det.utils.io import atomic_write, save_figure

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def fmt_num(v: Any, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "-"


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


def backbone_profile(cfg, genotype_file: Path, image_size: int) -> dict[str, Any]:
    from nasnet_det.models import create_model
    from nasnet_det.models.profile import count_mult_adds, count_params

    # the pipeline's MODEL.NASNET network with the chosen cell as the detector's backbone (no classifier)
    model = create_model(cfg, num_classes=0, genotype=str(genotype_file))
    return {"params": count_params(model), "mult_adds": count_mult_adds(model, image_size),
            "image_size": image_size, "num_features": model.num_features, "num_cells": cfg.MODEL.NASNET.NUM_CELLS}


# Drawn detections (issue 21) -----------------------------------------------------------------------------
DETECTIONS_DIR = "detections"  # under the report folder: the drawn photos and detections.json


def sample_detections_section(ctx, detect: dict, workdir: Path) -> list[str]:
    """Markdown showing the trained detector's top-scoring boxes on the embedded COCO photos, drawn by the demo
    tool (``--samples``) in a process of its own: the pipeline driver does not load torch or detectron2."""
    lines: list[str] = []
    outputs = detect.get("outputs", {})
    if detect.get("status") != "done" or not outputs.get("config"):
        return lines + ["Not drawn: no trained detector.", ""]
    folder = workdir / DETECTIONS_DIR
    shutil.rmtree(folder, ignore_errors=True)  # no picture of an earlier detector is left to be shown
    if not ctx.cfg.REPORT.SAMPLE_DETECTIONS:
        return lines + ["Not drawn (REPORT.SAMPLE_DETECTIONS False).", ""]
    argv = [python(ctx.cfg), str(tool_path("report", "demo.py")), "--config-file", str(ctx.abspath(outputs["config"])),
            "--samples", "--output", str(folder), "MODEL.WEIGHTS", str(ctx.abspath(outputs["weights"]))]
    try:
        run_tool("report", argv, workdir, ctx.quiet)
    except StageError as e:  # e.g. a detector of other classes than the sample's 80 COCO ones
        return lines + [f"Not drawn: {e}", ""]
    listing = json.loads((folder / "detections.json").read_text())
    dataset = listing[0].get("dataset", "the embedded COCO sample") if listing else "the embedded COCO sample"
    lines += [f"Photos of `{dataset}` (embedded in the package): left, the ground-truth boxes; right, the "
              "detector's top-scoring boxes (no score threshold), labelled with class and score.", "",
              "| ground truth | detector |", "| --- | --- |"]
    for item in listing:
        truth = f"![{item['truth_image']}]({DETECTIONS_DIR}/{item['truth_image']})" if item.get("truth_image") else "-"
        lines.append(f"| {truth} | ![{item['image']}]({DETECTIONS_DIR}/{item['image']}) |")
    lines.append("")
    for item in listing:
        found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in item["detections"]) or "no boxes"
        truth = f"{len(item['truth'])} ground-truth boxes; " if "truth" in item else ""
        lines += [f"`{item['image']}`: {truth}detected {found}", ""]
    return lines


def detector_training_sets(ctx, detect: dict) -> list[str]:
    """``DATASETS.TRAIN`` of the trained detector, from the config detectron2 saved beside it (empty when there is
    none)."""
    import yaml

    config = detect.get("outputs", {}).get("config")
    if detect.get("status") != "done" or not config or not Path(ctx.abspath(config)).is_file():
        return []
    saved = yaml.safe_load(Path(ctx.abspath(config)).read_text()) or {}
    return [str(name) for name in (saved.get("DATASETS") or {}).get("TRAIN") or []]


# Scale of the run (issue 22) ---------------------------------------------------------------------------
# Below these sizes a figure checks that the chain works, it does not measure accuracy: ImageNet's val split
# has 50,000 images, COCO val2017 5,000; a detector trained for under a thousand iterations has barely begun.
SMOKE_HELD_OUT_IMAGES = 10_000
SMOKE_DETECTION_ITERATIONS = 1_000
SAMPLE_DATASET_PREFIX = "coco_sample"  # the embedded 32-photo COCO sample (nasnet_det.data.sample)


def smoke_reasons(manifests: dict[str, dict | None], training_sets: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Why the run's figures are smoke-scale (empty: real scale): tiny held-out sets, few detector
    iterations, the embedded COCO sample, AP on the photos the detector trained on (``training_sets``)."""
    reasons = []
    for stage in ("cifar", "pretrain"):
        met = (manifests.get(stage) or {}).get("metrics", {})
        if isinstance(met.get("images"), int) and met["images"] < SMOKE_HELD_OUT_IMAGES:
            reasons.append(f"{stage} top-1 is on {met['images']} held-out images")
    iters = (manifests.get("detect") or {}).get("metrics", {}).get("iterations")
    if isinstance(iters, int) and iters < SMOKE_DETECTION_ITERATIONS:
        reasons.append(f"the detector trained {iters} iterations")
    datasets = list((manifests.get("evaluate") or {}).get("metrics", {}).get("bbox", {}))
    if datasets and all(d.startswith(SAMPLE_DATASET_PREFIX) for d in datasets):
        reasons.append(f"AP is on photos of the embedded COCO sample ({', '.join(datasets)})")
    fitted = [d for d in datasets if d in training_sets]
    if fitted:
        reasons.append(f"AP is on the photos the detector trained on ({', '.join(fitted)}): a fit, not "
                       "generalisation")
    return reasons


def scale_lines(reasons: list[str]) -> list[str]:
    if not reasons:
        return ["Scale: **real** (full-size held-out sets and training schedules): the figures below are "
                "results.", ""]
    return ["Scale: **smoke**. The figures below check that every stage runs and hands its output to the "
            "next; they are **not accuracy**: " + "; ".join(reasons) + ".", ""]


# An AP on the photos the detector trained on: what it shows, said beside the number.
TRAINING_FIT = ("AP on the training photos (a fit of the training data, smoke scale: it checks that gradients "
                "reach every part of the chain, not accuracy)")


SMOKE_TAG = " *(smoke scale: checks the chain, not accuracy)*"


class ReportSection(NamedTuple):
    """A section of ``report.md``: its title (``## title``; consecutive sections of one title share the heading)
    and its lines."""

    title: str
    lines: list[str]


@dataclass
class Report:
    """What a stage's report section is written from: the run (``ctx``), the report's folder, and the manifest
    of each reported stage (``None``: not run). ``tag`` marks a figure of a smoke-scale run."""

    ctx: Any  # the stages' Context (stages.base imports this module, not the reverse)
    workdir: Path
    manifests: dict[str, dict | None]
    tag: str = ""

    def manifest(self, stage: str) -> dict:
        """The stage's manifest (empty when it has not run)."""
        return self.manifests.get(stage) or {}

    def copy(self, stage: str, key: str, name: str) -> str | None:
        """Copy output ``key`` of a finished ``stage`` into the report's folder as ``name`` (``None``: no such
        file)."""
        m = self.manifests.get(stage)
        src = m and m.get("status") == "done" and m.get("outputs", {}).get(key)
        if not src or not Path(self.ctx.abspath(src)).is_file():
            return None
        shutil.copyfile(self.ctx.abspath(src), self.workdir / name)
        return name


def write_report(ctx: Any, workdir: Path, stages: Sequence[Any]) -> Path:
    """``workdir/report.md`` of the run ``ctx`` (a stages' Context) on ``stages`` (Stage instances in run order;
    the stage table lists them all)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = ctx.out
    manifests = {s.name: read_manifest(ctx.stage_dir(s.name)) for s in stages}
    lines = ["# nasnet-det pipeline report", "", f"Output folder: `{out}`", ""]
    training_sets = detector_training_sets(ctx, manifests.get("detect") or {})
    smoke = smoke_reasons(manifests, training_sets)
    report = Report(ctx, workdir, manifests, SMOKE_TAG if smoke else "")
    lines += scale_lines(smoke)
    lines += stage_table(manifests)

    # The stages' sections: those that give the run's result (the chosen cell) first, then in run order
    title = None
    for stage in sorted(stages, key=lambda s: not s.report_first):
        for section in stage.report_sections(report):
            if section.title != title:
                lines += [f"## {section.title}", ""]
                title = section.title
            lines += section.lines

    lines += ["## Sample detections", "", *sample_detections_section(ctx, report.manifest("detect"), workdir)]
    lines += backbone_section(report)
    lines += artifact_table(manifests)
    return atomic_write(workdir / "report.md", "\n".join(lines))


def stage_table(manifests: dict[str, dict | None]) -> list[str]:
    """Status, wall time and attempts of every stage, and the total time."""
    lines = ["## Stages", "", "| stage | status | wall time | attempts | folder |", "| --- | --- | --- | --- | --- |"]
    total = 0.0
    for name, m in manifests.items():
        if not m:
            lines.append(f"| {name} | not run | - | - | - |")
            continue
        total += m.get("wall_seconds_total") or 0.0
        lines.append(f"| {name} | {m.get('status')} | {_fmt_time(m.get('wall_seconds_total'))} | "
                     f"{m.get('attempts', 1)} | `{name}/` |")
    return lines + [f"| **total** | | {_fmt_time(total)} | | |", ""]


def backbone_section(report: Report) -> list[str]:
    """Params and mult-adds of the chosen cell's backbone (nothing before a cell is chosen)."""
    genotype = report.manifest("select").get("outputs", {}).get("genotype")
    if not genotype:
        return []
    ctx = report.ctx
    prof = backbone_profile(ctx.cfg, ctx.abspath(genotype), ctx.cfg.REPORT.PROFILE_IMAGE_SIZE)
    atomic_write(report.workdir / "backbone_profile.json", json.dumps(prof, indent=2) + "\n")
    return ["## Backbone", "", "| network | params | mult-adds | image size | output channels |",
            "| --- | --- | --- | --- | --- |",
            f"| {prof['num_cells']}@{prof['num_features']} (no classifier) | {prof['params'] / 1e6:.3f} M | "
            f"{prof['mult_adds'] / 1e6:.1f} M | {prof['image_size']} | {prof['num_features']} |", ""]


def artifact_table(manifests: dict[str, dict | None]) -> list[str]:
    """Every output of every stage, by path."""
    lines = ["## Artifacts", "", "| stage | artifact | path |", "| --- | --- | --- |"]
    for name, m in manifests.items():
        for key, value in (m or {}).get("outputs", {}).items():
            for sub, path in (value.items() if isinstance(value, dict) else [("", value)]):
                if key == "kind":
                    continue
                lines.append(f"| {name} | {key}{'/' + sub if sub else ''} | `{path}` |")
    return lines + ["", "Each stage folder holds its `manifest.json` (settings + hash, inputs + sha256, outputs, "
                    "metrics, wall time, status) and `stage.log`.", ""]
