"""Resume-point truncation of a JSON-lines metrics file: the rows an interrupted run wrote after its last
checkpoint are redone by the resumed run, so they are dropped (and the torn last line of a kill)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nasnet_det.utils.io import atomic_open


def truncate_metrics(path: str | os.PathLike, keep_through: int, key: str = "step", strict: bool = True,
                     in_place: bool = False) -> int:
    """Remove the rows of ``path`` whose ``key`` is > ``keep_through``; returns how many lines went.

    A last line that is not a JSON object is the row a killed run was writing: always dropped. Any other bad
    line raises a ValueError naming the file and line when ``strict`` (every row must then carry an integer
    ``key``), else it is dropped too. The file is replaced atomically (a kill leaves the old or the new file),
    or with ``in_place`` rewritten in place, for a writer that holds it open for appending (detectron2's
    JSONWriter): the kept rows are then its beginning, so no byte of them moves."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_bytes().splitlines(keepends=True)
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or (strict and not isinstance(row.get(key), int)):
                raise ValueError(f"not a record with an integer {key!r}")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            if strict and number - 1 != last:
                raise ValueError(f"{path}: line {number} is not a metrics record ({exc}); repair or delete "
                                 "that line") from None
            continue
        if isinstance(row.get(key), int) and row[key] > keep_through:
            continue
        kept.append(line if line.endswith(b"\n") else line + b"\n")
    if kept != lines and in_place:
        with open(path, "r+b") as f:
            f.write(b"".join(kept))
            f.truncate()
    elif kept != lines:
        with atomic_open(path, "wb") as f:
            f.write(b"".join(kept))
    return len(lines) - len(kept)
