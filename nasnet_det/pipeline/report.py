"""``report.md`` and the PNGs beside it, from the stage manifests and the artifacts they name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from nasnet_det.pipeline.launch import StageError, python, run_tool, tool_path
from nasnet_det.pipeline.manifest import read_manifest
from nasnet_det.utils.io import atomic_write, save_figure

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def _num(v: Any, digits: int = 2) -> str:
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


def build_backbone(cfg, genotype_file: Path):
    """The pipeline's MODEL.NASNET network with the chosen cell, as the detector's backbone (no classifier, no
    aux head)."""
    from nasnet_det.models import create_model

    n = cfg.MODEL.NASNET
    size = dict(filters=n.FILTERS) if n.FILTERS > 0 else dict(penultimate_filters=n.PENULTIMATE_FILTERS)
    return create_model("nasnet_a_mobile", genotype=str(genotype_file), num_cells=n.NUM_CELLS, num_classes=0,
                        aux_head=False, dropout=0.0, image_size=None, stem_filters=n.STEM_FILTERS,
                        skip_reduction_layer_input=n.SKIP_REDUCTION_LAYER_INPUT, pad_mode=n.PAD_MODE, **size)


def backbone_profile(cfg, genotype_file: Path, image_size: int) -> dict[str, Any]:
    from nasnet_det.models.profile import count_mult_adds, count_params

    model = build_backbone(cfg, genotype_file)
    return {"params": count_params(model), "mult_adds": count_mult_adds(model, image_size),
            "image_size": image_size, "num_features": model.num_features, "num_cells": cfg.MODEL.NASNET.NUM_CELLS}


# Drawn detections (issue 21) -----------------------------------------------------------------------------
DETECTIONS_DIR = "detections"  # under the report folder: the drawn photos and detections.json


def sample_detections_section(ctx, detect: dict, workdir: Path) -> list[str]:
    """Markdown showing the trained detector's top-scoring boxes on the embedded COCO photos, drawn by the demo
    tool (``--samples``) in a process of its own: the pipeline driver does not load torch or detectron2."""
    lines = ["## Sample detections", ""]
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


def write_report(ctx, workdir: Path, stage_names: list[str]) -> Path:
    """``workdir/report.md`` on the stages ``stage_names`` (in run order; the stage table lists them all)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = ctx.out
    manifests = {name: read_manifest(ctx.stage_dir(name)) for name in stage_names}

    def rel(p: Path | str) -> str:
        p = Path(p)
        try:
            return str(p.resolve().relative_to(out))
        except ValueError:
            return str(p)

    def copy(stage: str, key: str, name: str) -> str | None:
        m = manifests.get(stage)
        src = m and m.get("status") == "done" and m.get("outputs", {}).get(key)
        if not src or not Path(ctx.abspath(src)).is_file():
            return None
        shutil.copyfile(ctx.abspath(src), workdir / name)
        return name

    lines = ["# nasnet-det pipeline report", "", f"Output folder: `{out}`", ""]
    training_sets = detector_training_sets(ctx, manifests.get("detect") or {})
    smoke = smoke_reasons(manifests, training_sets)
    tag = SMOKE_TAG if smoke else ""
    lines += scale_lines(smoke)

    # Time per stage ------------------------------------------------------------------------------------
    lines += ["## Stages", "", "| stage | status | wall time | attempts | folder |", "| --- | --- | --- | --- | --- |"]
    total = 0.0
    for name, m in manifests.items():
        if not m:
            lines.append(f"| {name} | not run | - | - | - |")
            continue
        total += m.get("wall_seconds_total") or 0.0
        lines.append(f"| {name} | {m.get('status')} | {_fmt_time(m.get('wall_seconds_total'))} | "
                     f"{m.get('attempts', 1)} | `{name}/` |")
    lines += [f"| **total** | | {_fmt_time(total)} | | |", ""]

    # Cells ---------------------------------------------------------------------------------------------
    sel = manifests.get("select") or {}
    lines += ["## Chosen cell", ""]
    if copy("select", "cells", "cells.png"):
        g = sel.get("metrics", {})
        lines += [f"Genotype **{g.get('genotype')}** (search reward {_num(g.get('reward'), 4)}"
                  + (f", re-ranked CIFAR top-1 {_num(g.get('rerank_top1'))}%" if g.get("rerank_top1") else "")
                  + f"; file `{sel.get('outputs', {}).get('genotype')}`).", "", "![cells](cells.png)", ""]

    # Search --------------------------------------------------------------------------------------------
    search = manifests.get("search") or {}
    lines += ["## Search", ""]
    if search.get("outputs", {}).get("kind") == "given":
        lines += [f"Not run: the genotype was given (`SEARCH.GENOTYPE {search.get('config', {}).get('genotype')}`).",
                  ""]
    elif search.get("status") == "done":
        lines += ["| strategy | children | ok | failed | best reward | mean reward | first-quarter batch mean | "
                  "last-quarter batch mean |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, s in search.get("metrics", {}).get("strategies", {}).items():
            lines.append(f"| {name} | {s.get('evaluations')} | {s.get('ok')} | {s.get('failed')} | "
                         f"{_num(s.get('best_reward'), 4)} | {_num(s.get('mean_reward'), 4)} | "
                         f"{_num(s.get('first_batches_mean'), 4)} | {_num(s.get('last_batches_mean'), 4)} |")
        lines.append("")
        if copy("search", "rewards_plot", "search_rewards.png"):
            lines += ["Reward per policy batch, per strategy:", "", "![search rewards](search_rewards.png)", ""]
        # Latency-aware search (SEARCH.OBJECTIVE latency): accuracy against detection latency
        if copy("search", "pareto_plot", "search_pareto.png"):
            budget = sel.get("metrics", {}).get("latency_ms")
            lines += ["Accuracy against detection-backbone latency (every child, the Pareto front, NASNet-A's "
                      "latency marked)" + (f"; the chosen cell runs in {_num(budget, 1)} ms" if budget else "")
                      + ":", "", "![search pareto](search_pareto.png)", ""]

    # Training stages -----------------------------------------------------------------------------------
    lines += ["## Training", ""]
    for stage, title in (("cifar", "CIFAR-10 final training"), ("pretrain", "ImageNet pretraining")):
        m = manifests.get(stage)
        if not m:
            lines += [f"{title}: not run.", ""]
            continue
        if m.get("outputs", {}).get("kind") == "given":
            lines += [f"{title}: not run; weights given (`{m['outputs'].get('weights')}`).", ""]
            continue
        met = m.get("metrics", {})
        lines += [f"**{title}** ({m.get('status')}): top-1 {_num(met.get('top1'))}%, top-5 {_num(met.get('top5'))}% "
                  f"on {met.get('images', '-')} held-out images{tag}; "
                  f"weights `{m.get('outputs', {}).get('weights')}`.", ""]
        png = copy(stage, "curves", f"{stage}_curves.png")
        if png:
            lines += [f"![{stage} curves]({png})", ""]
    det = manifests.get("detect") or {}
    if det.get("status") == "done":
        met = det.get("metrics", {})
        lines += [f"**Faster R-CNN** ({det.get('status')}): {met.get('iterations', '-')} iterations, total loss "
                  f"{_num(met.get('first_total_loss'), 3)} -> {_num(met.get('last_total_loss'), 3)}; detector "
                  f"`{det.get('outputs', {}).get('weights')}`.", ""]
        if plot_detection_loss(Path(ctx.abspath(det["outputs"].get("events", ""))), workdir / "detection_loss.png"):
            lines += ["![detection loss](detection_loss.png)", ""]

    # COCO AP -------------------------------------------------------------------------------------------
    ev = manifests.get("evaluate") or {}
    lines += ["## COCO box AP", ""]
    for dataset, res in ev.get("metrics", {}).get("bbox", {}).items():
        if dataset in training_sets:
            lines += [f"**{TRAINING_FIT}: {_num(res.get('AP'), 1)}** (dataset `{dataset}`, the detector's "
                      "`DATASETS.TRAIN`).", ""]
        lines += [f"Dataset `{dataset}`{tag}:", "", "| " + " | ".join(AP_KEYS) + " |", "|" + " --- |" * len(AP_KEYS),
                  "| " + " | ".join(_num(res.get(k)) for k in AP_KEYS) + " |", ""]
        # Categories without ground truth in the dataset have no AP (NaN): leave them out.
        per_cat = sorted((k[3:], v) for k, v in res.items() if k.startswith("AP-") and v == v)
        if per_cat:
            lines += [f"<details><summary>per-category AP ({len(per_cat)} categories with ground truth)</summary>",
                      "", "| category | AP |", "| --- | --- |"]
            lines += [f"| {c} | {_num(v)} |" for c, v in per_cat]
            lines += ["", "</details>", ""]
    if not ev.get("metrics"):
        lines += ["Not evaluated.", ""]
    lines += sample_detections_section(ctx, det, workdir)

    # Backbone size -------------------------------------------------------------------------------------
    genotype = sel.get("outputs", {}).get("genotype")
    if genotype:
        prof = backbone_profile(ctx.cfg, ctx.abspath(genotype), ctx.cfg.REPORT.PROFILE_IMAGE_SIZE)
        atomic_write(workdir / "backbone_profile.json", json.dumps(prof, indent=2) + "\n")
        lines += ["## Backbone", "", "| network | params | mult-adds | image size | output channels |",
                  "| --- | --- | --- | --- | --- |",
                  f"| {prof['num_cells']}@{prof['num_features']} (no classifier) | {prof['params'] / 1e6:.3f} M | "
                  f"{prof['mult_adds'] / 1e6:.1f} M | {prof['image_size']} | {prof['num_features']} |", ""]

    # Artifacts -----------------------------------------------------------------------------------------
    lines += ["## Artifacts", "", "| stage | artifact | path |", "| --- | --- | --- |"]
    for name, m in manifests.items():
        for key, value in (m or {}).get("outputs", {}).items():
            for sub, path in (value.items() if isinstance(value, dict) else [("", value)]):
                if key == "kind":
                    continue
                lines.append(f"| {name} | {key}{'/' + sub if sub else ''} | `{path}` |")
    lines += ["", "Each stage folder holds its `manifest.json` (settings + hash, inputs + sha256, outputs, "
              "metrics, wall time, status) and `stage.log`.", ""]
    return atomic_write(workdir / "report.md", "\n".join(lines))
