"""Strategies, estimators and queue backends are plug-ins: a strategy or an estimator in a module of its own
(here a new file, outside the package, imported before the search starts) carries its config node, its
checks, its journal-identity settings and the files it owns, with no other file touched; every name is looked
up in one registry pattern whose unknown names list the known ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nasnet_det.utils.errors import BadInputError
from search.reward import SyntheticOpReward
from search.workers import make_backend

REPO = Path(__file__).resolve().parents[2]

PLUGIN = '''
from fvcore.common.config import CfgNode

from search.base_config import require
from search.estimators import ESTIMATORS, Estimator
from search.outputs import write_json_atomic
from search.strategies import STRATEGIES, Strategy


@STRATEGIES.register()
class ToyPlugin(Strategy):
    name = "toy_plugin"
    config_node = "SEARCH.TOY_PLUGIN"
    owned_files = ("toy_plugin_*.json",)

    @classmethod
    def add_config(cls, cfg):
        cfg.SEARCH.TOY_PLUGIN = CfgNode()
        cfg.SEARCH.TOY_PLUGIN.WIDTH = 3  # how many decisions it re-draws

    @classmethod
    def check_config(cls, cfg):
        w = cfg.SEARCH.TOY_PLUGIN.WIDTH
        require(isinstance(w, int) and w >= 1, "SEARCH.TOY_PLUGIN.WIDTH", w, "an integer >= 1")

    def attach(self, output_dir, rows):
        write_json_atomic(output_dir / "toy_plugin_state.json", {"sampled": len(rows)})

    def sample(self, n, generator):
        return self.space.sample(n, generator), None


@ESTIMATORS.register()
class ToyEstimator(Estimator):
    name = "toy_size"
    config_node = "TOY_ESTIMATOR"

    @classmethod
    def add_config(cls, cfg):
        cfg.TOY_ESTIMATOR = CfgNode()
        cfg.TOY_ESTIMATOR.SCALE = 2.0

    @classmethod
    def check_config(cls, cfg):
        v = cfg.TOY_ESTIMATOR.SCALE
        require(v > 0, "TOY_ESTIMATOR.SCALE", v, "a number > 0")

    def score(self, genotype):
        return self.cfg.TOY_ESTIMATOR.SCALE * len(genotype.normal.blocks)
'''

DRIVER = '''
import json, sys
from pathlib import Path

import torch

import toy_plugin_module  # noqa: F401 (registers its strategy and estimator)
from nasnet_det.search_space import SearchSpace
from search.config import get_cfg_defaults, identity_of, load_cfg
from search.estimators import build_estimator
from search.reward import SyntheticOpReward
from search.runner import SearchRunner

out = {"defaults": [get_cfg_defaults().SEARCH.TOY_PLUGIN.WIDTH, get_cfg_defaults().TOY_ESTIMATOR.SCALE]}
errors = []
for opts in (["SEARCH.TOY_PLUGIN.WIDTH", "0"], ["TOY_ESTIMATOR.SCALE", "-1.0"]):
    try:
        load_cfg(None, opts)
    except ValueError as e:
        errors.append(str(e))
out["errors"] = errors
opts = ["SEARCH.NUM_BLOCKS", "2", "SEARCH.BATCH_SIZE", "2", "SEARCH.BUDGET", "2", "WORKERS.BACKEND", "inline",
        "SEARCH.TOY_PLUGIN.WIDTH", "5"]
cfg = load_cfg(None, ["SEARCH.STRATEGY", "toy_plugin,random", *opts])
out["identity"] = identity_of(cfg).get("SEARCH.TOY_PLUGIN")
out["identity_without"] = "SEARCH.TOY_PLUGIN" in identity_of(load_cfg(None, ["SEARCH.STRATEGY", "random", *opts]))
space = SearchSpace(2)
genotype = space.genotype(space.sample(1, torch.Generator().manual_seed(0))[0].tolist())
out["score"] = build_estimator("toy_size", cfg).score(genotype)
folder = Path(sys.argv[1])
summary = SearchRunner(cfg, folder, SyntheticOpReward(), progress=False).run()
out["ok"] = summary["strategies"]["toy_plugin"]["ok"]
out["written"] = (folder / "toy_plugin_state.json").is_file()
SearchRunner(load_cfg(None, ["SEARCH.STRATEGY", "random", *opts]), folder, SyntheticOpReward(), progress=False,
             fresh=True).run()
out["after_fresh_run"] = (folder / "toy_plugin_state.json").is_file()
print(json.dumps(out))
'''


def test_a_strategy_and_an_estimator_in_a_new_module_bring_their_config_checks_identity_and_files(tmp_path):
    (tmp_path / "toy_plugin_module.py").write_text(textwrap.dedent(PLUGIN))
    # its own interpreter: the registries it adds to stay as they are for the other tests
    run = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "search")], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO}", "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["defaults"] == [3, 2.0]  # each node added to the search defaults
    assert got["errors"] == ["SEARCH.TOY_PLUGIN.WIDTH=0: expected an integer >= 1",
                             "TOY_ESTIMATOR.SCALE=-1.0: expected a number > 0"]
    assert got["identity"] == {"WIDTH": 5} and got["identity_without"] is False
    assert got["score"] == 4.0  # 2.0 x 2 blocks: the estimator is built by its name from the config
    assert got["ok"] == 2 and got["written"] is True
    # the runner's fresh start removes the files the strategy owns, even when the new run does not choose it
    assert got["after_fresh_run"] is False


def test_an_unknown_queue_backend_is_one_line_naming_the_registered_ones():
    with pytest.raises(BadInputError, match=r"^WORKERS.BACKEND='threads': expected one of inline, local, ray$"):
        make_backend("threads", SyntheticOpReward())
    assert type(make_backend("inline", SyntheticOpReward())).__name__ == "InlineBackend"
