"""The engine core shared by classification and detection: RNG state, metrics truncation, start-over."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from nasnet_det.engine.checkpoint import remove_files
from nasnet_det.engine.metrics import truncate_metrics
from nasnet_det.engine.rng import capture_rng_state, restore_rng_state


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_round_trips_and_loads_weights_only(tmp_path):
    state = capture_rng_state()
    first = _draws()
    torch.save({"rng": state}, tmp_path / "s.pth")
    restore_rng_state(torch.load(tmp_path / "s.pth", weights_only=True)["rng"])
    assert _draws() == first


def test_rng_state_reads_the_former_classification_format():
    former = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    first = _draws()
    restore_rng_state(former)
    assert _draws() == first


def _lines(rows: list) -> str:
    return "".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in rows)


def test_truncate_metrics_keeps_rows_through_the_resume_point_and_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_lines([{"step": 1}, {"step": 2, "x": 1}, {"step": 3}]) + '{"step": 4, "lo')
    assert truncate_metrics(path, 2) == 2
    assert path.read_text() == _lines([{"step": 1}, {"step": 2, "x": 1}])
    assert truncate_metrics(path, 2) == 0


def test_truncate_metrics_strict_names_a_bad_line_lenient_drops_it(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(_lines([{"iteration": 0}, "garbage", {"iteration": 5}, {"other": 1}]))
    with pytest.raises(ValueError, match=r"metrics.json: line 2 is not a metrics record"):
        truncate_metrics(path, 9, "iteration")
    assert truncate_metrics(path, 4, "iteration", strict=False) == 2
    assert path.read_text() == _lines([{"iteration": 0}, {"other": 1}])


def test_remove_files_deletes_only_what_exists(tmp_path):
    (tmp_path / "a").write_text("1")
    assert remove_files([tmp_path / "a", tmp_path / "missing"]) == [tmp_path / "a"]
    assert not (tmp_path / "a").exists()
