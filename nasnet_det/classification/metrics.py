"""Accuracy and the metric sinks of a training run: metrics.jsonl and TensorBoard (rank 0 only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nasnet_det.utils.io import disk_full_errors


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows have the target among the top-k logits, for each k (k is capped at the class count)."""
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices
    hits = pred.eq(target.view(-1, 1))
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


class MetricsWriter:
    """Appends one JSON object per record to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    Inactive (writes nothing) on processes other than rank 0. The TensorBoard writer opens on the first
    record, so a resumed run can first call :meth:`resume_at` (and a fresh run clear the old folder).
    """

    def __init__(self, output_dir: str | Path, active: bool = True, tensorboard: bool = True):
        self.active = active
        self.path = Path(output_dir) / "metrics.jsonl"
        self.tensorboard_dir = Path(output_dir) / "tensorboard"
        self._use_tb = active and tensorboard
        self._tb = None
        self._purge_step: int | None = None
        if active:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def resume_at(self, step: int) -> None:
        """The run continues after ``step``: TensorBoard hides the interrupted run's events past it."""
        self.close()
        self._purge_step = step + 1

    def _tensorboard(self):
        if self._tb is None and self._use_tb:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=self._purge_step)
            self._purge_step = None  # purge once; a writer reopened later must not hide this run's events
        return self._tb

    def write(self, kind: str, step: int, **values: Any) -> None:
        if not self.active:
            return
        record = {"type": kind, "step": step, **values}
        with disk_full_errors(self.path), self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        tb = self._tensorboard()
        if tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path, allow_partial_last_line: bool = True) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file.

    A last line that is not valid JSON is the record an interrupted run was writing: it is dropped when
    ``allow_partial_last_line``. Any other bad line raises a ValueError naming the file and line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist")
    numbered = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for pos, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with an integer 'step'")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            if allow_partial_last_line and pos == len(numbered) - 1:
                break
            raise ValueError(f"{path}: line {number} is not a metrics record ({exc}); repair or delete "
                             "that line") from None
        records.append(record)
    return records
