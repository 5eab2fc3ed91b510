"""One record of what a NASNet is, compared the same way everywhere a network meets a checkpoint.

:class:`NASNetArch` is made from a config (:meth:`NASNetArch.from_cfg`), a model (:meth:`from_model`) or a
checkpoint's ``arch`` entry (:meth:`from_dict`, the ``nasnet-det/v1`` format; of a file:
:func:`nasnet_det.models.pretrained.read_arch`). :func:`nasnet_det.models.create_model` builds the network.
Two records are equal when they build the same tensors and the same outputs; :meth:`differences` says how
they differ, naming the ``MODEL.NASNET`` key that sets each field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from nasnet_det.models.config import nasnet_kwargs
from nasnet_det.models.nasnet import NASNet
from nasnet_det.space import Genotype

# Fields that decide a network's tensors or outputs -> what sets them. Training-only settings (drop path,
# dropout, BN momentum / eps, image size) are recorded but do not make two networks differ.
COMPARED_FIELDS: dict[str, str] = {
    "genotype": "MODEL.NASNET.GENOTYPE",
    "num_cells": "MODEL.NASNET.NUM_CELLS",
    "filters": "MODEL.NASNET.FILTERS / PENULTIMATE_FILTERS",
    "imagenet_stem": "the dataset: ImageNet or CIFAR stem",
    "stem_filters": "MODEL.NASNET.STEM_FILTERS",
    "skip_reduction_layer_input": "MODEL.NASNET.SKIP_REDUCTION_LAYER_INPUT",
    "pad_mode": "MODEL.NASNET.PAD_MODE",
    "in_chans": "input channels; detection: len(MODEL.PIXEL_MEAN)",
    "num_classes": "the number of classes",
    "aux_head": "MODEL.NASNET.AUX_HEAD",
}
# Compared fields that only the classifier depends on (a detector or a fine-tuning run ignores them).
CLASSIFIER_FIELDS = ("num_classes", "aux_head")


@dataclass(frozen=True, eq=False)
class NASNetArch:
    """What a :class:`NASNet` is: its constructor arguments (``NASNet.arch``)."""

    genotype: Genotype
    num_cells: int
    filters: int
    imagenet_stem: bool = True
    stem_filters: int | None = None  # None: the stem's default (ImageNet 96, CIFAR 3f)
    skip_reduction_layer_input: bool = False
    pad_mode: str = "tf"
    in_chans: int = 3
    num_classes: int = 1000
    aux_head: bool = True
    drop_path_keep_prob: float = 1.0
    dropout: float = 0.0
    bn_eps: float = 1e-3
    bn_momentum: float = 0.1
    image_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # unknown entries of a newer record, kept as is

    @property
    def conv0_filters(self) -> int:
        """The stem width, ``stem_filters`` or the stem's default."""
        if self.stem_filters is not None:
            return self.stem_filters
        return 96 if self.imagenet_stem else 3 * self.filters

    # ---- constructors
    @classmethod
    def from_dict(cls, arch: Mapping[str, Any], where: str = "checkpoint arch") -> NASNetArch:
        """From a checkpoint's ``arch`` entry (``NASNet.arch``); missing fields take the constructor defaults."""
        if not isinstance(arch, Mapping) or "genotype" not in arch:
            raise ValueError(f"{where}: expected a dict with a 'genotype' entry, got {type(arch).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in arch.items() if k in known and v is not None}
        for required in ("num_cells", "filters"):
            if required not in values:
                raise ValueError(f"{where}: no {required!r} entry")
        values["genotype"] = Genotype.from_dict(arch["genotype"], where=where)
        return cls(**values, extra={k: v for k, v in arch.items() if k not in known})

    @classmethod
    def from_model(cls, model: NASNet) -> NASNetArch:
        return cls.from_dict(model.arch, where=type(model).__name__)

    @classmethod
    def from_cfg(cls, cfg_or_node: Mapping, dataset: str = "imagenet", num_classes: int = 1000,
                 **kwargs: Any) -> NASNetArch:
        """The network ``MODEL.NASNET`` describes (arguments as :func:`nasnet_det.models.create_model`)."""
        built = nasnet_kwargs(cfg_or_node, dataset, num_classes, **kwargs)
        built.pop("channels_last")  # a memory layout, not part of what the network is
        return cls(**built)

    # ---- use
    def to_dict(self) -> dict[str, Any]:
        """The ``NASNet.arch`` / checkpoint form (the constructor's keyword arguments)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["genotype"] = self.genotype.to_dict()
        return {**out, **self.extra}

    def _value(self, name: str) -> Any:
        if name == "genotype":  # the cells matter, not the name
            return (self.genotype.normal, self.genotype.reduce)
        if name == "stem_filters":  # None and the default it stands for are the same network
            return self.conv0_filters
        return getattr(self, name)

    def differing_fields(self, other: NASNetArch, ignore: tuple[str, ...] = ()) -> list[str]:
        return [k for k in COMPARED_FIELDS if k not in ignore and self._value(k) != other._value(k)]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NASNetArch):
            return NotImplemented
        return not self.differing_fields(other)

    def __hash__(self) -> int:
        return hash(tuple(self._value(k) for k in COMPARED_FIELDS))

    def genotype_label(self, quoted: bool = True) -> str:
        digest = hashlib.sha1(json.dumps({"normal": self.genotype.normal.to_dict(),
                                          "reduce": self.genotype.reduce.to_dict()}, sort_keys=True
                                         ).encode()).hexdigest()[:8]
        name = self.genotype.name or "<custom>"
        return f"{repr(name) if quoted else name} [{digest}]"

    def _show(self, name: str) -> str:
        return self.genotype_label() if name == "genotype" else str(self._value(name))

    def differences(self, other: NASNetArch, ignore: tuple[str, ...] = (),
                    names: tuple[str, str] = ("checkpoint", "config")) -> list[str]:
        """One line per differing field: ``"pad_mode: checkpoint timm vs config tf (MODEL.NASNET.PAD_MODE)"``,
        where ``names`` name ``self`` and ``other``. Empty when the networks are the same."""
        return [f"{k}: {names[0]} {self._show(k)} vs {names[1]} {other._show(k)} ({COMPARED_FIELDS[k]})"
                for k in self.differing_fields(other, ignore)]

    def describe(self) -> str:
        """One line naming the network: genotype (name + content hash), N, f, classes, stem."""
        return (f"genotype {self.genotype_label(quoted=False)} N={self.num_cells} f={self.filters} "
                f"classes={self.num_classes} {'imagenet' if self.imagenet_stem else 'cifar'} stem "
                f"stem_filters={self.conv0_filters} aux_head={self.aux_head} pad_mode={self.pad_mode}")
