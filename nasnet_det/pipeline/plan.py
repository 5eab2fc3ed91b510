"""What each stage of a pipeline will do, before a GPU-hour is spent (``nasnet-det plan``, and the table the
pipeline prints and stores when it starts).

Per stage: its processes and devices, the per-device and global batch, the effective learning rate (and per
image), steps / iterations, epochs, warm-up, AMP, the expected wall time and GPU-hours from the throughput its
node states (:mod:`nasnet_det.pipeline.throughput`), and the data it will read, found or missing. The training
settings come from :mod:`nasnet_det.engine.scaling`, the one rule the trainers apply, so the plan shows what they
will use. Under the tables, the checks: one line each, ``FAIL`` (the stage cannot run as planned) or ``WARN``.

A plan is for this machine (the config's own process counts, checked against its GPUs) or, with
:func:`scale_opts` (``--gpus N --nodes M``), for N GPUs per machine on M machines elsewhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PLAN_NAME = "plan.json"  # the pipeline's plan, in OUTPUT_DIR
LEVELS = ("FAIL", "WARN")


@dataclass(frozen=True)
class Check:
    level: str  # FAIL: the stage cannot run as planned; WARN: it can, but look
    stage: str
    message: str

    def line(self) -> str:
        return f"{self.level} {self.stage}: {self.message}"


@dataclass
class StagePlan:
    stage: str
    rows: list[tuple[str, str]]  # the table: setting, value (as printed)
    values: dict[str, Any] = field(default_factory=dict)  # the numbers behind it (JSON)
    checks: list[Check] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "table": dict(self.rows), **self.values,
                "checks": [c.line() for c in self.checks]}


@dataclass(frozen=True)
class Machine:
    """This machine's GPUs, as torch sees them (``reason``: why CUDA is not usable; "" when it is)."""

    cuda: bool
    gpus: int
    reason: str = ""

    @classmethod
    def this_one(cls) -> Machine:
        import torch

        from nasnet_det.engine.devices import cuda_unavailable_reason

        if torch.cuda.is_available():
            return cls(True, torch.cuda.device_count())
        return cls(False, 0, cuda_unavailable_reason())

    def describe(self) -> str:
        return f"{self.gpus} usable GPU(s)" if self.cuda else f"no usable GPU ({self.reason})"


@dataclass(frozen=True)
class Target:
    """Who the plan is for: ``gpus`` per machine on ``nodes`` machines (None: the config's own counts, on this
    machine), and this machine."""

    machine: Machine
    gpus: int | None = None
    nodes: int | None = None

    @property
    def this_machine(self) -> bool:
        return self.gpus is None and self.nodes is None

    def describe(self) -> str:
        if self.this_machine:
            return "this machine, at the config's own process counts"
        per = f"{self.gpus} GPU(s) per machine" if self.gpus is not None else "the config's processes per machine"
        return f"{per} x {self.nodes if self.nodes is not None else 1} machine(s), not this one"


@dataclass
class PlanContext:
    """What a stage plans from (:meth:`Stage.plan`): the pipeline config, the stages' context, the target."""

    cfg: Any  # the pipeline's CfgNode
    ctx: Any  # the stages' Context (stages.base imports this module, not the reverse)
    target: Target
    count_images: bool = True  # count every image of the data folders (False: list them; a pipeline's start)

    @property
    def backend(self) -> str:
        return self.cfg.PIPELINE.BACKEND

    @property
    def machine(self) -> Machine:
        return self.target.machine


def scale_opts(gpus: int | None, nodes: int | None) -> list[str]:
    """Pipeline ``KEY VALUE`` overrides that plan for ``gpus`` GPUs per machine on ``nodes`` machines: the training
    stages get gpus x nodes processes (CIFAR, the re-ranking and evaluation run on one machine: gpus), and
    ``gpus`` alone means one machine. None leaves the config's own counts."""
    for flag, n in (("--gpus", gpus), ("--nodes", nodes)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"{flag} must be a whole number >= 1, got {n!r}")
    opts: list[str] = []
    if gpus is not None:
        opts += ["PRETRAIN.NPROC_PER_NODE", str(gpus), "CIFAR.NPROC_PER_NODE", str(gpus), "DETECT.NUM_GPUS",
                 str(gpus), "EVALUATE.NUM_GPUS", str(gpus)]
    machines = nodes if nodes is not None else (1 if gpus is not None else None)
    if machines is not None:
        opts += ["PRETRAIN.NNODES", str(machines), "DETECT.NUM_MACHINES", str(machines)]
    return opts


@dataclass
class Plan:
    config_file: str
    target: Target
    stages: list[StagePlan]

    @property
    def checks(self) -> list[Check]:
        return [c for s in self.stages for c in s.checks]

    @property
    def failed(self) -> bool:
        return any(c.level == "FAIL" for c in self.checks)

    @property
    def result(self) -> str:
        return "FAIL" if self.failed else "WARN" if self.checks else "OK"

    def stage(self, name: str) -> StagePlan | None:
        return next((s for s in self.stages if s.stage == name), None)

    def totals(self) -> dict[str, Any]:
        """Wall hours and GPU-hours summed over the stages (run one after another), and the stages whose time is
        unknown (left out of the sums)."""
        known = [s for s in self.stages if s.values.get("expected", {}).get("wall_hours") is not None]
        unknown = [s.stage for s in self.stages if "expected" in s.values and s not in known]
        return {"wall_hours": sum(s.values["expected"]["wall_hours"] for s in known),
                "gpu_hours": sum(s.values["expected"]["gpu_hours"] for s in known), "unknown": unknown}

    def as_dict(self) -> dict[str, Any]:
        return {"config_file": self.config_file, "target": {"gpus_per_machine": self.target.gpus,
                                                            "machines": self.target.nodes,
                                                            "this_machine": self.target.this_machine},
                "machine": asdict(self.target.machine), "result": self.result,
                "stages": {s.stage: s.as_dict() for s in self.stages}, "totals": self.totals(),
                "checks": [c.line() for c in self.checks]}

    def format(self) -> str:
        from tabulate import tabulate

        out = [f"plan of {self.config_file} for {self.target.describe()}",
               f"this machine: {self.target.machine.describe()}", ""]
        for s in self.stages:
            out.append(tabulate(s.rows, headers=[s.stage, ""], tablefmt="simple", maxcolwidths=[None, 100],
                                disable_numparse=True))
            out.append("")
        t = self.totals()
        skipped = f" (not counted, throughput unknown: {', '.join(t['unknown'])})" if t["unknown"] else ""
        timed = [s for s in self.stages if "expected" in s.values]
        out.append("total expected: unknown (no stage states its throughput)" if len(t["unknown"]) == len(timed)
                   else f"total expected: {hours(t['wall_hours'])} wall, {t['gpu_hours']:,.0f} GPU-hours{skipped}")
        out.append("")
        out.append("checks:" if self.checks else "checks: none failed")
        out += [c.line() for c in self.checks]
        out.append(f"plan: {self.result} ({sum(c.level == 'FAIL' for c in self.checks)} FAIL, "
                   f"{sum(c.level == 'WARN' for c in self.checks)} WARN)")
        return "\n".join(out)


def hours(h: float) -> str:
    """A duration in hours as people say it."""
    if h < 1:
        return f"{h * 60:.0f} min"
    if h < 48:
        return f"{h:.1f} h"
    return f"{h / 24:.1f} days ({h:,.0f} h)"
