"""NASNet networks: :func:`create_model` (named presets), :func:`build_nasnet`, and :func:`nasnet_from_cfg`
(the ``MODEL.NASNET`` config node, see :mod:`nasnet_det.models.config`)."""

from __future__ import annotations

from typing import Any

from nasnet_det.genotypes import get_genotype
from nasnet_det.models.arch import NASNetArch
from nasnet_det.models.config import (
    PRESETS,
    add_nasnet_model_config,
    get_preset,
    nasnet_from_cfg,
    nasnet_kwargs,
    preset_node,
)
from nasnet_det.models.nasnet import NASNet, filters_for_penultimate
from nasnet_det.space import Genotype


def build_nasnet(genotype: Genotype | str, dataset: str = "imagenet", num_cells: int = 4,
                 penultimate_filters: int | None = None, filters: int | None = None,
                 strict_filters: bool = False, **kwargs: Any) -> NASNet:
    """A NASNet for ``dataset`` ('cifar' or 'imagenet') from any genotype, sized as ``N @ F``.

    Give either ``penultimate_filters`` (F, the paper's convention) or ``filters`` (f, slim's per-op filters
    of the first stack). Any genotype gets a network: when F does not fit the cell's concat width, the
    nearest valid F is used and logged (``strict_filters=True`` raises instead).
    ``kwargs`` go to :class:`NASNet` (num_classes, drop_path_keep_prob, ...).
    """
    if dataset not in ("cifar", "imagenet"):
        raise ValueError(f"dataset must be 'cifar' or 'imagenet', got {dataset!r}")
    genotype = get_genotype(genotype)
    if (penultimate_filters is None) == (filters is None):
        raise ValueError("give exactly one of penultimate_filters (F) and filters (f)")
    if filters is None:
        filters = filters_for_penultimate(genotype, penultimate_filters, strict_filters)
    kwargs.setdefault("num_classes", 10 if dataset == "cifar" else 1000)
    if dataset == "cifar":
        kwargs.setdefault("bn_eps", 1e-5)
    return NASNet(genotype, num_cells=num_cells, filters=filters, imagenet_stem=dataset == "imagenet", **kwargs)


def create_model(name: str, fast_inference: bool = False, **overrides: Any) -> NASNet:
    """A named preset (``nasnet_a_cifar``, ``nasnet_a_mobile``, ``nasnet_a_large``, ... see
    :data:`PRESETS`), with any argument of :func:`build_nasnet` overridden. ``fast_inference=True`` returns the
    eval-only BN-folded network (:meth:`NASNet.fuse_for_inference`; for trained weights, load them first and call
    that)."""
    preset = get_preset(name)
    kwargs = nasnet_kwargs(preset_node(name), preset.dataset, preset.num_classes, image_size=preset.image_size)
    kwargs.pop("imagenet_stem")
    kwargs["aux_head"] = preset.values["AUX_HEAD"]  # nasnet_kwargs drops it for num_classes=0 only
    if preset.values["FILTERS"] == 0:  # sized by F: an override of F or f re-derives f
        kwargs["penultimate_filters"] = preset.values["PENULTIMATE_FILTERS"]
        kwargs.pop("filters")
    if "filters" in overrides:
        kwargs.pop("penultimate_filters", None)
    elif "penultimate_filters" in overrides:
        kwargs.pop("filters", None)
    model = build_nasnet(**{"dataset": preset.dataset, **kwargs, **overrides})
    return model.fuse_for_inference() if fast_inference else model


__all__ = ["PRESETS", "NASNet", "NASNetArch", "add_nasnet_model_config", "build_nasnet", "create_model",
           "filters_for_penultimate", "nasnet_from_cfg"]
