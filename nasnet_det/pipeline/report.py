"""``report.md`` and the PNGs beside it, from the stage manifests and the artifacts they name.

The report's own parts (the scale, the stage table, the artifacts) are written here; everything about a stage
comes from the stage: its sections (:meth:`Stage.report_sections`, placed by their :class:`Part`, in run order
within one) and why its figures are smoke-scale (:meth:`Stage.smoke_reasons`)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, NamedTuple

from nasnet_det.pipeline.manifest import read_manifest
from nasnet_det.utils.io import atomic_write


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def fmt_num(v: Any, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "-"


# Scale of the run (issue 22): each stage says why its figures are smoke-scale (Stage.smoke_reasons).
def smoke_reasons(report: Report, stages: Sequence[Any]) -> list[str]:
    """Why the run's figures are smoke-scale (empty: real scale), from each of ``stages`` (Stage instances) in
    run order: tiny held-out sets, few detector iterations, the embedded COCO sample, AP on the training photos."""
    return [reason for stage in stages for reason in stage.smoke_reasons(report)]


def scale_lines(reasons: list[str]) -> list[str]:
    if not reasons:
        return ["Scale: **real** (full-size held-out sets and training schedules): the figures below are "
                "results.", ""]
    return ["Scale: **smoke**. The figures below check that every stage runs and hands its output to the "
            "next; they are **not accuracy**: " + "; ".join(reasons) + ".", ""]


SMOKE_TAG = " *(smoke scale: checks the chain, not accuracy)*"


class Part(IntEnum):
    """Where a section goes in ``report.md``: the parts in this order, each part's sections in run order."""

    RESULT = 0  # the run's result: the chosen cell
    RECORD = 1  # what each stage ran and measured
    DEMO = 2  # the trained detector at work: drawn detections
    NETWORK = 3  # the chosen network's size


class ReportSection(NamedTuple):
    """A section of ``report.md``: its title (``## title``; consecutive sections of one title share the heading),
    its lines and its :class:`Part`."""

    title: str
    lines: list[str]
    part: Part = Part.RECORD


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
    manifests = {s.name: read_manifest(ctx.stage_dir(s.name)) for s in stages}
    lines = ["# nasnet-det pipeline report", "", f"Output folder: `{ctx.out}`", ""]
    report = Report(ctx, workdir, manifests)
    smoke = smoke_reasons(report, stages)
    report.tag = SMOKE_TAG if smoke else ""
    lines += scale_lines(smoke)
    lines += stage_table(manifests)
    sections = [section for stage in stages for section in stage.report_sections(report)]
    title = None
    for section in sorted(sections, key=lambda sec: sec.part):  # a stable sort: run order within a part
        if section.title != title:
            lines += [f"## {section.title}", ""]
            title = section.title
        lines += section.lines
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
