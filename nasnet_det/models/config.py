"""The one config description of a NASNet: the ``MODEL.NASNET`` node and its named presets, used alike by
classification training, the detectors and the search's children (built by
:func:`nasnet_det.models.create_model`).

``MODEL.NASNET`` keys (see :func:`add_nasnet_model_config`): PRESET, GENOTYPE, NUM_CELLS (N),
PENULTIMATE_FILTERS (F) or FILTERS (f), STEM_FILTERS, SKIP_REDUCTION_LAYER_INPUT, PAD_MODE,
DROP_PATH_KEEP_PROB, BN_EPS, BN_MOMENTUM, AUX_HEAD, DROPOUT, WEIGHTS, CHANNELS_LAST. The dataset (CIFAR or
ImageNet stem) and the class count are not keys of the node: they follow from where the network is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fvcore.common.config import CfgNode

from nasnet_det.genotypes import get_genotype
from nasnet_det.models.nasnet import filters_for_penultimate
from nasnet_det.models.ops import PAD_MODES
from nasnet_det.space import Genotype
from nasnet_det.utils.mapping import lookup
from nasnet_det.utils.yaml_config import ConfigTree, load_config_tree

NODE = "MODEL.NASNET"


@dataclass(frozen=True)
class Preset:
    """A named network: ``values`` for every network key of ``MODEL.NASNET``, plus where it is used."""

    values: dict[str, Any]
    dataset: str  # "cifar" or "imagenet" (the stem)
    num_classes: int
    image_size: int


def _preset(dataset: str, num_classes: int, image_size: int, **values: Any) -> Preset:
    base = dict(GENOTYPE="nasnet_a", NUM_CELLS=6, PENULTIMATE_FILTERS=0, FILTERS=0, STEM_FILTERS=0,
                SKIP_REDUCTION_LAYER_INPUT=False, PAD_MODE="tf", DROP_PATH_KEEP_PROB=1.0, BN_EPS=1e-3,
                BN_MOMENTUM=0.1, AUX_HEAD=True, DROPOUT=0.0)
    unknown = set(values) - set(base)
    assert not unknown, f"preset sets unknown keys {unknown}"
    return Preset({**base, **values}, dataset, num_classes, image_size)


# TF-slim's cifar / mobile / large configurations (nasnet-reference.md 3.4) and the search's children.
# "tf" padding is TF-exact SAME padding, right for all released NASNet weights (slim, Cadene and timm's are
# TF's); "timm" reproduces timm's outputs, whose stride-2 average pools count the zero padding in the mean.
PRESETS: dict[str, Preset] = {
    "nasnet_a_cifar": _preset("cifar", 10, 32, NUM_CELLS=6, PENULTIMATE_FILTERS=768, DROP_PATH_KEEP_PROB=0.6,
                              BN_EPS=1e-5),
    "nasnet_a_mobile": _preset("imagenet", 1000, 224, NUM_CELLS=4, PENULTIMATE_FILTERS=1056, STEM_FILTERS=32,
                               DROPOUT=0.5),
    "nasnet_a_large": _preset("imagenet", 1000, 331, NUM_CELLS=6, PENULTIMATE_FILTERS=4032, STEM_FILTERS=96,
                              SKIP_REDUCTION_LAYER_INPUT=True, DROP_PATH_KEEP_PROB=0.7, DROPOUT=0.5),
    # Search children (any genotype, sized by f): the paper's N=2 @ f=32, and the small default N=1 @ f=8.
    "search_child_paper": _preset("cifar", 10, 32, NUM_CELLS=2, FILTERS=32, BN_EPS=1e-5, AUX_HEAD=False),
    "search_child_tiny": _preset("cifar", 10, 32, NUM_CELLS=1, FILTERS=8, BN_EPS=1e-5, AUX_HEAD=False),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


def add_nasnet_model_config(cfg: CfgNode, preset: str = "nasnet_a_cifar") -> CfgNode:
    """Add ``cfg.MODEL.NASNET`` holding the values of ``preset`` (the caller's default network).

    How ``MODEL.NASNET.PRESET`` combines with explicit keys: a config file or an override that sets
    ``MODEL.NASNET.PRESET`` replaces every network key by that preset's value, and keys set explicitly (in
    the file, its ``_BASE_`` files, or the ``KEY VALUE`` overrides) win over the preset, whatever their
    order. :func:`prepare_nasnet_config` does this (defaults <- preset <- file <- overrides) before the
    loader merges the file and overrides (:func:`nasnet_det.config.load_cfg` calls it).
    The size is one choice: a source that sets only ``FILTERS`` (f) to a positive value on top of a preset
    sized by ``PENULTIMATE_FILTERS`` (F) sets F to 0, and vice versa.
    ``WEIGHTS`` (an ImageNet-pretrained nasnet-det checkpoint, or a timm / pretrainedmodels state dict) is
    not part of a preset.
    """
    if "MODEL" not in cfg:
        cfg.MODEL = type(cfg)()
    cfg.MODEL.NASNET = type(cfg)()
    n = cfg.MODEL.NASNET
    n.PRESET = preset  # a name in PRESETS; the keys below start at its values
    n.GENOTYPE = "nasnet_a"  # a published cell ("nasnet_a") or a genotype JSON path
    n.NUM_CELLS = 6  # N: normal cells per stack
    # Size the network by exactly one of F (channels of the last cell) or f (per-op filters of stack 1).
    n.PENULTIMATE_FILTERS = 0
    n.FILTERS = 0
    n.STEM_FILTERS = 0  # conv0 output channels; 0 = the stem's default (ImageNet 96, CIFAR 3f)
    n.SKIP_REDUCTION_LAYER_INPUT = False  # True for NASNet-A large
    n.PAD_MODE = "tf"  # one of PAD_MODES (see PRESETS)
    n.DROP_PATH_KEEP_PROB = 1.0  # ScheduledDropPath; 1.0 = off
    n.BN_EPS = 1e-3
    n.BN_MOMENTUM = 0.1  # PyTorch convention (TF decay 0.9997 = momentum 0.0003)
    n.AUX_HEAD = True  # classification only (a detector backbone has no classifier)
    n.DROPOUT = 0.0  # before the classifier
    n.WEIGHTS = ""  # initial NASNet weights (see above)
    # Memory layout, not architecture (not in a preset or a checkpoint's arch): NHWC is much faster on the CPU
    # (NASNet.set_channels_last); False runs NCHW.
    n.CHANNELS_LAST = True
    apply_preset(n, preset)
    return cfg


def apply_preset(node: CfgNode, name: str) -> None:
    """Set every network key of ``node`` (a ``MODEL.NASNET``) to preset ``name``'s value."""
    try:
        preset = get_preset(name)
    except KeyError as e:
        raise ValueError(f"{NODE}.PRESET: {e.args[0]}") from None
    node.PRESET = name
    for key, value in preset.values.items():
        node[key] = value


SIZE_KEYS = ("PENULTIMATE_FILTERS", "FILTERS")


def prepare_nasnet_config(cfg: CfgNode, config_file: str | Path | None = None,
                          opts: Sequence[Any] | None = None, tree: ConfigTree | None = None) -> list[str]:
    """Before ``merge_from_file`` / ``merge_from_list`` (:func:`nasnet_det.config.load_cfg` calls it): apply the
    ``MODEL.NASNET.PRESET`` the file or the overrides name (the overrides win) to ``cfg``, so that explicit
    keys merged afterwards win over it.

    Returns overrides to merge after ``opts``: the network is sized by one of F and f, so when the last
    source that sizes it (the ``_BASE_`` files, the file, then the overrides) sets only one of them to a
    positive value, the other is set to 0 (``MODEL.NASNET.FILTERS 8`` on top of a preset sized by F means
    f = 8). ``tree`` is ``config_file`` as the loader read it (:func:`load_config_tree`; read here when not
    given), so that the file is read once."""
    if tree is None and config_file:
        tree = load_config_tree(config_file)
    data: Mapping = tree.merged if tree else {}
    pairs = list(zip([str(k) for k in list(opts or [])[0::2]], list(opts or [])[1::2]))
    found, preset = lookup(data, f"{NODE}.PRESET")
    for key, value in pairs:
        if key == f"{NODE}.PRESET":
            found, preset = True, str(value)
    if found and preset:
        apply_preset(cfg.MODEL.NASNET, str(preset))

    # The size keys (F, f) that each file of the _BASE_ tree sets itself, in the order they are merged (bases
    # first), so that a file sizing the network by one of them overrides its bases' size; the overrides last.
    file_sizes = [{k: v for k in SIZE_KEYS for found, v in [lookup(own, f"{NODE}.{k}")] if found}
                  for _, own in (tree.files if tree else [])]
    sizing: dict[str, Any] = {}
    for source in (*file_sizes,
                   {k.rsplit(".", 1)[1]: v for k, v in pairs if k in {f"{NODE}.{s}" for s in SIZE_KEYS}}):
        if source:
            sizing = source
    if len(sizing) == 1:
        (key, value), = sizing.items()
        if _positive(value):
            other = next(k for k in SIZE_KEYS if k != key)
            return [f"{NODE}.{other}", "0"]
    return []


def _positive(value: Any) -> bool:
    try:
        return int(value) > 0
    except (TypeError, ValueError):
        return False


def node_of(cfg_or_node: Mapping) -> Mapping:
    """``MODEL.NASNET`` of a full config, or the node itself."""
    if "MODEL" in cfg_or_node:
        return cfg_or_node["MODEL"]["NASNET"]
    return cfg_or_node


def described(node: Mapping) -> str:
    return (f"{NODE} (GENOTYPE={node['GENOTYPE']!r}, NUM_CELLS={node['NUM_CELLS']}, "
            f"PENULTIMATE_FILTERS={node['PENULTIMATE_FILTERS']}, FILTERS={node['FILTERS']})")


def check_nasnet_node(node: Mapping) -> None:
    """Reject values no network can be built with; ``ValueError`` names the key."""
    f, penultimate = node["FILTERS"], node["PENULTIMATE_FILTERS"]
    if (penultimate > 0) == (f > 0):
        raise ValueError(f"set exactly one of {NODE}.PENULTIMATE_FILTERS (F) and {NODE}.FILTERS (f) to a "
                         f"positive value (got F={penultimate}, f={f})")
    if not (isinstance(node["NUM_CELLS"], int) and node["NUM_CELLS"] >= 1):
        raise ValueError(f"{NODE}.NUM_CELLS must be an integer >= 1, got {node['NUM_CELLS']!r}")
    if node["PAD_MODE"] not in PAD_MODES:
        raise ValueError(f"{NODE}.PAD_MODE must be one of {PAD_MODES}, got {node['PAD_MODE']!r}")
    if not 0.0 < node["DROP_PATH_KEEP_PROB"] <= 1.0:
        raise ValueError(f"{NODE}.DROP_PATH_KEEP_PROB must be in (0, 1], got {node['DROP_PATH_KEEP_PROB']}")
    if node.get("PRESET") and node["PRESET"] not in PRESETS:
        raise ValueError(f"{NODE}.PRESET: unknown preset {node['PRESET']!r}; available: {', '.join(PRESETS)}")


def nasnet_kwargs(cfg_or_node: Mapping, dataset: str = "imagenet", num_classes: int = 1000, *,
                  image_size: int | None = None, in_chans: int = 3,
                  genotype: Genotype | str | None = None) -> dict[str, Any]:
    """The :class:`NASNet` constructor arguments ``MODEL.NASNET`` describes (``genotype`` overrides
    ``GENOTYPE``, e.g. for a search child). ``num_classes=0`` builds a feature extractor: no classifier
    and no aux head."""
    node = node_of(cfg_or_node)
    if dataset not in ("cifar", "imagenet"):
        raise ValueError(f"dataset must be 'cifar' or 'imagenet', got {dataset!r}")
    check_nasnet_node(node)
    try:
        genotype = get_genotype(genotype if genotype is not None else node["GENOTYPE"])
        filters = node["FILTERS"] or filters_for_penultimate(genotype, node["PENULTIMATE_FILTERS"],
                                                           strict=False)  # any searched cell: nearest F
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise ValueError(f"{described(node)}: {e.args[0] if isinstance(e, KeyError) and e.args else e}") from e
    return dict(genotype=genotype, num_classes=num_classes, num_cells=node["NUM_CELLS"], filters=filters,
                imagenet_stem=dataset == "imagenet", stem_filters=node["STEM_FILTERS"] or None,
                skip_reduction_layer_input=bool(node["SKIP_REDUCTION_LAYER_INPUT"]),
                aux_head=bool(node["AUX_HEAD"]) and num_classes > 0,
                drop_path_keep_prob=float(node["DROP_PATH_KEEP_PROB"]), dropout=float(node["DROPOUT"]),
                bn_eps=float(node["BN_EPS"]), bn_momentum=float(node["BN_MOMENTUM"]), pad_mode=node["PAD_MODE"],
                in_chans=in_chans, image_size=image_size, channels_last=bool(node.get("CHANNELS_LAST", True)))


def preset_node(name: str) -> CfgNode:
    """A stand-alone ``MODEL.NASNET`` node holding preset ``name``."""
    return add_nasnet_model_config(CfgNode(), name).MODEL.NASNET
