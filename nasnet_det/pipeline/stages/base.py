"""The framework of the pipeline's stages: :class:`Stage`, the registry :data:`STAGES`, the run order
(:func:`pipeline_stages`), the :class:`Context` a stage runs in, and the helpers the stages share.

A stage is one class marked ``@STAGES.register()`` in a module of its own under this package: its ``name`` names
its folder, its config node (the name in capitals, added by ``add_config``) and its ``--from``/``--until``/
``--only`` choice; ``needs`` names the stages whose outputs it reads, which run before it, and ``order`` places it
among the stages its needs leave free (:func:`pipeline_stages`). A stage says what its result depends on
(``settings``: hashed into the manifest; ``inputs``: files of earlier stages, checksummed), runs (the training
stages as child processes of the existing tools, into the stage's folder, so the tool's own resume continues an
interrupted run), and reports its ``outputs`` and ``metrics``. It also plans itself (``plan``: the table of
``nasnet-det plan``) and writes its parts of ``report.md`` (``report_sections``, ``smoke_reasons``).
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from fvcore.common.config import CfgNode as CN

from nasnet_det.engine.scaling import SCHEDULE_FILE
from nasnet_det.pipeline.backends import ExecutionBackend, Workers, create_backend
from nasnet_det.pipeline.launch import StageError
from nasnet_det.pipeline.manifest import MANIFEST_NAME, read_manifest_checked, sha256_file
from nasnet_det.pipeline.paths import repo_root, resolve_path
from nasnet_det.pipeline.plan import PlanContext, StagePlan
from nasnet_det.pipeline.report import Report, ReportSection, fmt_num
from nasnet_det.utils.errors import bad_input_message, require
from nasnet_det.utils.registry import Registry
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
        if stage not in STAGES.get(needed_by).needs:  # the order relies on `needs`: keep it the whole truth
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


def file_setting(path: str) -> str:
    return str(resolve_path(path).resolve())


def read_json(stage: str, path: Path, what: str) -> Any:
    if not path.is_file():
        raise StageError(stage, f"expected {what} at {path}, but the file does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StageError(stage, f"{path} ({what}) is not valid JSON: {e}") from None


def schedule_output(workdir: Path) -> dict[str, str]:
    return {"schedule": str(workdir / SCHEDULE_FILE)} if (workdir / SCHEDULE_FILE).is_file() else {}


def trained_with(stage: str, workdir: Path) -> dict[str, Any]:
    """What the manifest records of how a training stage ran, from the trainer's ``schedule.json``: the device it
    chose (``auto`` included), the global batch and the effective LR. Empty when the trainer wrote none."""
    path = workdir / SCHEDULE_FILE
    if not path.is_file():
        return {}
    schedule = read_json(stage, path, "the trainer's effective schedule")
    device = schedule.get("device") or {}  # both trainers: engine/devices.describe_device's record
    name = f"{device.get('device')} ({device['name']})" if device.get("name") else device.get("device")
    picked = {"device": name, "torch_cuda": device.get("torch_cuda"),
              # classification's images per optimizer step, detection's per iteration
              "global_batch": schedule.get("global_batch", schedule.get("ims_per_batch")),
              "effective_lr": schedule.get("lr"), "amp": schedule.get("amp")}
    return {k: v for k, v in picked.items() if v is not None}


# Below this many held-out images a top-1 checks that the chain works, it does not measure accuracy (ImageNet's
# val split has 50,000 images).
SMOKE_HELD_OUT_IMAGES = 10_000


class Stage(ABC):
    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()  # stages whose outputs this one reads: they run before it
    # Where it runs among the stages whose needs are met (lower first; equal: registration order, i.e. module
    # name). The shipped stages are 10 (search) to 60 (evaluate): a new stage without one runs after them.
    order: ClassVar[int] = 100
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
        if "OPTS" in node:
            require(len(node.OPTS) % 2 == 0, f"{node_name}.OPTS", list(node.OPTS),
                    "KEY VALUE pairs (an even-length list)")
        for key in cls.positive_keys:
            require(node[key] >= 1, f"{node_name}.{key}", node[key], "an integer >= 1")

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

    def plan(self, pc: PlanContext) -> StagePlan:
        """What the stage will do, before it runs (its rows and checks of ``nasnet-det plan``)."""
        return StagePlan(self.name, [("runs", "yes (no planner for this stage: nothing to show)")])

    def report_sections(self, report: Report) -> list[ReportSection]:
        """The stage's sections of ``report.md``, from the manifests in ``report`` (its own may be missing)."""
        return []

    def smoke_reasons(self, report: Report) -> list[str]:
        """Why the stage's figures in ``report`` check the chain rather than measure (tiny held-out sets, short
        schedules); empty: they are real-scale, or the stage has none."""
        return []

    def check(self, ctx: Context) -> None:  # noqa: B027 (an optional hook)
        """Load the stage's config with its overrides before anything runs, so that a typo in the last
        stage's opts is found before hours of search and training (not in the search stage: ``nasnet_det``
        does not import ``search``, and the search runs first anyway)."""


# The registered stage classes by name, in registration order (nasnet_det.pipeline.stages imports its modules in
# name order): ``@STAGES.register()`` adds a stage; its folder, config node, ``--from`` choice and place in the
# order all follow from the class.
STAGES = Registry("stage")


def _check_stage_name(key: str, cls: type[Stage]) -> None:
    if not cls.name or cls.name != cls.name.lower() or not cls.name.isidentifier() or cls.name != key:
        raise ValueError(f"stage {cls.__name__}: name must be a lower-case identifier, got {cls.name!r}")


def pipeline_stages() -> list[Stage]:
    """One instance of each registered stage, in run order: every stage after the stages it ``needs`` (where
    that leaves a choice, by ``order``, then registration order), and those that ``runs_last`` after all others."""
    for key, cls in STAGES:
        _check_stage_name(key, cls)
    in_order: list[type[Stage]] = []
    for last in (False, True):
        todo = sorted((c for c in STAGES.values() if c.runs_last == last), key=lambda c: c.order)  # stable
        placed = {c.name for c in in_order}
        for c in todo:
            for need in c.needs:
                if need not in STAGES:
                    raise ValueError(f"stage '{c.name}' needs '{need}', which is not a registered stage")
                if STAGES.get(need).runs_last and not last:
                    raise ValueError(f"stage '{c.name}' needs '{need}', which runs after every other stage")
        while todo:
            ready = next((c for c in todo if placed.issuperset(c.needs)), None)
            if ready is None:
                raise ValueError(f"stages {', '.join(c.name for c in todo)} cannot be ordered: their needs "
                                 "form a circle")
            in_order.append(ready)
            placed.add(ready.name)
            todo.remove(ready)
    return [c() for c in in_order]


def stage_names() -> list[str]:
    """The stage names in run order (the choices of ``--from``/``--until``/``--only``)."""
    return [s.name for s in pipeline_stages()]


def check_classification(stage: str, node: str, config_file: str, opts: list[str], dataset: str) -> CN:
    """The stage's training config, loaded as its tool will load it (bad input: one line naming the key)."""
    from nasnet_det.classification.config import load_config

    try:
        return load_config(resolve_path(config_file), [*opts, "DATA.DATASET", dataset])
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise StageError(stage, f"{node}.CONFIG_FILE {config_file} with {node}.OPTS: "
                                f"{e.args[0] if e.args else e}") from None


def check_detection(stage: str, config_file: str, opts: list[str]) -> CN:
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


def tool_node(cfg: CN, node: str, config_file: str) -> CN:
    """Add ``cfg.<node>``, the node of a stage that runs a tool: its config file and ``KEY VALUE`` overrides (read
    back by :func:`tool_settings`)."""
    cfg[node] = CN()
    cfg[node].CONFIG_FILE = config_file
    cfg[node].OPTS = []
    return cfg[node]


def tool_settings(ctx: Context, node: str) -> dict[str, Any]:
    c = ctx.cfg[node]
    return {"config": config_chain(node.lower(), f"{node}.CONFIG_FILE", c.CONFIG_FILE), "opts": list(c.OPTS)}


class ClassificationStage(Stage):
    """A stage that trains with a classification tool (``tool``, on ``dataset``) configured by its node's
    CONFIG_FILE and OPTS, on NPROC_PER_NODE processes per machine (torchrun for more than one)."""

    resumes = True
    node = ""
    tool = ""
    dataset = ""
    title = ""  # in the report

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
        final = read_json(self.name, workdir / "final_metrics.json", "the training's final metrics")
        if not (workdir / "model_final.pth").is_file():
            raise StageError(self.name, f"the training finished without writing {workdir / 'model_final.pth'}")
        outputs = {"weights": str(workdir / "model_final.pth"), "final_metrics": str(workdir / "final_metrics.json"),
                   "metrics": str(workdir / "metrics.jsonl"), "curves": str(workdir / "training_curves.png")}
        metrics = {k: v for k, v in final.items() if isinstance(v, (int, float, str))}
        return {**outputs, **schedule_output(workdir)}, {**metrics, **trained_with(self.name, workdir)}

    def report_sections(self, report: Report) -> list[ReportSection]:
        m = report.manifests.get(self.name)
        if not m:
            return [ReportSection("Training", [f"{self.title}: not run.", ""])]
        if m.get("outputs", {}).get("kind") == "given":
            return [ReportSection("Training", [f"{self.title}: not run; weights given "
                                               f"(`{m['outputs'].get('weights')}`).", ""])]
        met = m.get("metrics", {})
        lines = [f"**{self.title}** ({m.get('status')}): top-1 {fmt_num(met.get('top1'))}%, top-5 "
                 f"{fmt_num(met.get('top5'))}% on {met.get('images', '-')} held-out images{report.tag}; "
                 f"weights `{m.get('outputs', {}).get('weights')}`.", ""]
        png = report.copy(self.name, "curves", f"{self.name}_curves.png")
        if png:
            lines += [f"![{self.name} curves]({png})", ""]
        return [ReportSection("Training", lines)]

    def smoke_reasons(self, report: Report) -> list[str]:
        met = report.manifest(self.name).get("metrics", {})
        if isinstance(met.get("images"), int) and met["images"] < SMOKE_HELD_OUT_IMAGES:
            return [f"{self.name} top-1 is on {met['images']} held-out images"]
        return []
