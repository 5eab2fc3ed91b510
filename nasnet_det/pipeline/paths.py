"""Where the pipeline finds the checkout's ``configs/`` and ``tools/``, and how it resolves a given path."""

from __future__ import annotations

from pathlib import Path


def repo_root() -> Path:
    """The checkout (or editable install) holding ``configs/`` and ``tools/``."""
    return Path(__file__).resolve().parents[2]


def resolve_path(path: str | Path) -> Path:
    """A path as given if it exists from the working directory, else relative to the repository root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    in_repo = repo_root() / p
    return in_repo if in_repo.exists() else p
