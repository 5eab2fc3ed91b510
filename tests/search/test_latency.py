"""The latency-aware search: MnasNet's reward, the estimators (measure, lut, flops), the costs journaled with
every child (and old journals resuming), pareto.json / pareto.png, and the select stage's latency budget."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.pipeline import SMOKE
from helpers.search import oneshot_cfg, runner_cfg

from nasnet_det.genotypes import get_genotype
from nasnet_det.latency import LatencySetting, make_estimator
from nasnet_det.pipeline import StageError, load_pipeline_config
from nasnet_det.pipeline.stages import Context
from nasnet_det.pipeline.stages.select import SelectStage
from nasnet_det.space import Genotype
from search.config import load_cfg
from search.journal import Journal
from search.objective import mnasnet_reward
from search.reward import ChildData, SyntheticOpReward
from search.runner import SearchRunner
from search.session import JOURNAL_NAME
from search.strategies.oneshot import DERIVE_NAME

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A detection backbone small enough to time in a test: 1 @ f 4 FPN on 32 px, one untimed and one timed run.
TINY_LATENCY = ["SEARCH.LATENCY.INPUT_SIZE", "32", "SEARCH.LATENCY.NUM_CELLS", "1", "SEARCH.LATENCY.FILTERS", "4",
                "SEARCH.LATENCY.WARMUP", "0", "SEARCH.LATENCY.REPEATS", "1"]
TINY_SETTING = LatencySetting(input_size=32, num_cells=1, filters=4, warmup=0, repeats=1)


def _latency_opts(tmp_path: Path, estimator: str = "measure", *more: str) -> list[str]:
    return ["SEARCH.OBJECTIVE", "latency", "SEARCH.LATENCY.ESTIMATOR", estimator, "SEARCH.LATENCY.CACHE_DIR",
            str(tmp_path / "lut"), *TINY_LATENCY, *more]


def test_mnasnet_reward_soft_and_hard():
    assert mnasnet_reward(0.8, 100, 100) == pytest.approx(0.8)
    assert mnasnet_reward(0.8, 200, 100) == pytest.approx(0.8 * 2 ** -0.07)
    assert mnasnet_reward(0.8, 50, 100) > 0.8  # faster than the target scores more under the soft constraint
    assert mnasnet_reward(0.8, 50, 100, constraint="hard") == pytest.approx(0.8)
    assert mnasnet_reward(0.8, 200, 100, constraint="hard") == pytest.approx(0.4)


def _check_costs_and_pareto(out: Path, strategies: set[str], target: float) -> dict:
    rows = [r for r in Journal(out / JOURNAL_NAME).all() if r.status == "ok"]
    profiled = [r for r in rows if r.strategy in strategies]  # what the front is of (one-shot: the final samples)
    assert {r.strategy for r in rows} >= strategies
    for r in rows:  # every child: its backbone's latency, params and mult-adds, and the MnasNet reward of it
        assert r.latency_ms > 0 and r.mult_adds > 0 and r.backbone_params > 0
        assert r.reward == pytest.approx(mnasnet_reward(r.accuracy, r.latency_ms, target))
    pareto = json.loads((out / "pareto.json").read_text())
    assert (out / "pareto.png").stat().st_size > 0
    assert pareto["metric"] == "latency_ms" and pareto["nasnet_a"]["latency_ms"] > 0
    assert pareto["nasnet_a"]["accuracy"] is None  # marked by its latency only (see search/pareto.py)
    front = pareto["front"]
    assert front and len(pareto["children"]) == len(profiled)
    for e in pareto["children"]:  # nothing outside the front beats a front cell on both axes
        assert not any(f["latency_ms"] > e["latency_ms"] and f["accuracy"] < e["accuracy"] for f in front
                       if f["id"] != e["id"]) or e["id"] in {f["id"] for f in front}
    assert [f["latency_ms"] for f in front] == sorted(f["latency_ms"] for f in front)
    assert [f["accuracy"] for f in front] == sorted(f["accuracy"] for f in front)
    Genotype.from_dict(front[0]["genotype"]).validate()
    return pareto


def test_latency_objective_applies_to_ppo_and_random_children(tmp_path):
    cfg = runner_cfg("SEARCH.STRATEGY", "ppo,random", "SEARCH.BUDGET", 2, "SEARCH.BATCH_SIZE", 2,
                     *_latency_opts(tmp_path), "SEARCH.LATENCY.TARGET_MS", 50.0)
    summary = SearchRunner(cfg, tmp_path / "s", SyntheticOpReward(0), progress=False).run()
    assert summary["pareto"]["children"] == 4
    _check_costs_and_pareto(tmp_path / "s", {"ppo", "random"}, 50.0)


def test_latency_objective_applies_to_the_oneshot_search(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (48, 32, 32, 3)).astype(np.uint8)
    y = np.arange(48) % 10
    data = ChildData.from_arrays(x, y, 16)
    cfg = oneshot_cfg(*_latency_opts(tmp_path), "SEARCH.LATENCY.TARGET_MS", 50.0, "ONESHOT.EPOCHS", 1,
                     "ONESHOT.CONTROLLER_STEPS", 1, "ONESHOT.FINAL_SAMPLES", 2)
    SearchRunner(cfg, tmp_path / "s", progress=False, data=data).run()
    _check_costs_and_pareto(tmp_path / "s", {DERIVE_NAME}, 50.0)


def test_a_journal_from_before_the_cost_columns_resumes(tmp_path):
    SearchRunner(runner_cfg("SEARCH.BUDGET", 4, "SEARCH.MAX_EVALS_THIS_RUN", 2), tmp_path, SyntheticOpReward(0),
                 False).run()
    # Make it the journal an earlier version wrote: no cost columns, no SEARCH.OBJECTIVE in its identity.
    db = sqlite3.connect(tmp_path / JOURNAL_NAME)
    for col in ("accuracy", "latency_ms", "mult_adds", "backbone_params"):
        db.execute(f"ALTER TABLE evaluations DROP COLUMN {col}")
    identity = json.loads(db.execute("SELECT value FROM meta WHERE key='identity'").fetchone()[0])
    del identity["SEARCH.OBJECTIVE"]
    db.execute("UPDATE meta SET value=? WHERE key='identity'", (json.dumps(identity),))
    db.commit()
    db.close()
    summary = SearchRunner(runner_cfg("SEARCH.BUDGET", 4, "SEARCH.LATENCY.RECORD", True, *TINY_LATENCY,
                                      "SEARCH.LATENCY.ESTIMATOR", "flops"), tmp_path, SyntheticOpReward(0),
                           False).run()
    assert summary["strategies"]["ppo"]["ok"] == 4
    rows = Journal(tmp_path / JOURNAL_NAME).all()
    assert [r.mult_adds is None for r in rows] == [True, True, False, False]  # old children: no costs recorded
    assert summary["pareto"]["metric"] == "mult_adds"


def test_lut_is_built_once_per_setting_and_reused(tmp_path):
    setting = LatencySetting(**{**TINY_SETTING.__dict__, "cache_dir": str(tmp_path)})
    lut = make_estimator("lut", setting)
    lut.build()
    stamp = lut.path.stat().st_mtime_ns
    again = make_estimator("lut", setting)  # a new process would read the same file
    assert again.units == lut.units and again.fixed_ms == lut.fixed_ms
    g = get_genotype("nasnet_a")
    assert again.latency_ms(g) > 0
    assert lut.path.stat().st_mtime_ns == stamp  # NASNet-A's units were all in the table: nothing re-timed
    other = make_estimator("lut", LatencySetting(**{**setting.__dict__, "input_size": 64}))
    assert other.path != lut.path and not other.units
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporaries left
    # two workers that read the table before either added a unit: each save keeps the other's new units
    first, second = make_estimator("lut", setting), make_estimator("lut", setting)
    from nasnet_det.search_space import SearchSpace

    space = SearchSpace(5)
    cells = [space.genotype(d) for d in space.sample(40, torch.Generator().manual_seed(1)).tolist()]
    for cell in cells:
        first.latency_ms(cell)
        if len(first.units) > len(lut.units):
            break
    for cell in reversed(cells):
        second.latency_ms(cell)
        if set(second.units) - set(first.units):
            break
    new_first, new_second = set(first.units) - set(lut.units), set(second.units) - set(first.units)
    assert new_first and new_second
    assert new_first | new_second <= set(make_estimator("lut", setting).units)


@pytest.mark.parametrize("key,value", [("SEARCH.OBJECTIVE", "speed"), ("SEARCH.LATENCY.ESTIMATOR", "guess"),
                                       ("SEARCH.LATENCY.WEIGHT", "0.5"), ("SEARCH.LATENCY.DEVICE", "tpu")])
def test_bad_latency_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_cfg(None, [key, value])


def test_the_latency_backbones_are_the_nasnet_detector_backbones_detectron2_has_registered():
    with pytest.raises(ValueError, match=r"SEARCH\.LATENCY\.BACKBONE='RetinaNet': expected one of FPN, C4"):
        load_cfg(None, ["SEARCH.OBJECTIVE", "latency", "SEARCH.LATENCY.BACKBONE", "RetinaNet"])
    assert load_cfg(None, ["SEARCH.LATENCY.RECORD", "True", "SEARCH.LATENCY.BACKBONE", "C4"]).SEARCH.LATENCY.BACKBONE


def test_loading_a_search_config_does_not_import_detectron2():
    """A search that estimates no latency never builds a detector: its config check must not cost detectron2's
    import (seconds, in every process that loads the config)."""
    code = ("import sys; from search.config import load_cfg; load_cfg('configs/search/smoke.yaml'); "
            "print('detectron2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def _pareto_file(tmp_path: Path) -> Path:
    g = get_genotype("nasnet_a").to_dict()
    front = [{"id": i, "strategy": "ppo", "accuracy": acc, "reward": acc, "latency_ms": lat, "genotype": g}
             for i, (acc, lat) in enumerate([(0.5, 10.0), (0.6, 20.0), (0.7, 30.0)], start=1)]
    path = tmp_path / "pareto.json"
    dominated = {"id": 4, "strategy": "random", "accuracy": 0.55, "reward": 0.55, "latency_ms": 24.0, "genotype": g}
    path.write_text(json.dumps({"metric": "latency_ms", "front": front, "children": [*front, dominated]}))
    return path


def _select(tmp_path: Path, budget: float) -> Path:
    out = tmp_path / f"p{budget:g}"
    ctx = Context(load_pipeline_config(SMOKE, ["OUTPUT_DIR", str(out), "SELECT.LATENCY_BUDGET_MS", str(float(budget))]),
                  out)
    SelectStage().run(ctx, out / "select", {"pareto": _pareto_file(tmp_path)})
    return out / "select"


def test_select_picks_the_most_accurate_cell_within_the_latency_budget(tmp_path):
    assert Genotype.load(_select(tmp_path, 25) / "genotype.json").name == "search_ppo_2"
    assert Genotype.load(_select(tmp_path, 100) / "genotype.json").name == "search_ppo_3"
    # the k most accurate within the budget (re-ranked with SELECT.TOP_K k) include cells off the front
    top = SelectStage().within_budget({"pareto": _pareto_file(tmp_path)}, 24.0, 3)
    assert [c["genotype"].name for c in top] == ["search_ppo_2", "search_random_4", "search_ppo_1"]
    with pytest.raises(StageError, match=r"LATENCY_BUDGET_MS=5: no cell .* fastest is search_ppo_1 at 10\.0 ms"):
        _select(tmp_path, 5)
    with pytest.raises(ValueError, match=r"SELECT\.LATENCY_BUDGET_MS=-1\.0: expected a number of ms >= 0"):
        load_pipeline_config(SMOKE, ["SELECT.LATENCY_BUDGET_MS", "-1.0"])
    with pytest.raises(ValueError, match=r"LATENCY_BUDGET_MS=20 needs a search .* SEARCH\.GENOTYPE 'nasnet_a'"):
        load_pipeline_config(SMOKE, ["SELECT.LATENCY_BUDGET_MS", "20.0", "SEARCH.GENOTYPE", "nasnet_a"])


def test_a_malformed_pareto_file_is_one_line_naming_it(tmp_path):
    path = _pareto_file(tmp_path)
    data = json.loads(path.read_text())
    del data["children"][1]["latency_ms"]
    path.write_text(json.dumps(data))
    with pytest.raises(StageError, match=r"pareto\.json: an entry lacks latency_ms .* rerun the search stage"):
        SelectStage().within_budget({"pareto": path}, 24.0, 1)


def test_the_hook_mult_add_count_equals_fvcores_on_a_detection_backbone():
    from nasnet_det.latency import detection_backbone, input_for
    from nasnet_det.models.profile import conv_mult_adds, count_mult_adds

    for backbone in ("FPN",):  # (C4 reads the same cells; one backbone keeps the test short)
        setting = LatencySetting(**{**TINY_SETTING.__dict__, "backbone": backbone, "input_size": 64})
        model = detection_backbone(get_genotype("nasnet_a"), setting)
        assert conv_mult_adds(model, input_for(model, setting, "cpu")) == count_mult_adds(model, 64)


def test_the_report_shows_the_searchs_pareto_plot(tmp_path):
    from nasnet_det.pipeline.manifest import MANIFEST_NAME, atomic_write_json
    from nasnet_det.pipeline.report import write_report

    ctx = Context(load_pipeline_config(SMOKE, ["OUTPUT_DIR", str(tmp_path)]), tmp_path)
    search = ctx.stage_dir("search")
    search.mkdir(parents=True)
    (search / "pareto.png").write_bytes(b"\x89PNG")  # only copied, not read
    atomic_write_json(search / MANIFEST_NAME, {"status": "done", "outputs": {
        "kind": "searched", "pareto_plot": str(search / "pareto.png")}, "metrics": {"strategies": {}}})
    atomic_write_json(ctx.stage_dir("select") / MANIFEST_NAME, {"status": "done", "outputs": {},
                                                                 "metrics": {"latency_ms": 12.5}})
    from nasnet_det.pipeline.stages.search import SearchStage

    report = write_report(ctx, tmp_path / "report", [SearchStage(), SelectStage()]).read_text()
    assert "![search pareto](search_pareto.png)" in report and "runs in 12.5 ms" in report
    assert (tmp_path / "report" / "search_pareto.png").is_file()
