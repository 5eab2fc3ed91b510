""":func:`create_model`, the one way to build a :class:`NASNet`: from a preset name, an arch record (as a
checkpoint stores it) or a config's ``MODEL.NASNET``. The genotype is resolved here, once (a name or a JSON
file -> :class:`Genotype`); the network itself only takes a :class:`Genotype`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nasnet_det.genotypes import get_genotype
from nasnet_det.models.arch import NASNetArch
from nasnet_det.models.config import described, get_preset, nasnet_kwargs, node_of, preset_node
from nasnet_det.models.nasnet import NASNet

ModelSource = str | NASNetArch | Mapping[str, Any]


def create_model(source: ModelSource, *, fast_inference: bool = False, **overrides: Any) -> NASNet:
    """A NASNet from ``source``, with ``overrides`` of the :class:`NASNet` arguments:

    - a preset name (``nasnet_a_cifar``, ``nasnet_a_mobile``, ``nasnet_a_large``, ... see ``PRESETS``); the
      overrides may also give ``genotype`` (a name, a JSON path or a :class:`Genotype`), ``dataset``
      (``"cifar"`` or ``"imagenet"``: the stem) and ``penultimate_filters`` (F) instead of ``filters`` (f).
      F need not fit the cell: the nearest valid F is used and logged.
    - an arch record: a :class:`NASNetArch` or its dict (a checkpoint's ``arch`` entry).
    - a config with ``MODEL.NASNET``, or the node itself; the overrides may give ``dataset`` (default
      ``"imagenet"``), ``num_classes`` (default 1000; 0 builds a feature extractor), ``image_size``,
      ``in_chans`` and ``genotype`` (e.g. a search child's). Bad values raise ``ValueError`` naming the key.

    ``fast_inference=True`` returns the eval-only BN-folded network (:meth:`NASNet.fuse_for_inference`; for
    trained weights, load them first and call that)."""
    if isinstance(source, str):
        kwargs, where = _preset_kwargs(source, dict(overrides)), None
    elif isinstance(source, NASNetArch) or (isinstance(source, Mapping) and "genotype" in source):
        arch = source if isinstance(source, NASNetArch) else NASNetArch.from_dict(source)
        kwargs, where = {**arch.to_dict(), "genotype": arch.genotype, **overrides}, None
        kwargs["genotype"] = get_genotype(kwargs["genotype"])
    elif isinstance(source, Mapping):
        kwargs, where = _cfg_kwargs(source, dict(overrides)), described(node_of(source))
    else:
        raise TypeError(f"create_model takes a preset name, an arch record or a config with MODEL.NASNET, "
                        f"got {type(source).__name__}")
    try:
        model = NASNet(**kwargs)
    except ValueError as e:
        if where is None:
            raise
        raise ValueError(f"{where}: {e}") from e
    return model.fuse_for_inference() if fast_inference else model


def _preset_kwargs(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    preset = get_preset(name)
    node = preset_node(name)
    if "filters" in overrides and "penultimate_filters" in overrides:
        raise ValueError("give exactly one of penultimate_filters (F) and filters (f)")
    if "filters" in overrides:  # the other size key is 0: sized by f
        node.FILTERS, node.PENULTIMATE_FILTERS = overrides.pop("filters"), 0
    elif "penultimate_filters" in overrides:
        node.FILTERS, node.PENULTIMATE_FILTERS = 0, overrides.pop("penultimate_filters")
    kwargs = nasnet_kwargs(node, overrides.pop("dataset", preset.dataset), preset.num_classes,
                           image_size=preset.image_size, genotype=overrides.pop("genotype", None))
    kwargs["aux_head"] = preset.values["AUX_HEAD"]  # nasnet_kwargs drops it for num_classes=0 only
    return {**kwargs, **overrides}


def _cfg_kwargs(cfg_or_node: Mapping, overrides: dict[str, Any]) -> dict[str, Any]:
    kwargs = nasnet_kwargs(cfg_or_node, overrides.pop("dataset", "imagenet"), overrides.pop("num_classes", 1000),
                           image_size=overrides.pop("image_size", None), in_chans=overrides.pop("in_chans", 3),
                           genotype=overrides.pop("genotype", None))
    return {**kwargs, **overrides}
