"""The select stage: the cell the later stages use (the search's best, re-ranked or within a latency budget)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fvcore.common.config import CfgNode as CN

from nasnet_det.pipeline.backends import Workers
from nasnet_det.pipeline.launch import StageError
from nasnet_det.pipeline.paths import resolve_path
from nasnet_det.pipeline.plan import PlanContext, StagePlan
from nasnet_det.pipeline.report import Part, Report, ReportSection, fmt_num
from nasnet_det.pipeline.stages.base import (
    STAGES,
    Context,
    Stage,
    check_classification,
    config_chain,
    genotype_opts,
    read_json,
)
from nasnet_det.utils.errors import require
from nasnet_det.utils.io import atomic_write


@STAGES.register()
class SelectStage(Stage):
    """Pick the cell to carry on: the best reward of the search, or the best of its top k after training each
    longer on CIFAR-10 (``SELECT.TOP_K`` > 1)."""

    name, needs, order, positive_keys = "select", ("search",), 20, ("TOP_K",)

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        cfg.SELECT = CN()
        # Re-rank the search's TOP_K best cells by training each with RERANK_CONFIG_FILE (a configs/train/
        # CIFAR config) + RERANK_OPTS and keep the best held-out accuracy (the paper did this before choosing
        # NASNet-A). TOP_K 1 keeps the best reward of the search.
        cfg.SELECT.TOP_K = 1
        cfg.SELECT.RERANK_CONFIG_FILE = "configs/train/cifar10_smoke.yaml"
        cfg.SELECT.RERANK_OPTS = []
        # > 0: keep only cells whose detection backbone runs within this many ms (the search's pareto.json, so
        # a search with SEARCH.OBJECTIVE latency or SEARCH.LATENCY.RECORD) and pick the most accurate of them.
        cfg.SELECT.LATENCY_BUDGET_MS = 0.0

    def settings(self, ctx: Context) -> dict[str, Any]:
        c = ctx.cfg.SELECT
        budget = {"latency_budget_ms": float(c.LATENCY_BUDGET_MS)} if c.LATENCY_BUDGET_MS > 0 else {}
        if c.TOP_K <= 1 or ctx.cfg.SEARCH.GENOTYPE:
            return {"top_k": 1, **budget}
        return {"top_k": c.TOP_K, **budget, "rerank": config_chain(self.name, "SELECT.RERANK_CONFIG_FILE",
                                                         c.RERANK_CONFIG_FILE), "opts": list(c.RERANK_OPTS)}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        out = ctx.outputs_of("search", self.name)
        return {k: out[k] for k in ("best_genotype", "top_k", "pareto") if k in out}

    @classmethod
    def check_config(cls, cfg: CN) -> None:
        super().check_config(cfg)
        b = cfg.SELECT.LATENCY_BUDGET_MS
        require(isinstance(b, (int, float)) and not isinstance(b, bool) and b >= 0, "SELECT.LATENCY_BUDGET_MS", b,
                "a number of ms >= 0 (0: no budget)")
        if b and cfg.SEARCH.GENOTYPE:
            raise ValueError(f"SELECT.LATENCY_BUDGET_MS={b:g} needs a search to choose from, but SEARCH.GENOTYPE "
                             f"{cfg.SEARCH.GENOTYPE!r} gives the cell; set one of them")

    def plan(self, pc: PlanContext) -> StagePlan:
        from nasnet_det.pipeline.plan_stages import plan_classification

        c = pc.cfg.SELECT
        budget = f"; within SELECT.LATENCY_BUDGET_MS {c.LATENCY_BUDGET_MS:g}" if c.LATENCY_BUDGET_MS > 0 else ""
        if pc.cfg.SEARCH.GENOTYPE:
            return StagePlan(self.name, [("picks", f"the given genotype (SEARCH.GENOTYPE {pc.cfg.SEARCH.GENOTYPE})")])
        if c.TOP_K <= 1:
            return StagePlan(self.name, [("picks", f"the search's best cell (SELECT.TOP_K 1{budget}): nothing to "
                                                   "train")])
        p = plan_classification(pc, self.name, "SELECT", "SELECT.RERANK_CONFIG_FILE", c.RERANK_CONFIG_FILE,
                                list(c.RERANK_OPTS), genotype_opts("nasnet_a"), "cifar10", Workers(),
                                "the re-ranking (one process per candidate)", runs=c.TOP_K)
        p.rows.insert(0, ("picks", f"the best held-out accuracy of the search's top {c.TOP_K}{budget}, each trained "
                                   "as below, one after another"))
        return p

    def within_budget(self, inputs: dict[str, Path], budget: float, k: int) -> list[dict[str, Any]]:
        """The ``k`` most accurate cells of the search whose backbone latency is within ``budget`` ms (the most
        accurate one is on the front; the next ones need not be)."""
        from nasnet_det.genotypes import found_cell_name, found_genotype

        if "pareto" not in inputs:
            raise StageError(self.name, f"SELECT.LATENCY_BUDGET_MS={budget:g}: the search recorded no latencies "
                                        "(no pareto.json); run it with SEARCH.OBJECTIVE latency or "
                                        "SEARCH.LATENCY.RECORD True")
        pareto = read_json(self.name, inputs["pareto"], "the search's Pareto front")
        if pareto.get("metric") != "latency_ms":
            raise StageError(self.name, f"SELECT.LATENCY_BUDGET_MS={budget:g}: {inputs['pareto']} ranks cells by "
                                        f"{pareto.get('metric')}, not latency (SEARCH.LATENCY.ESTIMATOR flops); "
                                        "use the measure or lut estimator")
        cells = pareto.get("children") or pareto.get("front") or []
        for e in cells:
            missing = [key for key in ("latency_ms", "accuracy", "genotype", "id", "strategy") if key not in e]
            if missing or not isinstance(e["latency_ms"], (int, float)):
                raise StageError(self.name, f"{inputs['pareto']}: an entry lacks {', '.join(missing)} or its "
                                            "latency_ms is not a number; rerun the search stage to rewrite it")
        fits = sorted((e for e in cells if e["latency_ms"] <= budget), key=lambda e: (-e["accuracy"], e["id"]))
        if not fits:
            fastest = min(cells, key=lambda e: e["latency_ms"])
            name = found_cell_name(fastest["strategy"], fastest["id"])
            raise StageError(self.name, f"SELECT.LATENCY_BUDGET_MS={budget:g}: no cell of the search runs within "
                                        f"it; the fastest is {name} at "
                                        f"{fastest['latency_ms']:.1f} ms ({inputs['pareto']})")
        out = []
        for e in fits[:k]:
            out.append({"genotype": found_genotype(e["genotype"], e["strategy"], e["id"]),
                        "reward": e.get("reward"), "accuracy": e["accuracy"], "latency_ms": e["latency_ms"],
                        "id": e["id"], "strategy": e["strategy"]})
        return out

    def candidates(self, inputs: dict[str, Path], k: int) -> list[dict[str, Any]]:
        from nasnet_det.genotypes import found_genotype
        from nasnet_det.space import Genotype

        if "top_k" not in inputs:
            try:
                g = Genotype.load(inputs["best_genotype"])
            except (ValueError, KeyError, FileNotFoundError) as e:
                raise StageError(self.name, f"{inputs['best_genotype']}: not a valid genotype ({e})") from None
            return [{"genotype": g, "reward": None}]
        top = read_json(self.name, inputs["top_k"], "the search's top-k list")
        if not isinstance(top, list) or not top:
            raise StageError(self.name, f"{inputs['top_k']}: expected a non-empty list of evaluated cells "
                                        "(did every child of the search fail?)")
        out = []
        for e in top[:k]:
            try:
                g = found_genotype(e["genotype"], e.get("strategy"), e.get("id"))
            except (ValueError, KeyError, TypeError) as err:
                raise StageError(self.name, f"{inputs['top_k']}: entry {e.get('id')} has no valid genotype "
                                            f"({err})") from None
            out.append({"genotype": g,
                        "reward": e.get("reward"), "id": e.get("id"), "strategy": e.get("strategy")})
        return out

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        from nasnet_det.draw import draw_genotype

        c = ctx.cfg.SELECT
        k = 1 if ctx.cfg.SEARCH.GENOTYPE else c.TOP_K
        if c.LATENCY_BUDGET_MS > 0 and not ctx.cfg.SEARCH.GENOTYPE:
            cands = self.within_budget(inputs, float(c.LATENCY_BUDGET_MS), k)
        else:
            cands = self.candidates(inputs, k)
        workdir.mkdir(parents=True, exist_ok=True)
        device = "cpu"  # the re-ranking's TRAIN.DEVICE, where the backend places its process (read when it trains)
        if len(cands) > 1:
            device = check_classification(self.name, "SELECT.RERANK", c.RERANK_CONFIG_FILE,
                                           [*genotype_opts("nasnet_a"), *c.RERANK_OPTS], "cifar10").TRAIN.DEVICE
        for i, cand in enumerate(cands):
            if len(cands) == 1:
                break
            path = cand["genotype"].save(workdir / f"candidate_{i}.json")
            rdir = workdir / f"rerank_{i}"
            # one process each, where the backend runs training (a Ray worker on a cluster)
            ctx.backend.run_classification(self.name, rdir, "train_cifar.py", "cifar10",
                                           ["--config-file", str(resolve_path(c.RERANK_CONFIG_FILE)),
                                            "--output-dir", str(rdir), *genotype_opts(path), *c.RERANK_OPTS],
                                           Workers(), ctx.quiet, device)
            cand["rerank_top1"] = read_json(self.name, rdir / "final_metrics.json", "re-rank metrics").get("top1")
        key = (lambda c_: c_["rerank_top1"]) if len(cands) > 1 else (lambda c_: 0)
        best = max(cands, key=key)
        best["genotype"].save(workdir / "genotype.json")
        draw_genotype(best["genotype"], workdir / "cells.png", f"selected: {best['genotype'].name}")
        atomic_write(workdir / "selection.json", json.dumps(
            [{k_: (v.name if k_ == "genotype" else v) for k_, v in c_.items()} for c_ in cands], indent=2) + "\n")

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        from nasnet_det.space import Genotype

        sel = read_json(self.name, workdir / "selection.json", "the selection")
        name = Genotype.load(workdir / "genotype.json").name
        chosen = next((c for c in sel if c["genotype"] == name), {})
        return ({"genotype": str(workdir / "genotype.json"), "cells": str(workdir / "cells.png")},
                {"genotype": name, "reward": chosen.get("reward"), "rerank_top1": chosen.get("rerank_top1"),
                 "latency_ms": chosen.get("latency_ms"), "candidates": len(sel)})

    def report_sections(self, report: Report) -> list[ReportSection]:
        sel, lines = report.manifest(self.name), []
        if report.copy(self.name, "cells", "cells.png"):
            g = sel.get("metrics", {})
            lines += [f"Genotype **{g.get('genotype')}** (search reward {fmt_num(g.get('reward'), 4)}"
                      + (f", re-ranked CIFAR top-1 {fmt_num(g.get('rerank_top1'))}%" if g.get("rerank_top1") else "")
                      + f"; file `{sel.get('outputs', {}).get('genotype')}`).", "", "![cells](cells.png)", ""]
        sections = [ReportSection("Chosen cell", lines, Part.RESULT)]
        genotype = sel.get("outputs", {}).get("genotype")
        if genotype:  # nothing before a cell is chosen
            sections.append(ReportSection("Backbone", self.backbone_lines(report, report.ctx.abspath(genotype)),
                                          Part.NETWORK))
        return sections

    @staticmethod
    def backbone_lines(report: Report, genotype: Path) -> list[str]:
        """Params and mult-adds of the chosen cell's backbone (also kept as ``backbone_profile.json``)."""
        cfg = report.ctx.cfg
        prof = backbone_profile(cfg, genotype, cfg.REPORT.PROFILE_IMAGE_SIZE)
        atomic_write(report.workdir / "backbone_profile.json", json.dumps(prof, indent=2) + "\n")
        return ["| network | params | mult-adds | image size | output channels |", "| --- | --- | --- | --- | --- |",
                f"| {prof['num_cells']}@{prof['num_features']} (no classifier) | {prof['params'] / 1e6:.3f} M | "
                f"{prof['mult_adds'] / 1e6:.1f} M | {prof['image_size']} | {prof['num_features']} |", ""]


def backbone_profile(cfg: CN, genotype_file: Path, image_size: int) -> dict[str, Any]:
    """Params and mult-adds at ``image_size`` of the pipeline's ``MODEL.NASNET`` network with the cell in
    ``genotype_file``, as the detector's backbone (no classifier)."""
    from nasnet_det.models import create_model
    from nasnet_det.models.profile import count_mult_adds, count_params

    model = create_model(cfg, num_classes=0, genotype=str(genotype_file))
    return {"params": count_params(model), "mult_adds": count_mult_adds(model, image_size),
            "image_size": image_size, "num_features": model.num_features, "num_cells": cfg.MODEL.NASNET.NUM_CELLS}
