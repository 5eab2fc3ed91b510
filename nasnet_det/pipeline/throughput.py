"""The throughput each stage's node states for ``nasnet-det plan``'s time estimates, and where it comes from.

Every stage that trains (or evaluates) on GPUs gets one figure in its own node: ``SEARCH.GPU_HOURS_PER_CHILD``
(one child's training, on one GPU) or ``<NODE>.IMAGES_PER_SECOND_PER_GPU`` (training / evaluation images per
second on one device of the run), plus ``<NODE>.THROUGHPUT_SOURCE``: ``"measured: <machine, date>"`` or
``"assumed: <basis>"``. 0 means unknown (the plan prints "unknown"). These keys only feed the plan: no stage's
``settings()`` reads them, so they are not hashed into a manifest and changing them reruns nothing.
"""

from __future__ import annotations

from fvcore.common.config import CfgNode as CN

# node -> (key, unit as the plan prints it)
THROUGHPUT_KEYS: dict[str, tuple[str, str]] = {
    "SEARCH": ("GPU_HOURS_PER_CHILD", "GPU-hours per child"),
    "SELECT": ("IMAGES_PER_SECOND_PER_GPU", "images/s per device"),
    "CIFAR": ("IMAGES_PER_SECOND_PER_GPU", "images/s per device"),
    "PRETRAIN": ("IMAGES_PER_SECOND_PER_GPU", "images/s per device"),
    "DETECT": ("IMAGES_PER_SECOND_PER_GPU", "images/s per device"),
    "EVALUATE": ("IMAGES_PER_SECOND_PER_GPU", "images/s per device"),
}
SOURCE_KEY = "THROUGHPUT_SOURCE"
SOURCE_PREFIXES = ("assumed:", "measured:")


def add_throughput_config(cfg: CN) -> None:
    """Add the throughput keys (0 = unknown) to the stage nodes the config has."""
    for node, (key, _) in THROUGHPUT_KEYS.items():
        if node in cfg:
            cfg[node][key] = 0.0
            cfg[node][SOURCE_KEY] = ""


def check_throughput_config(cfg: CN) -> None:
    """A figure is a number >= 0, and a stated one (> 0) says whether it was measured or assumed."""
    for node, (key, _) in THROUGHPUT_KEYS.items():
        if node not in cfg or key not in cfg[node]:
            continue
        value, source = cfg[node][key], cfg[node][SOURCE_KEY]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{node}.{key} must be a number >= 0 (0: unknown), got {value!r}")
        if value > 0 and not str(source).strip().lower().startswith(SOURCE_PREFIXES):
            raise ValueError(f"{node}.{SOURCE_KEY} must say where {node}.{key} {value:g} comes from, starting with "
                             f"'measured:' (machine, date) or 'assumed:' (the basis); got {source!r}")


def stated_throughput(cfg: CN, node: str) -> tuple[float, str, str]:
    """(figure, its unit, its source) of ``node``; (0.0, unit, "") when the node states none."""
    key, unit = THROUGHPUT_KEYS[node]
    c = cfg.get(node)
    if c is None or key not in c:
        return 0.0, unit, ""
    return float(c[key]), unit, str(c[SOURCE_KEY])
