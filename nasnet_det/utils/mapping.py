"""Dotted-key access to nested config mappings (yacs / fvcore ``CfgNode``, or the plain dicts YAML loads)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def lookup(tree: Any, dotted: str) -> tuple[bool, Any]:
    """``(True, value)`` of ``tree["A"]["B"]`` for ``dotted`` ``"A.B"``, or ``(False, None)`` where a part is
    missing (or its parent is not a mapping)."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node
