"""The search stage: the CIFAR-10 architecture search (``tools/search_cifar.py``), or a given genotype."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fvcore.common.config import CfgNode as CN

from nasnet_det.pipeline.launch import StageError, python, run_tool, tool_path
from nasnet_det.pipeline.paths import resolve_path
from nasnet_det.pipeline.plan import PlanContext, StagePlan
from nasnet_det.pipeline.report import Report, ReportSection, fmt_num
from nasnet_det.pipeline.stages.base import (
    STAGES,
    Context,
    Stage,
    file_setting,
    read_json,
    tool_node,
    tool_settings,
)
from nasnet_det.space import Genotype


@STAGES.register()
class SearchStage(Stage):
    """CIFAR-10 architecture search (``tools/search_cifar.py``), or a given genotype (the shortcut)."""

    name, resumes, order = "search", True, 10
    # The journal serves a search that is not finished yet; the finished one's results are its other outputs.
    kept_outputs = {"journal": " (only a search that is not finished reads it)"}

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        node = tool_node(cfg, "SEARCH", "configs/search/smoke.yaml")
        # Shortcut: a published genotype ("nasnet_a") or a genotype JSON file; the search stage then does not run.
        node.GENOTYPE = ""

    def settings(self, ctx: Context) -> dict[str, Any]:
        c = ctx.cfg.SEARCH
        if c.GENOTYPE:  # a JSON file by its absolute path (its content is checksummed as an input)
            return {"genotype": file_setting(c.GENOTYPE) if c.GENOTYPE.endswith(".json") else c.GENOTYPE}
        settings = tool_settings(ctx, "SEARCH")
        # how to recover from a damaged journal says nothing about the result: adding it must resume the
        # search in its folder, not clear it (the damaged journal with it)
        pairs = list(zip(settings["opts"][::2], settings["opts"][1::2]))
        settings["opts"] = [x for k, v in pairs if k != "SEARCH.DAMAGED_JOURNAL" for x in (k, v)]
        return settings

    def inputs(self, ctx: Context) -> dict[str, Path]:
        g = ctx.cfg.SEARCH.GENOTYPE
        return {"genotype": resolve_path(g)} if g and g.endswith(".json") else {}

    def given_genotype(self, ctx: Context, inputs: dict[str, Path]) -> Genotype:
        from nasnet_det.genotypes import get_genotype

        c = ctx.cfg.SEARCH
        try:
            return get_genotype(str(inputs.get("genotype", c.GENOTYPE)))
        except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
            raise StageError(self.name, f"SEARCH.GENOTYPE {c.GENOTYPE!r}: {e}") from None

    def validate(self, ctx: Context, inputs: dict[str, Path]) -> None:
        if ctx.cfg.SEARCH.GENOTYPE:
            self.given_genotype(ctx, inputs)

    def plan(self, pc: PlanContext) -> StagePlan:
        from nasnet_det.pipeline.plan_stages import plan_search

        return plan_search(pc, self)

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        c = ctx.cfg.SEARCH
        if c.GENOTYPE:
            workdir.mkdir(parents=True, exist_ok=True)
            self.given_genotype(ctx, inputs).save(workdir / "best_genotype.json")
            return
        argv = [python(ctx.cfg), str(tool_path(self.name, "search_cifar.py")),
                "--config-file", str(resolve_path(c.CONFIG_FILE)), "--output-dir", str(workdir),
                *ctx.backend.search_opts(), *c.OPTS]
        run_tool(self.name, argv, workdir, ctx.quiet)

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        if ctx.cfg.SEARCH.GENOTYPE:
            return {"kind": "given", "best_genotype": str(workdir / "best_genotype.json")}, {}
        summary = read_json(self.name, workdir / "summary.json", "the search summary")
        outputs = {"kind": "searched", "best_genotype": "best_genotype.json", "top_k": "top_k.json",
                   "summary": "summary.json", "journal": "journal.sqlite", "rewards_plot": "rewards.png",
                   "best_cells": "best_cells.png"}
        # The accuracy-latency front, when the search profiled its children (SEARCH.OBJECTIVE latency)
        outputs.update({k: v for k, v in (("pareto", "pareto.json"), ("pareto_plot", "pareto.png"))
                        if (workdir / v).is_file()})
        metrics = {name: {k: s.get(k) for k in ("evaluations", "ok", "failed", "best_reward", "mean_reward",
                                                  "first_batches_mean", "last_batches_mean")}
                   for name, s in summary.get("strategies", {}).items()}
        return {k: str(workdir / v) if k != "kind" else v for k, v in outputs.items()}, {"strategies": metrics}

    def report_sections(self, report: Report) -> list[ReportSection]:
        search, lines = report.manifest(self.name), []
        if search.get("outputs", {}).get("kind") == "given":
            given = search.get("config", {}).get("genotype")
            lines += [f"Not run: the genotype was given (`SEARCH.GENOTYPE {given}`).", ""]
        elif search.get("status") == "done":
            lines += ["| strategy | children | ok | failed | best reward | mean reward | first-quarter batch mean | "
                      "last-quarter batch mean |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for name, s in search.get("metrics", {}).get("strategies", {}).items():
                lines.append(f"| {name} | {s.get('evaluations')} | {s.get('ok')} | {s.get('failed')} | "
                             f"{fmt_num(s.get('best_reward'), 4)} | {fmt_num(s.get('mean_reward'), 4)} | "
                             f"{fmt_num(s.get('first_batches_mean'), 4)} | {fmt_num(s.get('last_batches_mean'), 4)} |")
            lines.append("")
            if report.copy(self.name, "rewards_plot", "search_rewards.png"):
                lines += ["Reward per policy batch, per strategy:", "", "![search rewards](search_rewards.png)", ""]
            # Latency-aware search (SEARCH.OBJECTIVE latency): accuracy against detection latency
            if report.copy(self.name, "pareto_plot", "search_pareto.png"):
                budget = report.manifest("select").get("metrics", {}).get("latency_ms")
                lines += ["Accuracy against detection-backbone latency (every child, the Pareto front, NASNet-A's "
                          "latency marked)" + (f"; the chosen cell runs in {fmt_num(budget, 1)} ms" if budget else "")
                          + ":", "", "![search pareto](search_pareto.png)", ""]
        return [ReportSection("Search", lines)]
