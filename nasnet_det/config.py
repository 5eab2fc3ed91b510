"""The one config loader of every tool: :func:`load_cfg` merges a YAML file (``_BASE_`` allowed) and ``KEY VALUE``
overrides into an area's defaults (a yacs / fvcore / detectron2 ``CfgNode``).

Each area keeps its own defaults and value checks (classification, search, pipeline, detection); the
``MODEL.NASNET`` node they share is :func:`nasnet_det.models.config.add_nasnet_model_config`. Bad input
raises :class:`BadInputError` (a ``ValueError``) or ``FileNotFoundError`` with one line naming the file or key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml
from fvcore.common.config import CfgNode

from nasnet_det.utils.errors import BadInputError, bad_input_message
from nasnet_det.utils.mapping import lookup
from nasnet_det.utils.yaml_config import load_config_tree

Cfg = TypeVar("Cfg", bound=CfgNode)

# Every key that was renamed, old -> new name: using an old name is an error naming the new one. A rename
# applies to a config that has the new key but not the old one (detection keeps detectron2's MODEL.WEIGHTS,
# so MODEL.WEIGHTS -> MODEL.NASNET.WEIGHTS applies to classification only).
RENAMED_KEYS: dict[str, str] = {
    # The network keys of classification moved under MODEL.NASNET.
    **{f"MODEL.{k}": f"MODEL.NASNET.{k}" for k in (
        "GENOTYPE", "NUM_CELLS", "PENULTIMATE_FILTERS", "FILTERS", "STEM_FILTERS", "SKIP_REDUCTION_LAYER_INPUT",
        "AUX_HEAD", "DROP_PATH_KEEP_PROB", "DROPOUT", "BN_EPS", "BN_MOMENTUM", "PAD_MODE", "WEIGHTS")},
    # The memory layout is the network's (and applies on the CPU too).
    "TRAIN.CHANNELS_LAST": "MODEL.NASNET.CHANNELS_LAST",
    # The search children's network moved from CHILD to MODEL.NASNET.
    "CHILD.NUM_CELLS": "MODEL.NASNET.NUM_CELLS",
    "CHILD.FILTERS": "MODEL.NASNET.FILTERS",
    # The pipeline's network was a NETWORK node of its own.
    **{f"NETWORK.{k}": f"MODEL.NASNET.{k}" for k in (
        "NUM_CELLS", "PENULTIMATE_FILTERS", "FILTERS", "STEM_FILTERS", "SKIP_REDUCTION_LAYER_INPUT", "PAD_MODE")},
}


def check_overrides(opts: Sequence[Any] | None, prog: str = "nasnet-det") -> list[str]:
    """The ``KEY VALUE`` overrides as strings, without ``--`` separators; :class:`BadInputError` for an
    ``--option`` among them (argparse.REMAINDER hands it over, it would be read as a key) or an odd count."""
    opts = [str(o) for o in opts or [] if str(o) != "--"]
    flags = [o for o in opts if o.startswith("--")]
    if flags:
        raise BadInputError(f"{flags[0]} comes after the KEY VALUE overrides; put options first, e.g. "
                            f"{prog} --config-file X.yaml {flags[0]} ... KEY VALUE")
    if len(opts) % 2:
        raise BadInputError(f"config overrides must be KEY VALUE pairs; {opts[-1]!r} has no value")
    return opts


def _renames_for(defaults: Mapping) -> dict[str, str]:
    """The renames of :data:`RENAMED_KEYS` that apply to a config with these ``defaults``."""
    return {old: new for old, new in RENAMED_KEYS.items()
            if lookup(defaults, new)[0] and not lookup(defaults, old)[0]}


def _check_renamed(defaults: Mapping, config_file: str | None, data: Mapping, opts: list[str]) -> None:
    for old, new in _renames_for(defaults).items():
        if lookup(data, old)[0]:
            raise BadInputError(f"{config_file}: {old} was renamed to {new}")
        if old in opts[0::2]:
            raise BadInputError(f"bad override: {old} was renamed to {new}")


def _unknown_key_hint(cfg: Mapping, key: str) -> str:
    node, path = cfg, []
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            valid = ", ".join(sorted(node)) if isinstance(node, Mapping) else "(none: it is a value)"
            return f"; keys under {'.'.join(path) or 'the top level'}: {valid}"
        node, path = node[part], [*path, part]
    return ""


def _merge_file_data(cfg: CfgNode, config_file: str, data: Mapping) -> None:
    """Merge a file's loaded keys (:func:`load_config_tree`) into ``cfg``, as ``merge_from_file`` would, without
    reading the file again (fvcore's and detectron2's ``merge_from_file`` fall back to ``yaml.unsafe_load``)."""
    try:
        loaded = type(cfg)(dict(data))
        # detectron2 configs carry a VERSION; its merge_from_file upgrades old ones, which this project has none of
        version = loaded.get("VERSION", cfg.get("VERSION"))
        if "VERSION" in cfg and version != cfg.VERSION:
            raise BadInputError(f"{config_file}: VERSION {version!r}; expected {cfg.VERSION} (detectron2's current "
                                "config version) or no VERSION key")
        cfg.merge_from_other_cfg(loaded)
    except KeyError as e:  # yacs: KeyError('Non-existent config key: X')
        detail = e.args[0] if e.args else e
        raise BadInputError(f"{config_file}: {detail} (unknown key, or a key of another section)") from None
    except BadInputError:
        raise
    except (ValueError, AssertionError) as e:  # yacs: ValueError('Type mismatch (...) for config key: X'); an
        # AssertionError for a value of a type a config cannot hold
        raise BadInputError(f"{config_file}: {e}") from None


def load_cfg(defaults: Cfg, config_file: str | os.PathLike | None = None, opts: Sequence[Any] | None = None) -> Cfg:
    """A copy of ``defaults`` merged with ``config_file`` and the ``KEY VALUE`` ``opts`` (they win), not frozen.

    The file and its ``_BASE_`` files are read as plain YAML by
    :func:`nasnet_det.utils.yaml_config.load_config_tree` (no Python objects unless NASNET_DET_ALLOW_UNSAFE_YAML=1,
    no key given twice, no ``_BASE_`` cycle). Checked before anything is merged: the file exists and is YAML,
    the overrides are pairs with no ``--option`` among them, and no key has an old name (:data:`RENAMED_KEYS`).
    Where the config has ``MODEL.NASNET``, a ``MODEL.NASNET.PRESET`` named by the file or the overrides is
    applied first, so that explicit keys win over it (:func:`nasnet_det.models.config.prepare_nasnet_config`).
    An unknown key is a :class:`BadInputError` naming the file or the override."""
    # Imported here, not at the top: importing this module must not import torch (models does); the pipeline
    # driver imports it before it knows whether it will load a config at all.
    from nasnet_det.models.config import prepare_nasnet_config

    cfg = defaults.clone()
    opts = check_overrides(opts)
    config_file = str(config_file) if config_file else None
    tree = None
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file {config_file} does not exist")
        try:  # read once, safely (Python tags, repeated keys, bad _BASE_ files: one line naming the file)
            tree = load_config_tree(config_file)
        except yaml.YAMLError as e:
            raise BadInputError(bad_input_message(e, config_file)) from None
    data: Mapping = tree.merged if tree else {}
    _check_renamed(cfg, config_file, data, opts)
    if lookup(cfg, "MODEL.NASNET")[0]:
        opts += prepare_nasnet_config(cfg, config_file, opts, tree=tree)
    if config_file:
        _merge_file_data(cfg, config_file, data)
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as e:  # yacs: KeyError('Non-existent key: X'), AssertionError
        detail = str(e.args[0]) if e.args else type(e).__name__
        unknown = next((k for k in opts[0::2] if not lookup(cfg, k)[0]), None)
        raise BadInputError(f"bad override: {detail}{_unknown_key_hint(cfg, unknown) if unknown else ''}") from None
    except BadInputError:
        raise
    except ValueError as e:  # yacs: a value of the wrong type
        raise BadInputError(f"bad override: {e}") from None
    return cfg
