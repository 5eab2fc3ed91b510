"""Per-stage manifests: ``OUTPUT_DIR/<stage>/manifest.json``, written atomically.

A manifest records what a stage was run with (its settings and their hash, its input files with checksums),
what it produced (outputs, metrics), how long it took and how it ended (``running``, ``done``, ``failed``).
The runner compares it with the current settings and inputs to decide: skip, resume, or start over.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nasnet_det.utils.io import atomic_write

MANIFEST_NAME = "manifest.json"


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's manifest, or None when there is none (or it is unreadable: treated as never run)."""
    path = stage_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_manifest(stage_dir: Path, data: dict[str, Any]) -> Path:
    return atomic_write_json(stage_dir / MANIFEST_NAME, data)
