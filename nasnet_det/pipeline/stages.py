"""The stages: search -> select -> cifar (optional) -> pretrain -> detect -> evaluate -> report.

A stage is one class marked ``@register_stage``: its ``name`` names its folder, its config node (the name in
capitals, added by ``add_config``) and its ``--from``/``--until``/``--only`` choice; ``needs`` names the
stages whose outputs it reads, which run before it (:func:`pipeline_stages`). A stage says what its result
depends on (``settings``: hashed into the manifest; ``inputs``: files of earlier stages, checksummed), runs
(the training stages as child processes of the existing tools, into the stage's folder, so the tool's own
resume continues an interrupted run), and reports its ``outputs`` and ``metrics``.
"""

from __future__ import annotations

import json
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from fvcore.common.config import CfgNode as CN

from nasnet_det.engine.scaling import SCHEDULE_FILE
from nasnet_det.pipeline.backends import ExecutionBackend, Workers, create_backend
from nasnet_det.pipeline.launch import StageError, python, run_tool, tool_path
from nasnet_det.pipeline.manifest import MANIFEST_NAME, read_manifest_checked, sha256_file
from nasnet_det.pipeline.paths import repo_root, resolve_path
from nasnet_det.utils.errors import bad_input_message
from nasnet_det.utils.io import atomic_write
from nasnet_det.utils.yaml_config import load_config_tree

# The MODEL.NASNET keys the pipeline passes to pretraining, detection and evaluation (with the selected
# GENOTYPE): the backbone must load into the detector, so they are set once, in the pipeline's config. The
# other keys of the node (DROPOUT, DROP_PATH_KEEP_PROB, ...) are each tool's own: its CONFIG_FILE and OPTS.
SHARED_NETWORK_KEYS = ("NUM_CELLS", "PENULTIMATE_FILTERS", "FILTERS", "STEM_FILTERS", "SKIP_REDUCTION_LAYER_INPUT",
                       "PAD_MODE")


def genotype_opts(genotype: str | Path) -> list[str]:
    return ["MODEL.NASNET.GENOTYPE", str(genotype)]


def network_opts(cfg: CN, genotype: str | Path) -> list[str]:
    """``KEY VALUE`` overrides giving a tool the pipeline's network (its shared ``MODEL.NASNET`` keys) and
    ``genotype``."""
    node = cfg.MODEL.NASNET
    return [*genotype_opts(genotype), *(x for k in SHARED_NETWORK_KEYS for x in (f"MODEL.NASNET.{k}", str(node[k])))]


def network_settings(cfg: CN) -> dict[str, Any]:
    """The shared network keys, as a stage's settings record them (the NETWORK node's keys before it became
    MODEL.NASNET, so a folder written then hashes the same and resumes)."""
    return {k: cfg.MODEL.NASNET[k] for k in SHARED_NETWORK_KEYS}


@dataclass
class Context:
    cfg: CN
    out: Path
    quiet: bool = False
    backend: ExecutionBackend = field(default=None)  # type: ignore[assignment]  # PIPELINE.BACKEND's

    def __post_init__(self) -> None:
        if self.backend is None:
            self.backend = create_backend(self.cfg)

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    def outputs_of(self, stage: str, needed_by: str) -> dict[str, Any]:
        """The outputs of an earlier, finished stage (absolute paths), or a StageError saying to run it."""
        if stage not in REGISTERED[needed_by].needs:  # the order relies on `needs`: keep it the whole truth
            raise StageError(needed_by, f"reads the outputs of stage '{stage}' but does not name it in its needs")
        m, unreadable = read_manifest_checked(self.stage_dir(stage))
        if not m or m.get("status") != "done":
            state = "has not run" if not m else f"is {m.get('status')}"
            if unreadable is not None:
                state = f"has an unreadable {self.stage_dir(stage) / MANIFEST_NAME} ({unreadable})"
            raise StageError(needed_by, f"needs the outputs of stage '{stage}', which {state} in {self.out}; "
                                        f"run the pipeline from '{stage}' (--from {stage})")
        return {k: self.abspath(v) if isinstance(v, str) and k != "kind" else v
                for k, v in m.get("outputs", {}).items()}

    def abspath(self, p: str) -> Any:
        path = Path(p)
        return path if path.is_absolute() else self.out / path


def config_chain(stage: str, key: str, config_file: str) -> dict[str, str]:
    """``{path: sha256}`` of a stage's config file and its ``_BASE_`` files (so editing any changes the hash),
    read as the stage's tool reads them (:func:`load_config_tree`): a cycle, a bad ``_BASE_``, a repeated key or a
    Python tag is the stage's error before the tool starts."""
    path = resolve_path(config_file)
    if not config_file or not path.is_file():
        raise StageError(stage, f"{key} {config_file!r} does not exist (expected a YAML config file of that tool)")
    try:
        files = [Path(name) for name, _ in load_config_tree(path, python_objects=False).files]
    except (ValueError, FileNotFoundError, yaml.YAMLError) as e:
        raise StageError(stage, f"{key}: {bad_input_message(e, str(path))}") from None
    chain: dict[str, str] = {}
    for file in [files[-1], *files[:-1]]:  # the stage's own file first, then its bases
        if "://" not in str(file):
            chain.setdefault(_stable_name(file), sha256_file(file))
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




def _schedule_output(workdir: Path) -> dict[str, str]:
    return {"schedule": str(workdir / SCHEDULE_FILE)} if (workdir / SCHEDULE_FILE).is_file() else {}


def _trained_with(stage: str, workdir: Path) -> dict[str, Any]:
    """What the manifest records of how a training stage ran, from the trainer's ``schedule.json``: the device it
    chose (``auto`` included), the global batch and the effective LR. Empty when the trainer wrote none."""
    path = workdir / SCHEDULE_FILE
    if not path.is_file():
        return {}
    schedule = _read_json(stage, path, "the trainer's effective schedule")
    device = schedule.get("device") or {}  # both trainers: engine/devices.describe_device's record
    name = f"{device.get('device')} ({device['name']})" if device.get("name") else device.get("device")
    picked = {"device": name, "torch_cuda": device.get("torch_cuda"),
              # classification's images per optimizer step, detection's per iteration
              "global_batch": schedule.get("global_batch", schedule.get("ims_per_batch")),
              "effective_lr": schedule.get("lr"), "amp": schedule.get("amp")}
    return {k: v for k, v in picked.items() if v is not None}


class Stage(ABC):
    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()  # stages whose outputs this one reads: they run before it
    runs_last: ClassVar[bool] = False  # after every other stage (the report reads all their manifests)
    positive_keys: ClassVar[tuple[str, ...]] = ()  # keys of the stage's node that must be >= 1
    resumes: ClassVar[bool] = False  # its tool resumes from its own checkpoints / journal in the stage's folder
    # outputs (by key) kept only as a record: damaged, they are said (with this note) but do not redo the stage
    kept_outputs: ClassVar[dict[str, str]] = {}

    @classmethod  # noqa: B027 (a stage may have no node)
    def add_config(cls, cfg: CN) -> None:
        """Add the stage's node (``cfg.<NAME>``) with its defaults to the pipeline's config."""

    @classmethod
    def check_config(cls, cfg: CN) -> None:
        """Reject values of the stage's node that no run can use, naming the key."""
        node_name = cls.name.upper()
        node = cfg.get(node_name)
        if node is None:
            return
        if "OPTS" in node and len(node.OPTS) % 2:
            raise ValueError(f"{node_name}.OPTS must be KEY VALUE pairs (an even-length list), got {list(node.OPTS)}")
        for key in cls.positive_keys:
            if node[key] < 1:
                raise ValueError(f"{node_name}.{key} must be >= 1, got {node[key]}")

    def enabled(self, ctx: Context) -> bool:
        return True

    def workers(self, ctx: Context) -> Workers:
        """The training processes the stage runs on (the manifest records their number as world_size)."""
        return Workers()

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


S = TypeVar("S", bound=type[Stage])

# The registered stage classes by name, in registration order (the order of this module).
REGISTERED: dict[str, type[Stage]] = {}


def register_stage(cls: S) -> S:
    """Class decorator adding a stage to the pipeline: its folder, config node, ``--from`` choice and place in
    the order all follow from the class."""
    if not cls.name or cls.name != cls.name.lower() or not cls.name.isidentifier():
        raise ValueError(f"stage {cls.__name__}: name must be a lower-case identifier, got {cls.name!r}")
    if cls.name in REGISTERED:
        raise ValueError(f"stage {cls.__name__}: the name {cls.name!r} is taken by {REGISTERED[cls.name].__name__}")
    REGISTERED[cls.name] = cls
    return cls


def pipeline_stages() -> list[Stage]:
    """One instance of each registered stage, in run order: every stage after the stages it ``needs`` (where
    that leaves a choice, in registration order), and those that ``runs_last`` after all others."""
    order: list[type[Stage]] = []
    for last in (False, True):
        todo = [c for c in REGISTERED.values() if c.runs_last == last]
        placed = {c.name for c in order}
        for c in todo:
            for need in c.needs:
                if need not in REGISTERED:
                    raise ValueError(f"stage '{c.name}' needs '{need}', which is not a registered stage")
                if REGISTERED[need].runs_last and not last:
                    raise ValueError(f"stage '{c.name}' needs '{need}', which runs after every other stage")
        while todo:
            ready = next((c for c in todo if placed.issuperset(c.needs)), None)
            if ready is None:
                raise ValueError(f"stages {', '.join(c.name for c in todo)} cannot be ordered: their needs "
                                 "form a circle")
            order.append(ready)
            placed.add(ready.name)
            todo.remove(ready)
    return [c() for c in order]


def stage_names() -> list[str]:
    """The stage names in run order (the choices of ``--from``/``--until``/``--only``)."""
    return [s.name for s in pipeline_stages()]


def _check_classification(stage: str, node: str, config_file: str, opts: list[str], dataset: str) -> CN:
    """The stage's training config, loaded as its tool will load it (bad input: one line naming the key)."""
    from nasnet_det.classification.config import load_config

    try:
        return load_config(resolve_path(config_file), [*opts, "DATA.DATASET", dataset])
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise StageError(stage, f"{node}.CONFIG_FILE {config_file} with {node}.OPTS: "
                                f"{e.args[0] if e.args else e}") from None


def _check_detection(stage: str, config_file: str, opts: list[str]) -> CN:
    """The stage's detectron2 config, loaded as ``tools/train_net.py`` will load it (bad input: one line)."""
    from nasnet_det.config import load_cfg
    from nasnet_det.detection.config import get_nasnet_cfg, validate_input_sizes

    try:
        dcfg = load_cfg(get_nasnet_cfg(), resolve_path(config_file), opts)
        validate_input_sizes(dcfg)
        return dcfg
    except (ValueError, KeyError, AssertionError, FileNotFoundError) as e:
        raise StageError(stage, f"DETECT.CONFIG_FILE {config_file} with DETECT.OPTS / EVALUATE.OPTS: "
                                f"{e.args[0] if e.args else e}") from None


def _tool_node(cfg: CN, node: str, config_file: str) -> CN:
    """Add ``cfg.<node>``, the node of a stage that runs a tool: its config file and ``KEY VALUE`` overrides (read
    back by :func:`_tool_settings`)."""
    cfg[node] = CN()
    cfg[node].CONFIG_FILE = config_file
    cfg[node].OPTS = []
    return cfg[node]


def _tool_settings(ctx: Context, node: str) -> dict[str, Any]:
    c = ctx.cfg[node]
    return {"config": config_chain(node.lower(), f"{node}.CONFIG_FILE", c.CONFIG_FILE), "opts": list(c.OPTS)}


@register_stage
class SearchStage(Stage):
    """CIFAR-10 architecture search (``tools/search_cifar.py``), or a given genotype (the shortcut)."""

    name, resumes = "search", True
    # The journal serves a search that is not finished yet; the finished one's results are its other outputs.
    kept_outputs = {"journal": " (only a search that is not finished reads it)"}

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        node = _tool_node(cfg, "SEARCH", "configs/search/smoke.yaml")
        # Shortcut: a published genotype ("nasnet_a") or a genotype JSON file; the search stage then does not run.
        node.GENOTYPE = ""

    def settings(self, ctx: Context) -> dict[str, Any]:
        c = ctx.cfg.SEARCH
        if c.GENOTYPE:  # a JSON file by its absolute path (its content is checksummed as an input)
            return {"genotype": _file_setting(c.GENOTYPE) if c.GENOTYPE.endswith(".json") else c.GENOTYPE}
        settings = _tool_settings(ctx, "SEARCH")
        # how to recover from a damaged journal says nothing about the result: adding it must resume the
        # search in its folder, not clear it (the damaged journal with it)
        pairs = list(zip(settings["opts"][::2], settings["opts"][1::2]))
        settings["opts"] = [x for k, v in pairs if k != "SEARCH.DAMAGED_JOURNAL" for x in (k, v)]
        return settings

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
                "--config-file", str(resolve_path(c.CONFIG_FILE)), "--output-dir", str(workdir),
                *ctx.backend.search_opts(), *c.OPTS]
        run_tool(self.name, argv, workdir, ctx.quiet)

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        if ctx.cfg.SEARCH.GENOTYPE:
            return {"kind": "given", "best_genotype": str(workdir / "best_genotype.json")}, {}
        summary = _read_json(self.name, workdir / "summary.json", "the search summary")
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


@register_stage
class SelectStage(Stage):
    """Pick the cell to carry on: the best reward of the search, or the best of its top k after training each
    longer on CIFAR-10 (``SELECT.TOP_K`` > 1)."""

    name, needs, positive_keys = "select", ("search",), ("TOP_K",)

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
        if not (isinstance(b, (int, float)) and not isinstance(b, bool) and b >= 0):
            raise ValueError(f"SELECT.LATENCY_BUDGET_MS must be a number of ms >= 0 (0: no budget), got {b!r}")
        if b and cfg.SEARCH.GENOTYPE:
            raise ValueError(f"SELECT.LATENCY_BUDGET_MS={b:g} needs a search to choose from, but SEARCH.GENOTYPE "
                             f"{cfg.SEARCH.GENOTYPE!r} gives the cell; set one of them")

    def within_budget(self, inputs: dict[str, Path], budget: float, k: int) -> list[dict[str, Any]]:
        """The ``k`` most accurate cells of the search whose backbone latency is within ``budget`` ms (the most
        accurate one is on the front; the next ones need not be)."""
        from nasnet_det.genotypes import found_cell_name, found_genotype

        if "pareto" not in inputs:
            raise StageError(self.name, f"SELECT.LATENCY_BUDGET_MS={budget:g}: the search recorded no latencies "
                                        "(no pareto.json); run it with SEARCH.OBJECTIVE latency or "
                                        "SEARCH.LATENCY.RECORD True")
        pareto = _read_json(self.name, inputs["pareto"], "the search's Pareto front")
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
        top = _read_json(self.name, inputs["top_k"], "the search's top-k list")
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
            device = _check_classification(self.name, "SELECT.RERANK", c.RERANK_CONFIG_FILE,
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
                 "latency_ms": chosen.get("latency_ms"), "candidates": len(sel)})


class _ClassificationStage(Stage):
    resumes = True
    node = ""
    tool = ""
    dataset = ""

    def workers(self, ctx: Context) -> Workers:
        c = ctx.cfg[self.node]
        return Workers(c.NPROC_PER_NODE, c.get("NNODES", 1), c.get("NODE_RANK", 0), c.get("RDZV_ENDPOINT", ""))

    @abstractmethod
    def training_config(self, ctx: Context) -> CN:
        """The stage's training config as :meth:`check` loads it."""

    def train(self, ctx: Context, workdir: Path, args: list[str]) -> None:
        ctx.backend.run_classification(self.name, workdir, self.tool, self.dataset, args, self.workers(ctx),
                                       ctx.quiet, self.training_config(ctx).TRAIN.DEVICE)

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
        metrics = {k: v for k, v in final.items() if isinstance(v, (int, float, str))}
        return {**outputs, **_schedule_output(workdir)}, {**metrics, **_trained_with(self.name, workdir)}


@register_stage
class CifarStage(_ClassificationStage):
    """Final CIFAR-10 training of the chosen cell (``tools/train_cifar.py``; optional: CIFAR.ENABLED)."""

    name, node, tool, dataset = "cifar", "CIFAR", "train_cifar.py", "cifar10"
    needs, positive_keys = ("select",), ("NPROC_PER_NODE",)

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        node = _tool_node(cfg, "CIFAR", "configs/train/cifar10_smoke.yaml")
        node.ENABLED = False
        node.NPROC_PER_NODE = 1  # > 1: torchrun --nproc-per-node (one process per GPU; gloo on a CPU)

    def enabled(self, ctx: Context) -> bool:
        return bool(ctx.cfg.CIFAR.ENABLED)

    def settings(self, ctx: Context) -> dict[str, Any]:
        return {**_tool_settings(ctx, "CIFAR"), **self.launch_settings(ctx)}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        return {"genotype": ctx.outputs_of("select", self.name)["genotype"]}

    def training_config(self, ctx: Context) -> CN:
        c = ctx.cfg.CIFAR
        return _check_classification(self.name, "CIFAR", c.CONFIG_FILE, [*genotype_opts("nasnet_a"), *c.OPTS],
                                     "cifar10")

    def check(self, ctx: Context) -> None:
        self.training_config(ctx)

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        c = ctx.cfg.CIFAR
        self.train(ctx, workdir, ["--config-file", str(resolve_path(c.CONFIG_FILE)), "--output-dir", str(workdir),
                                  *genotype_opts(inputs["genotype"]), *c.OPTS])


@register_stage
class PretrainStage(_ClassificationStage):
    """ImageNet pretraining at the MODEL.NASNET's N@F (``tools/pretrain_imagenet.py``, torchrun for > 1
    process), or given weights (the shortcut: our checkpoint, or a timm / pretrainedmodels state dict)."""

    name, node, tool, dataset = "pretrain", "PRETRAIN", "pretrain_imagenet.py", "imagenet"
    needs, positive_keys = ("select",), ("NPROC_PER_NODE", "NNODES")

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        node = _tool_node(cfg, "PRETRAIN", "configs/train/imagenet_smoke.yaml")
        # Shortcut: a nasnet-det checkpoint (.pth with arch + state_dict) or a timm / pretrainedmodels state
        # dict of the MODEL.NASNET network; pretraining then does not run.
        node.WEIGHTS = ""
        # torchrun: processes per machine, machines, this machine's rank, rendezvous HOST:PORT (multi-machine
        # only).
        node.NPROC_PER_NODE = 1
        node.NNODES = 1
        node.NODE_RANK = 0
        node.RDZV_ENDPOINT = ""

    def settings(self, ctx: Context) -> dict[str, Any]:
        if ctx.cfg.PRETRAIN.WEIGHTS:  # checked against the network: a changed network checks them again
            return {"weights": _file_setting(ctx.cfg.PRETRAIN.WEIGHTS), "network": network_settings(ctx.cfg)}
        return {**_tool_settings(ctx, "PRETRAIN"), **self.launch_settings(ctx), "network": network_settings(ctx.cfg)}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        inputs = {"genotype": ctx.outputs_of("select", self.name)["genotype"]}
        if ctx.cfg.PRETRAIN.WEIGHTS:
            w = resolve_path(ctx.cfg.PRETRAIN.WEIGHTS)
            if not w.is_file():
                raise StageError(self.name, f"PRETRAIN.WEIGHTS {ctx.cfg.PRETRAIN.WEIGHTS!r} does not exist "
                                            "(expected a nasnet-det checkpoint or a timm / pretrainedmodels "
                                            "state dict .pth of the MODEL.NASNET network)")
            inputs["weights"] = w
        return inputs

    def training_config(self, ctx: Context) -> CN:
        c = ctx.cfg.PRETRAIN
        return _check_classification(self.name, "PRETRAIN", c.CONFIG_FILE,
                                     [*network_opts(ctx.cfg, "nasnet_a"), *c.OPTS], "imagenet")

    def check(self, ctx: Context) -> None:
        if not ctx.cfg.PRETRAIN.WEIGHTS:
            self.training_config(ctx)

    def validate(self, ctx: Context, inputs: dict[str, Path]) -> None:
        if not ctx.cfg.PRETRAIN.WEIGHTS:
            return
        # Given weights must fit the network and the chosen cell: find out now, not in the detection stage.
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
            raise StageError(self.name, f"PRETRAIN.WEIGHTS {inputs['weights']} does not fit MODEL.NASNET and the "
                                        f"selected genotype {inputs['genotype']}: {e}") from None

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        c = ctx.cfg.PRETRAIN
        workdir.mkdir(parents=True, exist_ok=True)
        if c.WEIGHTS:  # checked by validate
            return
        self.train(ctx, workdir, ["--config-file", str(resolve_path(c.CONFIG_FILE)), "--output-dir", str(workdir),
                                  *network_opts(ctx.cfg, inputs["genotype"]), *c.OPTS])

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        if ctx.cfg.PRETRAIN.WEIGHTS:
            return {"kind": "given", "weights": str(resolve_path(ctx.cfg.PRETRAIN.WEIGHTS).resolve())}, {}
        outputs, metrics = super().collect(ctx, workdir)
        return {"kind": "pretrained", **outputs}, metrics


@register_stage
class DetectStage(Stage):
    """Faster R-CNN training with the pretrained backbone (``tools/train_net.py``, detectron2 launch)."""

    name, needs, positive_keys, resumes = "detect", ("select", "pretrain"), ("NUM_GPUS", "NUM_MACHINES"), True

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        node = _tool_node(cfg, "DETECT", "configs/detection/smoke-nasnet-c4.yaml")
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
        return {**_tool_settings(ctx, "DETECT"), "network": network_settings(ctx.cfg),
                "launch": [c.NUM_GPUS, c.NUM_MACHINES]}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        return {"genotype": ctx.outputs_of("select", self.name)["genotype"],
                "backbone": ctx.outputs_of("pretrain", self.name)["weights"]}

    def detection_config(self, ctx: Context) -> CN:
        """The detectron2 config as the training loads it (its MODEL.DEVICE places the workers)."""
        return _check_detection(self.name, ctx.cfg.DETECT.CONFIG_FILE,
                                [*network_opts(ctx.cfg, "nasnet_a"), *ctx.cfg.DETECT.OPTS])

    def check(self, ctx: Context) -> None:
        self.detection_config(ctx)

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
                "config": str(workdir / "config.yaml"), **_schedule_output(workdir)}, \
            {**metrics, **_trained_with(self.name, workdir)}


@register_stage
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
        return {**_tool_settings(ctx, "DETECT"), "eval_opts": list(ctx.cfg.EVALUATE.OPTS),
                "network": network_settings(ctx.cfg), "launch": ctx.cfg.EVALUATE.NUM_GPUS}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        return {"genotype": ctx.outputs_of("select", self.name)["genotype"],
                "detector": ctx.outputs_of("detect", self.name)["weights"]}

    def check(self, ctx: Context) -> None:
        self.detection_config(ctx)

    def detection_config(self, ctx: Context) -> CN:
        """The detectron2 config as the evaluation loads it (its MODEL.DEVICE places the workers)."""
        return _check_detection(self.name, ctx.cfg.DETECT.CONFIG_FILE, [*network_opts(ctx.cfg, "nasnet_a"),
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


@register_stage
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

    def run(self, ctx: Context, workdir: Path, inputs: dict[str, Path]) -> None:
        from nasnet_det.pipeline.report import write_report

        write_report(ctx, workdir, [s.name for s in self.reported()])

    def collect(self, ctx: Context, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"report": str(workdir / "report.md")}, {}

