"""Per-stage manifests: ``OUTPUT_DIR/<stage>/manifest.json``, written atomically.

A manifest records what a stage was run with (its settings and their hash, its input files with checksums),
what it produced (outputs, with each output file's size and SHA-256 in ``output_checksums``, metrics), how long it
took and how it ended (``running``, ``done``, ``failed``).
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
    """The stage's manifest, or None when there is none or it is unreadable (:func:`read_manifest_checked`
    tells the two apart)."""
    return read_manifest_checked(stage_dir)[0]


def read_manifest_checked(stage_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(manifest, None)``; ``(None, None)`` when the stage has none; ``(None, why)`` when the file is there
    but cannot be read as a manifest (truncated by a full disk, edited by hand)."""
    path = stage_dir / MANIFEST_NAME
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{type(e).__name__}: {e}"
    if not isinstance(data, dict):
        return None, f"expected a JSON object, found {type(data).__name__}"
    return data, None


def file_record(path: str | Path) -> dict[str, Any]:
    """What a stage's output file was when the stage finished: its size and SHA-256."""
    return {"size": Path(path).stat().st_size, "sha256": sha256_file(path)}


def file_mismatch(path: str | Path, record: dict[str, Any]) -> str | None:
    """How ``path`` differs from its ``record`` (:func:`file_record`), or None when it is the same file."""
    path = Path(path)
    if not path.is_file():
        return "it does not exist"
    size = path.stat().st_size
    if size != record.get("size"):
        return f"{size} bytes, {record.get('size')} when its stage finished"
    if sha256_file(path) != record.get("sha256"):
        return "its SHA-256 differs from the one recorded when its stage finished"
    return None


def write_manifest(stage_dir: Path, data: dict[str, Any]) -> Path:
    return atomic_write_json(stage_dir / MANIFEST_NAME, data)
