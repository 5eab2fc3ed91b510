"""The stages: search -> select -> cifar (optional) -> pretrain -> detect -> evaluate -> report.

A stage says what its result depends on (``settings``: hashed into the manifest; ``inputs``: files of earlier
stages, checksummed), runs (the training stages as child processes of the existing tools, into the stage's
folder, so the tool's own resume continues an interrupted run), and reports its ``outputs`` and ``metrics``.
"""

from __future__ import annotations

import json
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fvcore.common.config import CfgNode as CN

from nasnet_det.pipeline.config import repo_root, resolve_path
from nasnet_det.pipeline.launch import (
    StageError,
    genotype_opts,
    network_opts,
    python,
    run_tool,
    tool_path,
    torchrun_prefix,
)
from nasnet_det.pipeline.manifest import MANIFEST_NAME, read_manifest, sha256_file
from nasnet_det.utils.io import atomic_write


@dataclass
class Context:
    cfg: CN
    out: Path
    quiet: bool = False

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    def outputs_of(self, stage: str, needed_by: str) -> dict[str, Any]:
        """The outputs of an earlier, finished stage (absolute paths), or a StageError saying to run it."""
        m = read_manifest(self.stage_dir(stage))
        if not m or m.get("status") != "done":
            state = "has not run" if not m else f"is {m.get('status')}"
            raise StageError(needed_by, f"needs the outputs of stage '{stage}', which {state} in {self.out}; "
                                        f"run the pipeline from '{stage}' (--from {stage})")
        return {k: self.abspath(v) if isinstance(v, str) and k != "kind" else v
                for k, v in m.get("outputs", {}).items()}

    def abspath(self, p: str) -> Any:
        path = Path(p)
        return path if path.is_absolute() else self.out / path


def config_chain(stage: str, key: str, config_file: str) -> dict[str, str]:
    """``{path: sha256}`` of a stage's config file and its ``_BASE_`` files (so editing any changes the hash)."""
    path = resolve_path(config_file)
    if not config_file or not path.is_file():
        raise StageError(stage, f"{key} {config_file!r} does not exist (expected a YAML config file of that tool)")
    chain: dict[str, str] = {}
    while path is not None and _stable_name(path) not in chain:
        chain[_stable_name(path)] = sha256_file(path)
        try:
            base = (yaml.safe_load(path.read_text()) or {}).get("_BASE_")
        except yaml.YAMLError as e:
            raise StageError(stage, f"{key}: {path} is not valid YAML ({e})") from None
        if not base:
            break
        nxt = Path(base) if Path(base).is_absolute() else path.parent / base
        if not nxt.is_file():
            raise StageError(stage, f"{key}: {path} has _BASE_ {base!r}, which does not exist")
        path = nxt
    return chain


def _stable_name(path: Path) -> str:
    """A config file's name that does not depend on the working directory (relative to the checkout when
    inside it), so the same command run from elsewhere, or a moved checkout, hashes the same."""
    path = path.resolve()
    try:
        return str(path.relative_to(repo_root()))
    except ValueError:
        return str(path)


def _file_setting(path: str) -> str:
    return str(resolve_path(path).resolve())


def _read_json(stage: str, path: Path, what: str) -> Any:
    if not path.is_file():
        raise StageError(stage, f"expected {what} at {path}, but the file does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StageError(stage, f"{path} ({what}) is not valid JSON: {e}") from None


class Stage(ABC):
    name = ""
    optional = False

    def enabled(self, ctx: Context) -> bool:
        return True

    def settings(self, ctx: Context) -> dict[str, Any]:
        return {}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        return {}

    @abstractmethod
    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        """Do the stage's work in ``workdir``."""

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """(outputs: name -> path or value, metrics)."""
        return {}, {}

    def validate(self, ctx: Context, inputs: dict[str, Path]) -> None:  # noqa: B027 (an optional hook)
        """Check given artifacts (a genotype, weights) before the stage's folder is cleared for a rerun, so a
        bad one stops the pipeline with the earlier results of this stage still there."""

    def check(self, ctx: Context) -> None:  # noqa: B027 (an optional hook)
        """Load the stage's config with its overrides before anything runs, so that a typo in the last
        stage's opts is found before hours of search and training (not in the search stage: ``nasnet_det``
        does not import ``search``, and the search runs first anyway)."""


def _check_classification(stage: str, node: str, config_file: str, opts: list[str], dataset: str) -> None:
    from nasnet_det.classification.config import load_config

    try:
        load_config(resolve_path(config_file), [*opts, "DATA.DATASET", dataset])
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise StageError(stage, f"{node}.CONFIG_FILE {config_file} with {node}.OPTS: "
                                f"{e.args[0] if e.args else e}") from None


def _check_detection(stage: str, config_file: str, opts: list[str]) -> None:
    from nasnet_det.config import load_cfg
    from nasnet_det.detection.config import get_nasnet_cfg, validate_input_sizes

    try:
        validate_input_sizes(load_cfg(get_nasnet_cfg(), resolve_path(config_file), opts))
    except (ValueError, KeyError, AssertionError, FileNotFoundError) as e:
        raise StageError(stage, f"DETECT.CONFIG_FILE {config_file} with DETECT.OPTS / EVALUATE.OPTS: "
                                f"{e.args[0] if e.args else e}") from None


def _tool_settings(ctx: Context, node: str) -> dict[str, Any]:
    c = ctx.cfg[node]
    return {"config": config_chain(node.lower(), f"{node}.CONFIG_FILE", c.CONFIG_FILE), "opts": list(c.OPTS)}


class SearchStage(Stage):
    """CIFAR-10 architecture search (``tools/search_cifar.py``), or a given genotype (the shortcut)."""

    name = "search"

    def settings(self, ctx: Context) -> dict[str, Any]:
        c = ctx.cfg.SEARCH
        if c.GENOTYPE:  # a JSON file by its absolute path (its content is checksummed as an input)
            return {"genotype": _file_setting(c.GENOTYPE) if c.GENOTYPE.endswith(".json") else c.GENOTYPE}
        return _tool_settings(ctx, "SEARCH")

    def inputs(self, ctx: Context) -> dict[str, Path]:
        g = ctx.cfg.SEARCH.GENOTYPE
        return {"genotype": resolve_path(g)} if g and g.endswith(".json") else {}

    def given_genotype(self, ctx: Context, inputs: dict[str, Path]):
        from nasnet_det.genotypes import get_genotype

        c = ctx.cfg.SEARCH
        try:
            return get_genotype(str(inputs.get("genotype", c.GENOTYPE)))
        except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
            raise StageError(self.name, f"SEARCH.GENOTYPE {c.GENOTYPE!r}: {e}") from None

    def validate(self, ctx: Context, inputs: dict[str, Path]) -> None:
        if ctx.cfg.SEARCH.GENOTYPE:
            self.given_genotype(ctx, inputs)

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        c = ctx.cfg.SEARCH
        if c.GENOTYPE:
            workdir.mkdir(parents=True, exist_ok=True)
            self.given_genotype(ctx, inputs).save(workdir / "best_genotype.json")
            return
        argv = [python(ctx.cfg), str(tool_path(self.name, "search_cifar.py")),
                "--config-file", str(resolve_path(c.CONFIG_FILE)), "--output-dir", str(workdir), *c.OPTS]
        run_tool(self.name, argv, workdir, ctx.quiet)

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        if ctx.cfg.SEARCH.GENOTYPE:
            return {"kind": "given", "best_genotype": str(workdir / "best_genotype.json")}, {}
        summary = _read_json(self.name, workdir / "summary.json", "the search summary")
        outputs = {"kind": "searched", "best_genotype": "best_genotype.json", "top_k": "top_k.json",
                   "summary": "summary.json", "journal": "journal.sqlite", "rewards_plot": "rewards.png",
                   "best_cells": "best_cells.png"}
        metrics = {name: {k: s.get(k) for k in ("evaluations", "ok", "failed", "best_reward", "mean_reward",
                                                  "first_batches_mean", "last_batches_mean")}
                   for name, s in summary.get("strategies", {}).items()}
        return {k: str(workdir / v) if k != "kind" else v for k, v in outputs.items()}, {"strategies": metrics}


class SelectStage(Stage):
    """Pick the cell to carry on: the best reward of the search, or the best of its top k after training each
    longer on CIFAR-10 (``SELECT.TOP_K`` > 1)."""

    name = "select"

    def settings(self, ctx: Context) -> dict[str, Any]:
        c = ctx.cfg.SELECT
        if c.TOP_K <= 1 or ctx.cfg.SEARCH.GENOTYPE:
            return {"top_k": 1}
        return {"top_k": c.TOP_K, "rerank": config_chain(self.name, "SELECT.RERANK_CONFIG_FILE",
                                                         c.RERANK_CONFIG_FILE), "opts": list(c.RERANK_OPTS)}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        out = ctx.outputs_of("search", self.name)
        return {k: out[k] for k in ("best_genotype", "top_k") if k in out}

    def candidates(self, inputs: dict[str, Path], k: int) -> list[dict[str, Any]]:
        from nasnet_det.space import Genotype

        if "top_k" not in inputs:
            try:
                g = Genotype.load(inputs["best_genotype"])
            except (ValueError, KeyError, FileNotFoundError) as e:
                raise StageError(self.name, f"{inputs['best_genotype']}: not a valid genotype ({e})") from None
            return [{"genotype": g, "reward": None}]
        top = _read_json(self.name, inputs["top_k"], "the search's top-k list")
        if not isinstance(top, list) or not top:
            raise StageError(self.name, f"{inputs['top_k']}: expected a non-empty list of evaluated cells "
                                        "(did every child of the search fail?)")
        out = []
        for e in top[:k]:
            try:
                g = Genotype.from_dict(e["genotype"])
            except (ValueError, KeyError, TypeError) as err:
                raise StageError(self.name, f"{inputs['top_k']}: entry {e.get('id')} has no valid genotype "
                                            f"({err})") from None
            out.append({"genotype": Genotype(g.normal, g.reduce, f"search_{e.get('strategy')}_{e.get('id')}"),
                        "reward": e.get("reward"), "id": e.get("id"), "strategy": e.get("strategy")})
        return out

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        from nasnet_det.draw import draw_genotype

        c = ctx.cfg.SELECT
        k = 1 if ctx.cfg.SEARCH.GENOTYPE else c.TOP_K
        cands = self.candidates(inputs, k)
        workdir.mkdir(parents=True, exist_ok=True)
        for i, cand in enumerate(cands):
            if len(cands) == 1:
                break
            path = cand["genotype"].save(workdir / f"candidate_{i}.json")
            rdir = workdir / f"rerank_{i}"
            argv = [python(ctx.cfg), str(tool_path(self.name, "train_cifar.py")),
                    "--config-file", str(resolve_path(c.RERANK_CONFIG_FILE)), "--output-dir", str(rdir),
                    *genotype_opts("train", path), *c.RERANK_OPTS]
            run_tool(self.name, argv, rdir, ctx.quiet)
            cand["rerank_top1"] = _read_json(self.name, rdir / "final_metrics.json", "re-rank metrics").get("top1")
        key = (lambda c_: c_["rerank_top1"]) if len(cands) > 1 else (lambda c_: 0)
        best = max(cands, key=key)
        best["genotype"].save(workdir / "genotype.json")
        draw_genotype(best["genotype"], workdir / "cells.png", f"selected: {best['genotype'].name}")
        atomic_write(workdir / "selection.json", json.dumps(
            [{k_: (v.name if k_ == "genotype" else v) for k_, v in c_.items()} for c_ in cands], indent=2) + "\n")

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        sel = _read_json(self.name, workdir / "selection.json", "the selection")
        from nasnet_det.space import Genotype

        name = Genotype.load(workdir / "genotype.json").name
        chosen = next((c for c in sel if c["genotype"] == name), {})
        return ({"genotype": str(workdir / "genotype.json"), "cells": str(workdir / "cells.png")},
                {"genotype": name, "reward": chosen.get("reward"), "rerank_top1": chosen.get("rerank_top1"),
                 "candidates": len(sel)})


class _ClassificationStage(Stage):
    node = ""
    tool = ""

    def launch_prefix(self, ctx: Context) -> list[str]:
        c = ctx.cfg[self.node]
        try:
            return torchrun_prefix(ctx.cfg, c.NPROC_PER_NODE, c.get("NNODES", 1), c.get("NODE_RANK", 0),
                                   c.get("RDZV_ENDPOINT", ""))
        except ValueError as e:
            raise StageError(self.name, f"{self.node}: {e}") from None

    def launch_settings(self, ctx: Context) -> dict[str, Any]:
        c = ctx.cfg[self.node]
        return {k.lower(): c[k] for k in ("NPROC_PER_NODE", "NNODES") if k in c}

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        final = _read_json(self.name, workdir / "final_metrics.json", "the training's final metrics")
        for f in ("model_final.pth",):
            if not (workdir / f).is_file():
                raise StageError(self.name, f"the training finished without writing {workdir / f}")
        outputs = {"weights": str(workdir / "model_final.pth"), "final_metrics": str(workdir / "final_metrics.json"),
                   "metrics": str(workdir / "metrics.jsonl"), "curves": str(workdir / "training_curves.png")}
        return outputs, {k: v for k, v in final.items() if isinstance(v, (int, float, str))}


class CifarStage(_ClassificationStage):
    """Final CIFAR-10 training of the chosen cell (``tools/train_cifar.py``; optional: CIFAR.ENABLED)."""

    name, node, tool, optional = "cifar", "CIFAR", "train_cifar.py", True

    def enabled(self, ctx: Context) -> bool:
        return bool(ctx.cfg.CIFAR.ENABLED)

    def settings(self, ctx: Context) -> dict[str, Any]:
        return {**_tool_settings(ctx, "CIFAR"), **self.launch_settings(ctx)}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        return {"genotype": ctx.outputs_of("select", self.name)["genotype"]}

    def check(self, ctx: Context) -> None:
        c = ctx.cfg.CIFAR
        _check_classification(self.name, "CIFAR", c.CONFIG_FILE, [*genotype_opts("train", "nasnet_a"), *c.OPTS],
                              "cifar10")

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        c = ctx.cfg.CIFAR
        argv = [*self.launch_prefix(ctx), str(tool_path(self.name, self.tool)),
                "--config-file", str(resolve_path(c.CONFIG_FILE)), "--output-dir", str(workdir),
                *genotype_opts("train", inputs["genotype"]), *c.OPTS]
        run_tool(self.name, argv, workdir, ctx.quiet)


class PretrainStage(_ClassificationStage):
    """ImageNet pretraining at the NETWORK's N@F (``tools/pretrain_imagenet.py``, torchrun for > 1 process),
    or given weights (the shortcut: our checkpoint, or a timm / pretrainedmodels state dict)."""

    name, node, tool = "pretrain", "PRETRAIN", "pretrain_imagenet.py"

    def settings(self, ctx: Context) -> dict[str, Any]:
        if ctx.cfg.PRETRAIN.WEIGHTS:  # checked against the NETWORK: a changed NETWORK checks them again
            return {"weights": _file_setting(ctx.cfg.PRETRAIN.WEIGHTS), "network": dict(ctx.cfg.NETWORK)}
        return {**_tool_settings(ctx, "PRETRAIN"), **self.launch_settings(ctx), "network": dict(ctx.cfg.NETWORK)}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        inputs = {"genotype": ctx.outputs_of("select", self.name)["genotype"]}
        if ctx.cfg.PRETRAIN.WEIGHTS:
            w = resolve_path(ctx.cfg.PRETRAIN.WEIGHTS)
            if not w.is_file():
                raise StageError(self.name, f"PRETRAIN.WEIGHTS {ctx.cfg.PRETRAIN.WEIGHTS!r} does not exist "
                                            "(expected a nasnet-det checkpoint or a timm / pretrainedmodels "
                                            "state dict .pth of the NETWORK)")
            inputs["weights"] = w
        return inputs

    def check(self, ctx: Context) -> None:
        c = ctx.cfg.PRETRAIN
        if not c.WEIGHTS:
            _check_classification(self.name, "PRETRAIN", c.CONFIG_FILE,
                                  [*network_opts("train", ctx.cfg, "nasnet_a"), *c.OPTS], "imagenet")

    def validate(self, ctx: Context, inputs: dict[str, Path]) -> None:
        if not ctx.cfg.PRETRAIN.WEIGHTS:
            return
        # Given weights must fit the NETWORK and the chosen cell: find out now, not in the detection stage.
        import torch
        from torch import nn

        from nasnet_det.detection.weights import load_pretrained_nasnet
        from nasnet_det.pipeline.report import build_backbone

        try:
            torch.load(inputs["weights"], map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - whatever torch.load raises, the file is not a checkpoint
            raise StageError(self.name, f"PRETRAIN.WEIGHTS {inputs['weights']} is not a readable PyTorch file "
                                        f"(expected a nasnet-det checkpoint or a timm / pretrainedmodels state "
                                        f"dict .pth): {type(e).__name__}: {e}") from None
        try:  # the path, not the loaded dict: a nasnet-det checkpoint's arch is checked too
            load_pretrained_nasnet(nn.Sequential(build_backbone(ctx.cfg, inputs["genotype"])), inputs["weights"],
                                   strict=True)
        except Exception as e:  # noqa: BLE001 - a mismatched file is the same bad input
            raise StageError(self.name, f"PRETRAIN.WEIGHTS {inputs['weights']} does not fit NETWORK and the "
                                        f"selected genotype {inputs['genotype']}: {e}") from None

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        c = ctx.cfg.PRETRAIN
        workdir.mkdir(parents=True, exist_ok=True)
        if c.WEIGHTS:  # checked by validate
            return
        argv = [*self.launch_prefix(ctx), str(tool_path(self.name, self.tool)),
                "--config-file", str(resolve_path(c.CONFIG_FILE)), "--output-dir", str(workdir),
                *network_opts("train", ctx.cfg, inputs["genotype"]), *c.OPTS]
        run_tool(self.name, argv, workdir, ctx.quiet)

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        if ctx.cfg.PRETRAIN.WEIGHTS:
            return {"kind": "given", "weights": str(resolve_path(ctx.cfg.PRETRAIN.WEIGHTS).resolve())}, {}
        outputs, metrics = super().collect(ctx, workdir)
        return {"kind": "pretrained", **outputs}, metrics


def _d2_launch(c: CN, eval_only: bool = False) -> list[str]:
    if eval_only:
        return ["--num-gpus", str(c.NUM_GPUS)]
    return ["--num-gpus", str(c.NUM_GPUS), "--num-machines", str(c.NUM_MACHINES), "--machine-rank",
            str(c.MACHINE_RANK), "--dist-url", c.DIST_URL]


class DetectStage(Stage):
    """Faster R-CNN training with the pretrained backbone (``tools/train_net.py``, detectron2 launch)."""

    name = "detect"

    def settings(self, ctx: Context) -> dict[str, Any]:
        c = ctx.cfg.DETECT
        return {**_tool_settings(ctx, "DETECT"), "network": dict(ctx.cfg.NETWORK),
                "launch": [c.NUM_GPUS, c.NUM_MACHINES]}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        return {"genotype": ctx.outputs_of("select", self.name)["genotype"],
                "backbone": ctx.outputs_of("pretrain", self.name)["weights"]}

    def check(self, ctx: Context) -> None:
        _check_detection(self.name, ctx.cfg.DETECT.CONFIG_FILE,
                         [*network_opts("detect", ctx.cfg, "nasnet_a"), *ctx.cfg.DETECT.OPTS])

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        c = ctx.cfg.DETECT
        # Evaluation is the next stage's job: no test set while training (detectron2 would evaluate at the end).
        argv = [python(ctx.cfg), str(tool_path(self.name, "train_net.py")),
                "--config-file", str(resolve_path(c.CONFIG_FILE)), *_d2_launch(c), "--resume",
                "OUTPUT_DIR", str(workdir), "DATASETS.TEST", "()",
                *network_opts("detect", ctx.cfg, inputs["genotype"]),
                "MODEL.NASNET.WEIGHTS", str(inputs["backbone"]), *c.OPTS]
        run_tool(self.name, argv, workdir, ctx.quiet)

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
                "config": str(workdir / "config.yaml")}, metrics


class EvaluateStage(Stage):
    """COCO box AP of the trained detector (``tools/train_net.py --eval-only``): the 12 numbers and per
    category."""

    name = "evaluate"

    def settings(self, ctx: Context) -> dict[str, Any]:
        return {**_tool_settings(ctx, "DETECT"), "eval_opts": list(ctx.cfg.EVALUATE.OPTS),
                "network": dict(ctx.cfg.NETWORK), "launch": ctx.cfg.EVALUATE.NUM_GPUS}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        return {"genotype": ctx.outputs_of("select", self.name)["genotype"],
                "detector": ctx.outputs_of("detect", self.name)["weights"]}

    def check(self, ctx: Context) -> None:
        _check_detection(self.name, ctx.cfg.DETECT.CONFIG_FILE, [*network_opts("detect", ctx.cfg, "nasnet_a"),
                                                                 *ctx.cfg.DETECT.OPTS, *ctx.cfg.EVALUATE.OPTS])

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        if workdir.is_dir():  # evaluation has nothing to resume: start clean so no stale result is read
            shutil.rmtree(workdir / "inference", ignore_errors=True)
        c = ctx.cfg.DETECT
        argv = [python(ctx.cfg), str(tool_path(self.name, "train_net.py")),
                "--config-file", str(resolve_path(c.CONFIG_FILE)), *_d2_launch(ctx.cfg.EVALUATE, eval_only=True),
                "--eval-only", "OUTPUT_DIR", str(workdir), *network_opts("detect", ctx.cfg, inputs["genotype"]),
                *c.OPTS, *ctx.cfg.EVALUATE.OPTS, "MODEL.WEIGHTS", str(inputs["detector"])]
        run_tool(self.name, argv, workdir, ctx.quiet)

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        found = sorted((workdir / "inference").glob("*/coco_metrics.json"))
        if not found:
            raise StageError(self.name, f"the evaluation wrote no {workdir}/inference/<dataset>/coco_metrics.json "
                                        "(is DATASETS.TEST empty?)")
        results = {p.parent.name: json.loads(p.read_text()).get("bbox", {}) for p in found}
        return {"coco_metrics": {k: str(workdir / "inference" / k / "coco_metrics.json") for k in results}}, \
            {"bbox": results}


class ReportStage(Stage):
    """``report.md`` with its PNGs (see :mod:`nasnet_det.pipeline.report`)."""

    name = "report"

    def settings(self, ctx: Context) -> dict[str, Any]:
        return {"profile_image_size": ctx.cfg.REPORT.PROFILE_IMAGE_SIZE, "network": dict(ctx.cfg.NETWORK)}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        # The report shows every stage's manifest: a stage rerun on its own (--only) must redo the report.
        manifests = {f"{s.name}_manifest": ctx.stage_dir(s.name) / MANIFEST_NAME for s in STAGES
                     if s.name != self.name and (ctx.stage_dir(s.name) / MANIFEST_NAME).is_file()}
        return {"genotype": ctx.outputs_of("select", self.name)["genotype"], **manifests}

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        from nasnet_det.pipeline.report import write_report

        write_report(ctx, workdir, STAGES)

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"report": str(workdir / "report.md")}, {}


STAGES: list[Stage] = [SearchStage(), SelectStage(), CifarStage(), PretrainStage(), DetectStage(), EvaluateStage(),
                       ReportStage()]
