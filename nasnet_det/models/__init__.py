"""NASNet networks. One entry point: :func:`create_model` (named configurations) or :func:`build_nasnet`."""

from __future__ import annotations

from typing import Any

from nasnet_det.genotypes import get_genotype
from nasnet_det.models.nasnet import NASNet, filters_for_penultimate
from nasnet_det.space import Genotype

# TF-slim's cifar / mobile / large configurations (nasnet-reference.md 3.4).
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "nasnet_a_cifar": dict(genotype="nasnet_a", dataset="cifar", num_cells=6, penultimate_filters=768,
                           num_classes=10, drop_path_keep_prob=0.6, bn_eps=1e-5),
    "nasnet_a_mobile": dict(genotype="nasnet_a", dataset="imagenet", num_cells=4, penultimate_filters=1056,
                            num_classes=1000, stem_filters=32, dropout=0.5, image_size=224),
    "nasnet_a_large": dict(genotype="nasnet_a", dataset="imagenet", num_cells=6, penultimate_filters=4032,
                           num_classes=1000, stem_filters=96, skip_reduction_layer_input=True,
                           drop_path_keep_prob=0.7, dropout=0.5, image_size=331),
}


def build_nasnet(genotype: Genotype | str, dataset: str = "imagenet", num_cells: int = 4,
                 penultimate_filters: int | None = None, filters: int | None = None,
                 strict_filters: bool = True, **kwargs: Any) -> NASNet:
    """A NASNet for ``dataset`` ('cifar' or 'imagenet') from any genotype, sized as ``N @ F``.

    Give either ``penultimate_filters`` (F, the paper's convention) or ``filters`` (f, slim's per-op filters
    of the first stack). ``kwargs`` go to :class:`NASNet` (num_classes, drop_path_keep_prob, ...).
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
    """A published configuration by name (``nasnet_a_cifar``, ``nasnet_a_mobile``, ``nasnet_a_large``),
    with any argument of :func:`build_nasnet` overridden. ``fast_inference=True`` returns the eval-only
    BN-folded network (:meth:`NASNet.fuse_for_inference`; for trained weights, load them first and call that)."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(MODEL_CONFIGS)}")
    cfg = {**MODEL_CONFIGS[name], **overrides}
    if "filters" in overrides:
        cfg.pop("penultimate_filters", None)
    model = build_nasnet(**cfg)
    return model.fuse_for_inference() if fast_inference else model


__all__ = ["MODEL_CONFIGS", "NASNet", "build_nasnet", "create_model", "filters_for_penultimate"]
