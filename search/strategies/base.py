"""The search strategy interface and its registry: a strategy proposes children (decisions of the NASNet
space) and learns from their rewards; the session frame (:mod:`search.session`) runs it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from fvcore.common.config import CfgNode

from nasnet_det.search_space import SearchSpace

S = TypeVar("S", bound=type["Strategy"])


class Strategy(ABC):
    """Built from the search config. ``sample`` draws ``n`` children from a caller-seeded generator (the
    caller derives it from the seed and sample index, so a resumed search draws the same numbers);
    ``update`` learns from one finished batch; ``state_dict`` is what a checkpoint keeps."""

    #: has a policy that learns (and so can collapse onto one genotype: the summary checks it)
    learns: ClassVar[bool] = False
    #: scores cells with the shared weights of a supernet (search/oneshot.py) instead of training children;
    #: such a search runs alone
    weight_sharing: ClassVar[bool] = False

    def __init__(self, cfg: CfgNode):
        self.num_blocks = int(cfg.SEARCH.NUM_BLOCKS)
        self.space = SearchSpace(self.num_blocks)  # what the decisions mean

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decisions LongTensor [n, 2 x 5B] and their log-probabilities [n] (None without a policy)."""

    def attach(self, output_dir: Path, sampled: list[list[int]]) -> None:
        """Called once by the runner before the first ``sample``: the search's output folder (for a strategy's
        own resumable files) and the decisions journaled so far by this strategy, in sample order (a resumed
        strategy whose proposals depend on what it already proposed continues from there)."""
        return None  # the built-in strategies need neither

    def update(self, decisions: torch.Tensor, logprobs: torch.Tensor | None, rewards: torch.Tensor
               ) -> dict[str, float]:
        """Learn from one batch (rows in sampling order); returns statistics for the log."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (a checkpoint may hold other keys too)."""
        return None  # nothing to restore: the default state is empty


class StrategyRegistry:
    """Strategy classes by the name ``SEARCH.STRATEGY`` uses (lower case); the search's registry is
    :data:`search.strategies.registry.STRATEGIES`."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Strategy]] = {}

    def register(self, name: str) -> Callable[[S], S]:
        def add(cls: S) -> S:
            if name in self._classes:
                raise ValueError(f"a search strategy named {name!r} is already registered")
            self._classes[name] = cls
            return cls
        return add

    def names(self) -> list[str]:
        return sorted(self._classes)

    def resolve(self, spec: str) -> dict[str, type[Strategy]]:
        """The strategies of ``SEARCH.STRATEGY`` (comma-separated names, duplicates dropped), by name."""
        names = list(dict.fromkeys(s.strip().lower() for s in str(spec).split(",") if s.strip()))
        bad = [n for n in names if n not in self._classes]
        if not names or bad:
            raise ValueError(f"SEARCH.STRATEGY={spec!r}: expected one or more of {', '.join(self.names())} "
                             "separated by commas (e.g. 'ppo,random')")
        chosen = {n: self._classes[n] for n in names}
        alone = [n for n, cls in chosen.items() if cls.weight_sharing]
        if alone and len(chosen) > 1:
            raise ValueError(f"SEARCH.STRATEGY={spec!r}: the weight-sharing search runs alone; set it to "
                             f"'{alone[0]}' (other strategies cannot be combined with it)")
        return chosen

