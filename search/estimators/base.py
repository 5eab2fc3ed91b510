"""The estimator interface and its registry: an estimator predicts how good a cell is without training it
alone (its size, a zero-cost proxy at initialisation, or the shared weights of a trained supernet).
``bench/search_quality.py`` ranks every registered estimator against stand-alone training; the
``zero_cost`` strategy searches with one.

``build_estimator(name, cfg)`` takes the search config of :mod:`search.config` (``cfg.MODEL.NASNET`` is the
network a cell is scored in, ``cfg.CHILD.IMAGE_SIZE`` its images, ``cfg.SEARCH.ZERO_COST`` the proxies'
minibatch, ``cfg.ONESHOT`` the supernet estimators' training): one config for every estimator."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, TypeVar

from fvcore.common.config import CfgNode

from nasnet_det.space import Genotype
from nasnet_det.utils.errors import BadInputError
from search.reward import ChildData

E = TypeVar("E", bound=type["Estimator"])


class Estimator(ABC):
    """``prepare(data, seed)`` once (trains what the estimator needs, e.g. a supernet; keeps the data and seed
    for the others), then ``score(genotype)`` for each cell: higher = predicted better. Scores are
    deterministic given (cfg, data, seed)."""

    #: the registered name (set by :func:`register_estimator`)
    name: ClassVar[str] = ""
    #: True when ``score`` needs training images (a minibatch or a trained supernet)
    needs_data: ClassVar[bool] = False

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


#: every estimator by name
ESTIMATORS: dict[str, type[Estimator]] = {}


def register_estimator(name: str) -> Callable[[E], E]:
    """Class decorator: add an :class:`Estimator` subclass to :data:`ESTIMATORS` under ``name``."""
    def add(cls: E) -> E:
        if name in ESTIMATORS:
            raise ValueError(f"an estimator named {name!r} is already registered")
        cls.name = name
        ESTIMATORS[name] = cls
        return cls
    return add


def build_estimator(name: str, cfg: CfgNode, key: str = "estimator") -> Estimator:
    """The estimator ``name`` built from the search config ``cfg``; ``key`` names the setting in the error
    for an unknown name."""
    cls = ESTIMATORS.get(str(name).strip().lower())
    if cls is None:
        raise BadInputError(f"{key}={name!r}: expected one of {', '.join(sorted(ESTIMATORS))}")
    return cls(cfg)
