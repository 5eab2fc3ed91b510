"""The estimator interface and its registry: an estimator predicts how good a cell is without training it
alone (its size, a zero-cost proxy at initialisation, or the shared weights of a trained supernet).
``bench/search_quality.py`` ranks every registered estimator against stand-alone training; the
``zero_cost`` strategy searches with one.

``build_estimator(name, cfg)`` takes the search config of :mod:`search.config` (``cfg.MODEL.NASNET`` is the
network a cell is scored in, ``cfg.CHILD.IMAGE_SIZE`` its images, ``cfg.SEARCH.ZERO_COST`` the proxies'
minibatch, ``cfg.ONESHOT`` the supernet estimators' training): one config for every estimator.

An estimator is a class under ``@ESTIMATORS.register()`` in a module of this package (every module is
imported by the package, so the file is all it takes); one with settings of its own carries its config node
(``config_node``, ``add_config``, ``check_config``), which :mod:`search.config` adds and checks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from fvcore.common.config import CfgNode

from nasnet_det.space import Genotype
from nasnet_det.utils.errors import BadInputError
from nasnet_det.utils.registry import Registry
from search.base_config import own_node_identity
from search.reward import ChildData

#: every estimator by name (its class's ``name``); ``estimator`` names the setting in the line an unknown name
#: gets, unless the caller names its own (:func:`build_estimator`)
ESTIMATORS = Registry("estimator")


class Estimator(ABC):
    """``prepare(data, seed)`` once (trains what the estimator needs, e.g. a supernet; keeps the data and seed
    for the others), then ``score(genotype)`` for each cell: higher = predicted better. Scores are
    deterministic given (cfg, data, seed)."""

    #: the registered name (the registry's key)
    name: ClassVar[str] = ""
    #: the estimator's own config node as its dotted path from the root, added by :meth:`add_config`; None: its
    #: settings are those of the config it is given (``MODEL.NASNET``, ``CHILD``, ...)
    config_node: ClassVar[str | None] = None
    #: True when ``score`` needs training images (a minibatch or a trained supernet)
    needs_data: ClassVar[bool] = False

    @classmethod
    def add_config(cls, cfg: CfgNode) -> None:
        """Add :attr:`config_node` with its defaults (and a comment on each) to the search defaults ``cfg``."""
        return None  # an estimator without settings of its own adds nothing

    @classmethod
    def check_config(cls, cfg: CfgNode) -> None:
        """``ValueError`` (one line naming the key) for a bad value of the estimator's own settings."""
        return None  # nothing to check without settings

    @classmethod
    def identity(cls, cfg: CfgNode) -> dict[str, Any]:
        """The settings its scores depend on, by dotted key, beyond those every search's identity holds
        (``MODEL.NASNET``, ``CHILD``, ``DATA``, ``SEARCH.SEED``): its own node and any other it reads (the
        supernet estimators: ``ONESHOT``). A strategy that searches with the estimator adds them to the
        journal's identity and its scores files. Default: its own node, as plain dicts ({} without one)."""
        return own_node_identity(cfg, cls)

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg
        self.data: ChildData | None = None
        self.seed = 0

    def prepare(self, data: ChildData | None, seed: int) -> None:
        """Keep the data and seed (estimators that train something override it and call this first)."""
        if self.needs_data and data is None:
            raise BadInputError(f"estimator {self.name!r} needs training images (prepare got data=None)")
        self.data, self.seed = data, int(seed)

    @abstractmethod
    def score(self, genotype: Genotype) -> float:
        """The predicted quality of ``genotype`` (higher = better)."""


def build_estimator(name: str, cfg: CfgNode, key: str = "estimator") -> Estimator:
    """The estimator ``name`` built from the search config ``cfg``; ``key`` names the setting in the error
    for an unknown name."""
    return ESTIMATORS.lookup(name, key=key)(cfg)
