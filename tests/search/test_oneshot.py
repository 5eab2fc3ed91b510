"""The weight-sharing search (``SEARCH.STRATEGY oneshot`` on the search engine): supernet paths, one search
step, resume, outputs and config errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from helpers.genotypes import random_genotype
from helpers.search import oneshot_cfg

from nasnet_det.data.cifar import synthetic_cifar
from nasnet_det.space import NUM_INPUTS, OPS, Block, CellSpec, Genotype
from search.cli import main
from search.journal import Journal
from search.reward import ChildData
from search.runner import SearchRunner
from search.session import JOURNAL_NAME
from search.strategies.oneshot import DERIVE_NAME, SEARCH_NAME, STATE_NAME, OneShot
from search.supernet import SuperNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _size_keys(num_cells: int, filters: int) -> list[str]:
    return ["MODEL.NASNET.NUM_CELLS", str(num_cells), "MODEL.NASNET.FILTERS", str(filters)]


@pytest.fixture(scope="module")
def data() -> ChildData:
    x, y = synthetic_cifar(64, size=32)
    return ChildData.from_arrays(x, y, 16)


def _all_concat_genotype(num_blocks: int) -> Genotype:
    cell = CellSpec(tuple(Block(0, 1, OPS[b % len(OPS)], OPS[-1 - b], "concat") for b in range(num_blocks)))
    return Genotype(cell, cell).validate(num_blocks)


def test_every_sampled_cell_has_the_same_output_shape_in_both_cell_types():
    torch.manual_seed(0)
    net = SuperNet(num_blocks=3, num_cells=1, filters=4)
    x = torch.randn(2, 3, 8, 8)
    genotypes = [random_genotype(s, 3) for s in range(6)] + [_all_concat_genotype(3)]
    cell_shapes = {}
    hook_out: dict[str, tuple] = {}
    for name, _, _, _ in net.plan:
        getattr(net, name).register_forward_hook(lambda m, i, o, n=name: hook_out.__setitem__(n, tuple(o.shape)))
    for g in genotypes:
        logits = net(x, g)
        assert logits.shape == (2, 10)
        for name, shape in hook_out.items():
            cell_shapes.setdefault(name, set()).add(shape)
    assert {n for n, *_ in net.plan} == set(cell_shapes)
    assert any("reduction" in n for n in cell_shapes) and any(n.startswith("cell_") for n in cell_shapes)
    for name, shapes in cell_shapes.items():
        assert len(shapes) == 1, f"{name} output shape depends on the sampled cell: {shapes}"


def test_supernet_runs_channels_last_by_default_with_the_nchw_outputs():
    torch.manual_seed(0)
    nhwc = SuperNet(num_blocks=3, num_cells=1, filters=4)
    nchw = SuperNet(num_blocks=3, num_cells=1, filters=4, channels_last=False)
    nchw.load_state_dict(nhwc.state_dict())
    convs = [(a.weight, b.weight) for a, b in zip(nhwc.modules(), nchw.modules()) if isinstance(a, torch.nn.Conv2d)
             and a.kernel_size != (1, 1) and a.weight.shape[1] > 1]  # others are both layouts at once
    assert convs and all(a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
                         and b.is_contiguous() for a, b in convs)
    x = torch.randn(2, 3, 8, 8)
    for seed in range(3):
        g = random_genotype(seed, 3)
        a, b = nhwc(x, g), nchw(x, g)
        assert (a - b).abs().max().item() < 1e-4 * max(1.0, b.abs().max().item())


def _used_modules(net: SuperNet, genotype: Genotype) -> set[int]:
    used = set()
    for name, _, _, reduction in net.plan:
        cell = getattr(net, name)
        spec = genotype.reduce if reduction else genotype.normal
        for b, block in enumerate(spec.blocks):
            used.add(id(cell.op_module(b, "left", block.input_1, block.op_1)))
            used.add(id(cell.op_module(b, "right", block.input_2, block.op_2)))
            if block.combine == "concat":
                used.add(id(cell.concat_proj[b]))
        for i in spec.concat:
            used.add(id(cell.out_conv[i - NUM_INPUTS]))
    return used


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))


def test_a_path_uses_only_the_weights_of_its_ops():
    torch.manual_seed(0)
    net = SuperNet(num_blocks=3, num_cells=1, filters=4)
    g = random_genotype(3, 3)
    x = torch.randn(4, 3, 8, 8)
    before = net(x, g)
    used = _used_modules(net, g)
    unused = []
    for name, *_ in net.plan:
        cell = getattr(net, name)
        candidates = [m for table in cell.ops.values() for m in table.values()]
        candidates += list(cell.concat_proj) + list(cell.out_conv)
        unused += [m for m in candidates if id(m) not in used and any(True for _ in m.parameters())]
    assert len(unused) > 50
    for m in unused:
        _perturb(m)
    assert torch.equal(net(x, g), before)
    # ... while changing one op the path does use changes the output (so the check above can fail).
    name = net.plan[0][0]
    block = g.normal.blocks[0]
    used_op = getattr(net, name).op_module(0, "left", block.input_1, block.op_1)
    if not any(True for _ in used_op.parameters()):  # a parameter-free op: perturb the output conv instead
        used_op = getattr(net, name).out_conv[g.normal.concat[0] - NUM_INPUTS]
    _perturb(used_op)
    assert not torch.allclose(net(x, g), before)


def test_one_search_step_updates_the_shared_weights_and_the_controller(tmp_path, data):
    strategy = OneShot(oneshot_cfg(), data=data)
    w0 = {k: v.clone() for k, v in strategy.supernet.state_dict().items()}
    c0 = {k: v.clone() for k, v in strategy.controller.state_dict().items()}
    loss = strategy.weight_step()
    assert loss > 0
    changed_w = [k for k, v in strategy.supernet.state_dict().items() if not torch.equal(v, w0[k])]
    assert changed_w and all(torch.equal(v, c0[k]) for k, v in strategy.controller.state_dict().items())
    strategy.attach(tmp_path, [])
    strategy.pos.update(phase="controller", step=0)  # (the supernet phase done)
    batch = strategy.propose(1, torch.Generator(), 0, 0)
    assert (batch.name, batch.first, batch.policy, len(batch.decisions)) == (SEARCH_NAME, 0, 0, 3)
    assert strategy.propose(1, torch.Generator(), 3, 0) is None  # the engine waits for the batch's rewards
    rewards = [strategy.score_next(strategy.space.genotype(a), 0)["reward"] for a in batch.decisions.tolist()]
    assert all(0 <= r <= 1 for r in rewards)
    stats = strategy.update(batch.decisions, batch.logprobs, torch.tensor(rewards))
    assert 0.0 <= stats["reward"] <= 1.0 and strategy.pos == {"epoch": 0, "phase": "controller", "step": 1}
    assert (tmp_path / STATE_NAME).is_file()
    changed_c = [k for k, v in strategy.controller.state_dict().items() if not torch.equal(v, c0[k])]
    assert changed_c
    # Only the ops of the one trained cell moved: most of the supernet is untouched by one step.
    assert len(changed_w) < len(w0) // 2


def _final_state(out: Path):
    state = torch.load(out / STATE_NAME, weights_only=False)
    journal = Journal(out / JOURNAL_NAME)
    rows = [(r.strategy, r.batch, r.slot, r.decisions, r.status, r.reward) for r in journal.all()]
    journal.close()
    return state, rows


class _Killed(BaseException):
    """Stands for kill -9 (a BaseException, as KeyboardInterrupt: the engine does not take it for a failed cell)."""


def _search(cfg, out: Path, data: ChildData, monkeypatch=None, kill_after_units: int = 0) -> dict | None:
    """Run (or resume) the search; with ``kill_after_units`` killed at the start of the next supernet step or
    policy update after that many of them in this run (the journal may hold a finished batch not yet learnt)."""
    if not kill_after_units:
        return SearchRunner(cfg, out, progress=False, data=data).run()
    calls = [0]

    def counted(method):
        def run_unit(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] > kill_after_units:
                raise _Killed
            return method(self, *args, **kwargs)
        return run_unit

    with monkeypatch.context() as m:
        m.setattr(OneShot, "weight_step", counted(OneShot.weight_step))
        m.setattr(OneShot, "update", counted(OneShot.update))
        with pytest.raises(_Killed):
            SearchRunner(cfg, out, progress=False, data=data).run()
    return None


@pytest.mark.parametrize("policy,kill_after", [("reinforce", 4), ("ppo", 7)])
def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, data, monkeypatch, policy, kill_after):
    cfg = oneshot_cfg("ONESHOT.POLICY", policy)
    full = _search(cfg, tmp_path / "full", data)
    assert full["stopped_early"] is False
    # Killed mid supernet phase (4: after a checkpoint at step 2 and one more step) or before a policy update
    # (7: its batch journaled, not learnt yet), then resumed by a new process-like instance, more than once:
    # once stopped by SEARCH.MAX_EVALS_THIS_RUN (at the end of the batch that reaches it).
    _search(cfg, tmp_path / "resumed", data, monkeypatch, kill_after)
    limited = oneshot_cfg("ONESHOT.POLICY", policy, "SEARCH.MAX_EVALS_THIS_RUN", 2)
    part = _search(limited, tmp_path / "resumed", data)
    assert part["stopped_early"] is True and part["evaluations_this_run"] == 3
    resumed = _search(cfg, tmp_path / "resumed", data)
    assert resumed["stopped_early"] is False
    s_full, rows_full = _final_state(tmp_path / "full")
    s_res, rows_res = _final_state(tmp_path / "resumed")
    assert rows_full == rows_res
    assert len([r for r in rows_full if r[0] == SEARCH_NAME]) == 2 * 2 * 3
    assert len([r for r in rows_full if r[0] == DERIVE_NAME]) == 3
    for part_name in ("supernet", "controller"):
        for k, v in s_full[part_name].items():
            assert torch.equal(v, s_res[part_name][k]), f"{part_name}.{k} differs after resuming"
    assert s_full["trainer"]["baseline"] == s_res["trainer"]["baseline"]
    assert json.loads((tmp_path / "full/best_genotype.json").read_text()) == \
        json.loads((tmp_path / "resumed/best_genotype.json").read_text())


def test_outputs_are_the_ones_select_reads(tmp_path, data):
    summary = _search(oneshot_cfg(), tmp_path, data)
    g = Genotype.load(tmp_path / "best_genotype.json").validate(2)
    top = json.loads((tmp_path / "top_k.json").read_text())
    assert top and top[0]["strategy"] == DERIVE_NAME
    assert Genotype.from_dict(top[0]["genotype"]) == Genotype(g.normal, g.reduce, top[0]["genotype"]["name"])
    assert summary["best"]["reward"] == top[0]["reward"]
    assert top[0]["params"] and top[0]["params"] > 0
    assert (tmp_path / "rewards.png").is_file() and (tmp_path / "summary.json").is_file()
    assert set(summary["strategies"]) == {SEARCH_NAME, DERIVE_NAME}
    assert summary[SEARCH_NAME]["position"] == {"epoch": 2, "phase": "done", "step": 0}


@pytest.mark.parametrize("opts,key", [(["ONESHOT.POLICY", "a2c"], "ONESHOT.POLICY"),
                                      (["ONESHOT.EPOCHS", "0"], "ONESHOT.EPOCHS"),
                                      (["ONESHOT.LR_MIN", "1.0"], "ONESHOT.LR_MIN"),
                                      (["SEARCH.STRATEGY", "oneshot,random"], "SEARCH.STRATEGY")])
def test_bad_settings_are_refused_naming_the_key(tmp_path, data, opts, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        SearchRunner(oneshot_cfg(*opts), tmp_path, progress=False, data=data)


def test_cli_runs_the_oneshot_strategy_and_exits_2_on_a_bad_key(tmp_path, capsys):
    base = ["--no-progress", "--output-dir", str(tmp_path), "SEARCH.STRATEGY", "oneshot", "SEARCH.NUM_BLOCKS", "2",
            "SEARCH.BATCH_SIZE", "2", *_size_keys(1, 4), "CHILD.IMAGE_SIZE", "8", "DATA.SOURCE", "synthetic:48",
            "DATA.VAL_SIZE", "16", "ONESHOT.EPOCHS", "1", "ONESHOT.WEIGHT_STEPS", "2", "ONESHOT.BATCH_SIZE", "8",
            "ONESHOT.CONTROLLER_STEPS", "1", "ONESHOT.FINAL_SAMPLES", "2", "ONESHOT.DEVICE", "cpu"]
    torch.set_num_threads(2)  # the supernet trains in the CLI's process: WORKERS.THREADS_PER_WORKER (1) is
    try:                      # for the regular search's workers and must not cap it
        assert main([*base, "WORKERS.THREADS_PER_WORKER", "1"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    printed = json.loads(capsys.readouterr().out)
    assert printed["best"]["strategy"] == DERIVE_NAME
    assert main([*base, "ONESHOT.REWARD_BATCH_SIZE", "0"]) == 2
    assert "ONESHOT.REWARD_BATCH_SIZE" in capsys.readouterr().err


@pytest.mark.parametrize("kill_at_score", [5, 14])  # 2nd cell of controller batch 1; 2nd final sample
def test_resume_inside_a_scored_batch_completes_it_like_an_uninterrupted_run(tmp_path, data, monkeypatch,
                                                                             kill_at_score):
    cfg = oneshot_cfg()
    _search(cfg, tmp_path / "full", data)
    calls, score = [0], OneShot.score

    def score_then_die(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at_score:
            raise _Killed
        return score(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(OneShot, "score", score_then_die)
        with pytest.raises(_Killed):
            _search(cfg, tmp_path / "resumed", data)
    journal = Journal(tmp_path / "resumed" / JOURNAL_NAME)
    statuses = [r.status for r in journal.all()]
    journal.close()
    assert "pending" in statuses and "ok" in statuses  # the kill left a half-scored batch
    rescored = [0]

    def counted(self, *args, **kwargs):
        rescored[0] += 1
        return score(self, *args, **kwargs)

    monkeypatch.setattr(OneShot, "score", counted)
    _search(cfg, tmp_path / "resumed", data)
    # 2 epochs x 2 updates x 3 cells + 3 final samples; the cells finished before the kill keep their reward.
    assert rescored[0] == 15 - (kill_at_score - 1)
    s_full, rows_full = _final_state(tmp_path / "full")
    s_res, rows_res = _final_state(tmp_path / "resumed")
    assert rows_res == rows_full
    journal = Journal(tmp_path / "resumed" / JOURNAL_NAME)
    policies = {(r.strategy, r.sample): r.policy for r in journal.all()}
    journal.close()
    # The policy version that sampled each cell: its update batch, and all 4 updates for the final samples.
    assert policies == {**{(SEARCH_NAME, i): i // 3 for i in range(12)}, **{(DERIVE_NAME, i): 4 for i in range(3)}}
    for k, v in s_full["controller"].items():
        assert torch.equal(v, s_res["controller"][k]), f"controller.{k} differs after resuming"
    tops = [[{k: v for k, v in e.items() if k != "seconds"} for e in json.loads((tmp_path / d).read_text())]
            for d in ("full/top_k.json", "resumed/top_k.json")]
    assert tops[0] == tops[1]


def test_a_collapsed_controller_is_reported_as_in_the_regular_search(tmp_path, data):
    """A search whose controller sampled one cell only (here: every controller-phase row of a finished search
    made the same cell) reports it when its outputs are written, in summary.json as in the returned summary."""
    _search(oneshot_cfg(), tmp_path, data)
    db = sqlite3.connect(tmp_path / JOURNAL_NAME)
    with db:
        one_cell = db.execute("SELECT decisions, genotype FROM evaluations WHERE strategy = ? ORDER BY sample",
                              (SEARCH_NAME,)).fetchone()
        db.execute("UPDATE evaluations SET decisions = ?, genotype = ? WHERE strategy = ?", (*one_cell, SEARCH_NAME))
    db.close()
    summary = _search(oneshot_cfg(), tmp_path, data)  # the finished search, resumed: its outputs again
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["strategies"][SEARCH_NAME]["collapsed"] is True
    assert any(p.startswith(f"{SEARCH_NAME}: the controller collapsed") for p in summary["problems"])


def test_a_controller_step_looks_up_its_batch_without_reading_the_whole_journal(tmp_path, data, monkeypatch):
    """A long search has tens of thousands of rows: reading them all on every step costs seconds per step. The
    reads of the whole journal (setting up, writing the outputs) do not grow with the steps of the search."""
    reads = []
    whole_journal = Journal.all

    def counted(self, *args, **kwargs):
        reads.append(args)
        return whole_journal(self, *args, **kwargs)

    monkeypatch.setattr(Journal, "all", counted)
    _search(oneshot_cfg("ONESHOT.EPOCHS", 1), tmp_path / "short", data)
    short = len(reads)
    _search(oneshot_cfg(), tmp_path, data)  # twice the epochs: twice the steps
    monkeypatch.undo()
    assert len(reads) - short == short
    journal = Journal(tmp_path / JOURNAL_NAME)
    try:
        assert [r.sample for r in journal.samples(SEARCH_NAME, 2, 3)] == [2, 3, 4]
        assert [(r.sample, r.batch, r.policy) for r in journal.samples(SEARCH_NAME, 3, 3)] == \
            [(3, 1, 1), (4, 1, 1), (5, 1, 1)]
        assert [(r.sample, r.batch, r.policy) for r in journal.samples(DERIVE_NAME, 0, 3)] == \
            [(0, 0, 4), (1, 0, 4), (2, 0, 4)]
        assert journal.samples(SEARCH_NAME, 12, 3) == []
    finally:
        journal.close()


def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path, data):
    (tmp_path / STATE_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"{STATE_NAME} cannot be read.*delete it to restart the one-shot search"):
        _search(oneshot_cfg(), tmp_path, data)


def test_warm_up_fairness_and_bn_recalibration_resume_like_an_uninterrupted_run(tmp_path, data, monkeypatch):
    """The supernet fixes in the one-shot search: epoch 0 is a FairNAS warm-up (no controller phase), and
    every cell is scored after recalibrating BatchNorm; a search interrupted in the warm-up resumes exactly."""
    cfg = oneshot_cfg("ONESHOT.WARMUP_EPOCHS", 1, "ONESHOT.FAIRNESS", True, "ONESHOT.BN_RECALIBRATION_BATCHES", 1,
                      "CHILD.IMAGE_SIZE", 8)
    full = _search(cfg, tmp_path / "full", data)
    _search(cfg, tmp_path / "resumed", data, monkeypatch, kill_after_units=2)
    assert full["stopped_early"] is False
    _search(cfg, tmp_path / "resumed", data)
    s_full, rows_full = _final_state(tmp_path / "full")
    s_res, rows_res = _final_state(tmp_path / "resumed")
    assert rows_full == rows_res
    assert len([r for r in rows_full if r[0] == SEARCH_NAME]) == (2 - 1) * 2 * 3  # no controller in the warm-up
    assert {r[1] for r in rows_full if r[0] == SEARCH_NAME} == {0, 1}  # its batches are numbered from 0
    for k, v in s_full["supernet"].items():
        assert torch.equal(v, s_res["supernet"][k]), f"supernet.{k} differs after resuming"
    assert any(k.endswith("running_mean") for k in s_full["supernet"])  # recalibration keeps statistics
    with pytest.raises(ValueError, match="ONESHOT.WARMUP_EPOCHS=2: expected an integer >= 0 and below"):
        SearchRunner(oneshot_cfg("ONESHOT.WARMUP_EPOCHS", 2), tmp_path / "bad", data=data)


@pytest.mark.parametrize("key", ["WEIGHT_STEPS", "BN_RECALIBRATION_BATCHES", "WARMUP_EPOCHS"])
def test_a_count_of_the_oneshot_node_is_an_integer_not_a_bool(key):
    """A bool is an int to Python; a config set in code (yacs refuses it from a file) must not pass for 1."""
    cfg = oneshot_cfg()
    cfg.ONESHOT[key] = True
    with pytest.raises(ValueError, match=rf"ONESHOT.{key}=True: expected an integer >= 0"):
        OneShot.check_config(cfg)
