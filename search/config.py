"""Configuration of the search (yacs ``CfgNode``; YAML files may use ``_BASE_``): the nodes every search has
(:mod:`search.base_config`) and the nodes of the registered plug-ins, each strategy and estimator adding,
checking and naming the identity settings of its own."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fvcore.common.config import CfgNode as CN

from nasnet_det import config as shared_config
from nasnet_det.models.config import preset_node
from search.base_config import (
    IDENTITY_KEYS,
    LATENCY_NOT_IDENTITY,
    NOT_IDENTITY,
    base_cfg_defaults,
    check_base_cfg,
    plain_dict,
)
from search.estimators import ESTIMATORS
from search.strategies import STRATEGIES, resolve_strategies


def _plugins() -> Iterator[type]:
    """Every registered strategy and estimator, in registration order."""
    yield from STRATEGIES.values()
    yield from ESTIMATORS.values()


def _each_hook_once(plugins: Iterable[type], hook: str) -> Iterator[Any]:
    """The ``hook`` classmethod of each plug-in, skipping one that repeats a method already given for the same
    node (a family of estimators registered from one class shares its base's node and checks)."""
    seen = set()
    for cls in plugins:
        method = getattr(cls, hook)
        key = (getattr(method, "__func__", method), cls.config_node)
        if key not in seen:
            seen.add(key)
            yield method


def get_cfg_defaults() -> CN:
    """A fresh copy of the defaults: the search's own nodes, then each plug-in's."""
    c = base_cfg_defaults()
    for add_config in _each_hook_once(_plugins(), "add_config"):
        add_config(c)
    return c


def check_cfg(cfg: CN) -> None:
    """Validate the values the search relies on, the plug-ins' settings included (whichever strategies run:
    a typo fails at once); ``ValueError`` names the key."""
    check_base_cfg(cfg)
    for check_config in _each_hook_once(_plugins(), "check_config"):
        check_config(cfg)


def identity_of(cfg: CN) -> dict:
    """The settings that define what a journal's evaluations mean: resuming with different values would mix
    incomparable results, so the runner refuses it. The chosen strategies add theirs (``Strategy.identity``)."""
    out = {}
    for key in IDENTITY_KEYS:
        node = cfg
        for part in key.split("."):
            node = node[part]
        out[key] = plain_dict(node)
    for key in NOT_IDENTITY:
        out["MODEL.NASNET"].pop(key, None)
    chosen = resolve_strategies(cfg.SEARCH.STRATEGY)  # the names the runner runs (any case)
    for name, strategy in STRATEGIES:
        if name in chosen:
            out.update(strategy.identity(cfg))
    if cfg.SEARCH.OBJECTIVE != "accuracy":
        out["SEARCH.LATENCY"] = {k: v for k, v in plain_dict(cfg.SEARCH.LATENCY).items()
                                 if k not in LATENCY_NOT_IDENTITY}
    return out


def upgrade_identity(identity: Mapping[str, Any]) -> dict:
    """A journal's identity in the form :func:`identity_of` gives today, so that a search journaled before
    the children's network moved from ``CHILD.NUM_CELLS / FILTERS`` to ``MODEL.NASNET`` still resumes."""
    out = dict(identity)
    child = out.get("CHILD")
    if "MODEL.NASNET" not in out and isinstance(child, Mapping) and {"NUM_CELLS", "FILTERS"} <= set(child):
        # Those children were CIFAR networks of N cells at f, without aux head: preset search_child_tiny
        # at that N and f.
        network = plain_dict(preset_node("search_child_tiny"))
        network.update(NUM_CELLS=child["NUM_CELLS"], FILTERS=child["FILTERS"])
        out["CHILD"] = {k: v for k, v in child.items() if k not in ("NUM_CELLS", "FILTERS")}
        out["MODEL.NASNET"] = network
    out.setdefault("SEARCH.OBJECTIVE", "accuracy")  # journals from before the latency objective
    if isinstance(out.get("MODEL.NASNET"), Mapping):
        out["MODEL.NASNET"] = {k: v for k, v in out["MODEL.NASNET"].items() if k not in NOT_IDENTITY}
    return out


def load_cfg(config_file: str | None = None, opts: list[str] | None = None) -> CN:
    """Defaults, merged with ``config_file`` (may use ``_BASE_``) and ``KEY VALUE`` overrides
    (:func:`nasnet_det.config.load_cfg`), checked with :func:`check_cfg` and frozen. Unknown keys and bad
    values raise ``ValueError`` naming the key."""
    cfg = shared_config.load_cfg(get_cfg_defaults(), config_file, opts)
    check_cfg(cfg)
    cfg.freeze()
    return cfg
