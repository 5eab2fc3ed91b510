"""A pipeline stage is one module: found in the stages package, it registers itself, takes its place in the run
order, plans itself and writes its own report sections and smoke-scale reasons, with no other file edited."""

from __future__ import annotations

import sys
from pathlib import Path

from helpers.pipeline import SMOKE, TINY

from nasnet_det.pipeline import Pipeline, load_pipeline_config

# A stage as a new module of nasnet_det/pipeline/stages/ would hold it.
BOX_COUNT_MODULE = '''
from nasnet_det.pipeline.plan import StagePlan
from nasnet_det.pipeline.report import Part, ReportSection
from nasnet_det.pipeline.stages.base import STAGES, Stage


@STAGES.register()
class BoxCountStage(Stage):
    name, needs = "boxcount", ("select",)

    def inputs(self, ctx):
        return {"genotype": ctx.outputs_of("select", self.name)["genotype"]}

    def run(self, ctx, workdir, inputs):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "boxes.txt").write_text("7")

    def collect(self, ctx, workdir):
        return {"boxes": str(workdir / "boxes.txt")}, {"boxes": 7}

    def plan(self, pc):
        return StagePlan(self.name, [("counts", "the boxes of the chosen cell")])

    def report_sections(self, report):
        boxes = report.manifest(self.name).get("metrics", {}).get("boxes")
        return [ReportSection("Box count", [f"{boxes} boxes{report.tag}.", ""]),
                ReportSection("Box count, drawn", ["Not drawn.", ""], Part.NETWORK)]

    def smoke_reasons(self, report):
        return ["the boxes are counted by a toy"] if report.manifest(self.name) else []
'''


def test_a_new_stage_module_plans_itself_and_writes_its_own_report_sections(toy_stages, tmp_path: Path,
                                                                            monkeypatch):
    import nasnet_det.pipeline.stages as stages
    from nasnet_det.pipeline.plan import Machine, Target
    from nasnet_det.pipeline.planner import make_plan
    from nasnet_det.utils.registry import import_modules

    more = tmp_path / "more_stages"  # an extra folder of the package, so the checkout is left as it is
    more.mkdir()
    (more / "box_count.py").write_text(BOX_COUNT_MODULE)
    monkeypatch.setattr(stages, "__path__", [*stages.__path__, str(more)])
    monkeypatch.setattr(stages, "box_count", None, raising=False)  # the import's attribute goes with the test
    try:
        import_modules(stages)  # what the package does when it is imported
    finally:
        sys.modules.pop("nasnet_det.pipeline.stages.box_count", None)
    # `order` places a stage among those its needs leave free: this one between cifar and pretrain
    toy_stages.register(type("EarlyStage", (toy_stages.Stage,), {"name": "early", "needs": ("select",), "order": 35,
                                                                 "run": lambda self, ctx, workdir, inputs: None}))
    assert stages.stage_names() == ["search", "select", "cifar", "early", "pretrain", "detect", "evaluate", "boxcount",
                                    "report"]

    out = tmp_path / "run"
    cfg = load_pipeline_config(SMOKE, [*TINY, "OUTPUT_DIR", str(out), "SEARCH.GENOTYPE", "nasnet_a"])
    plan = make_plan(cfg, ["select", "boxcount"], Target(Machine(False, 0, "no GPU here")))
    assert [s.stage for s in plan.stages] == ["select", "boxcount"]
    assert plan.stage("boxcount").rows == [("counts", "the boxes of the chosen cell")]

    done = Pipeline(cfg, quiet=True, log=lambda msg: None).run(["search", "select", "boxcount", "report"])
    assert done == {"search": "ran", "select": "ran", "boxcount": "ran", "report": "ran"}
    report = (out / "report" / "report.md").read_text()
    titles = [line for line in report.splitlines() if line.startswith("## ")]
    assert titles == ["## Stages", "## Chosen cell", "## Search", "## Training", "## COCO box AP", "## Box count",
                      "## Sample detections", "## Backbone", "## Box count, drawn", "## Artifacts"]
    assert "the boxes are counted by a toy" in report.splitlines()[4]  # the scale line says why it is smoke
    assert "7 boxes *(smoke scale" in report and "| boxcount | done |" in report


def test_the_plan_knows_which_search_strategies_train_one_supernet():
    """The plan (nasnet_det, which never imports search) names the weight-sharing strategies; they are the ones
    the search registers as such."""
    from nasnet_det.pipeline.plan_stages import WEIGHT_SHARING_STRATEGIES
    from search.strategies import STRATEGIES

    assert sorted(WEIGHT_SHARING_STRATEGIES) == sorted(name for name, cls in STRATEGIES if cls.weight_sharing)


def test_a_stage_setting_no_run_can_use_is_one_line_in_the_form_of_every_config_check():
    import pytest

    with pytest.raises(ValueError, match=r"^DETECT\.NUM_GPUS=0: expected an integer >= 1$"):
        load_pipeline_config(SMOKE, ["DETECT.NUM_GPUS", "0"])
    with pytest.raises(ValueError, match=r"^PRETRAIN\.OPTS=\['SOLVER\.MAX_STEPS'\]: expected KEY VALUE pairs"):
        load_pipeline_config(SMOKE, ["PRETRAIN.OPTS", "['SOLVER.MAX_STEPS']"])


def test_the_stage_modules_are_found_not_listed():
    """Every module of the stages package registers a stage, and the package's __init__ names none of them."""
    import nasnet_det.pipeline.stages as stages

    modules = sorted(p.stem for p in Path(stages.__file__).parent.glob("*.py") if p.stem not in ("__init__", "base"))
    assert sorted(cls.__module__.rpartition(".")[2] for cls in stages.STAGES.values()) == modules
    init = Path(stages.__file__).read_text().splitlines()
    assert "import_modules(sys.modules[__name__])" in init
    assert not [ln for ln in init if ln.startswith(("from nasnet_det.pipeline.stages import", "import nasnet_det"))]
