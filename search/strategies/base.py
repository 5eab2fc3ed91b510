"""The search strategy interface and its registry: a strategy proposes children (decisions of the NASNet
space) and learns from their rewards; the search engine (:class:`search.runner.SearchRunner`) runs it.

A strategy is one module of this package (every module is imported by the package, so the file is all it
takes): a :class:`Strategy` subclass under ``@STRATEGIES.register()``, carrying its name, its config node
(``config_node``, ``add_config``, ``check_config``), the settings that enter the journal's identity
(``identity``) and the files it writes into the output folder (``owned_files``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from fvcore.common.config import CfgNode

from nasnet_det.search_space import SearchSpace
from nasnet_det.utils.errors import BadInputError
from nasnet_det.utils.registry import Registry
from search.base_config import own_node_identity
from search.journal import Evaluation
from search.reward import ChildData

#: every strategy by the name ``SEARCH.STRATEGY`` uses (its class's ``name``)
STRATEGIES = Registry("SEARCH.STRATEGY")


@dataclass
class Proposal:
    """Children a strategy proposes at once: journaled under ``name`` as samples ``first`` .. ``first + n - 1``,
    drawn by the policy after ``policy`` updates."""

    name: str
    first: int
    policy: int
    decisions: torch.Tensor
    logprobs: torch.Tensor | None


class Strategy(ABC):
    """Built from the search config. ``sample`` draws ``n`` children from a caller-seeded generator (the
    caller derives it from the seed and sample index, so a resumed search draws the same numbers);
    ``update`` learns from one finished batch; ``state_dict`` is what a checkpoint keeps."""

    #: the name ``SEARCH.STRATEGY`` uses (lower case; the registry's key)
    name: ClassVar[str] = ""
    #: the strategy's own config node as its dotted path from the root (e.g. ``"SEARCH.ZERO_COST"``), added by
    #: :meth:`add_config`; None: it has none
    config_node: ClassVar[str | None] = None
    #: glob patterns of the files the strategy writes into the output folder (beside the runner's controller
    #: checkpoints): a fresh start deletes them, a damaged journal's restart moves them aside with it
    owned_files: ClassVar[tuple[str, ...]] = ()

    #: has a policy that learns (and so can collapse onto one genotype: the summary checks it)
    learns: ClassVar[bool] = False
    #: scores cells with the shared weights of a supernet (search/strategies/oneshot.py) instead of training
    #: children; such a search runs alone
    weight_sharing: ClassVar[bool] = False
    #: the journal strategies its children are filed under (None: the name it is registered by)
    journal_names: ClassVar[tuple[str, ...] | None] = None
    #: keeps its own checkpoint (loaded in :meth:`attach`, counted by :meth:`updates_done`): the engine
    #: writes no controller checkpoint for it
    own_checkpoint: ClassVar[bool] = False
    #: journal strategies of its final candidates: when set, the search's best cells come from them only
    final_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: CfgNode):
        self.num_blocks = int(cfg.SEARCH.NUM_BLOCKS)
        self.batch_size = int(cfg.SEARCH.BATCH_SIZE)
        self.space = SearchSpace(self.num_blocks)  # what the decisions mean

    # ---- what the engine asks (the defaults: children trained by workers, SEARCH.BUDGET of them) ----------
    @classmethod
    def build(cls, cfg: CfgNode, data: ChildData | None = None, progress: bool = False) -> Strategy:
        """The strategy as the runner builds it: ``data`` replaces ``cfg.DATA`` for a strategy that trains on
        images itself (tests pass a few), ``progress`` shows its own bars. Default: ``cls(cfg)`` (a sampler
        needs neither)."""
        return cls(cfg)

    @classmethod
    def follows(cls) -> bool:
        """True in a process that follows another's run of the strategy instead of searching (ranks > 0 of a
        distributed search): the runner calls :meth:`follow` there, without a journal. Default: never."""
        return False

    def follow(self, output_dir: Path) -> None:
        """The strategy's steps in a following process (:meth:`follows`), writing nothing."""
        raise NotImplementedError(f"{type(self).__name__} runs in one process only")

    @classmethod
    def budget(cls, cfg: CfgNode) -> int:
        """Children the strategy proposes in the whole search."""
        return int(cfg.SEARCH.BUDGET)

    def evaluator(self) -> Callable[..., dict[str, Any]] | None:
        """An evaluator of the strategy's own (``search.workers.Evaluator``), run in the driver process by the
        inline backend (weight sharing: the supernet stays here); None: children are trained by the workers."""
        return None

    def propose(self, n: int, generator: torch.Generator, sampled: int, step: int) -> Proposal | None:
        """The next ``n`` children (``sampled`` proposed and ``step`` updates applied so far); None: none now."""
        decisions, logp = self.sample(n, generator)
        return Proposal("", sampled, step, decisions, logp)

    def updates_due(self, finished: int) -> int:
        """Policy updates due once ``finished`` of its children have finished."""
        return finished // self.batch_size

    def update_batch(self, name: str, step: int) -> tuple[str, int]:
        """(journal strategy, batch) of update ``step`` of the strategy registered as ``name``."""
        return name, step

    def batch_size_of(self, journal_name: str) -> int:
        """The update batch size the journal files the strategy's finished children of ``journal_name`` by."""
        return self.batch_size

    def summary(self) -> dict[str, Any] | None:
        """The strategy's own section of ``summary.json`` (None: none)."""
        return None

    def updates_done(self) -> int:
        """Updates held by the strategy's own checkpoint (``own_checkpoint``)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no checkpoint of its own")

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decisions LongTensor [n, 2 x 5B] and their log-probabilities [n] (None without a policy)."""

    def attach(self, output_dir: Path, rows: list[Evaluation]) -> None:
        """Called once by the runner before the first ``sample``: the search's output folder (for a strategy's
        own resumable files) and the strategy's journal rows so far, in sample order (a resumed strategy whose
        proposals depend on what it already proposed continues from there; ``rows[i].decisions``)."""
        return None  # the samplers need neither

    def update(self, decisions: torch.Tensor, logprobs: torch.Tensor | None, rewards: torch.Tensor
               ) -> dict[str, float]:
        """Learn from one batch (rows in sampling order); returns statistics for the log."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (a checkpoint may hold other keys too)."""
        return None  # nothing to restore: the default state is empty


    @classmethod
    def add_config(cls, cfg: CfgNode) -> None:
        """Add :attr:`config_node` with its defaults (and a comment on each) to the search defaults ``cfg``."""
        return None  # a strategy without settings of its own adds nothing

    @classmethod
    def check_config(cls, cfg: CfgNode) -> None:
        """``ValueError`` (one line naming the key) for a bad value of the strategy's settings; called for every
        search whatever its strategies, as the other checks (a typo fails at once)."""
        return None  # nothing to check without settings

    @classmethod
    def identity(cls, cfg: CfgNode) -> dict[str, Any]:
        """The strategy's settings that define what the children it proposes mean, by dotted key: they enter
        the journal's identity when a search runs the strategy (searches without it, and journals from before
        the strategy existed, resume as before). Default: its whole node, as plain dicts."""
        return own_node_identity(cfg, cls)


def resolve_strategies(spec: str) -> dict[str, type[Strategy]]:
    """The strategies ``SEARCH.STRATEGY`` names (comma-separated names, duplicates dropped), by name."""
    names = list(dict.fromkeys(s.strip().lower() for s in str(spec).split(",") if s.strip()))
    bad = [n for n in names if n not in STRATEGIES]
    if not names or bad:  # (not STRATEGIES.lookup: the line also says how to name several)
        known = ", ".join(sorted(STRATEGIES.names()))
        raise BadInputError(f"SEARCH.STRATEGY={spec!r}: expected one or more of {known} separated by commas "
                            "(e.g. 'ppo,random')")
    chosen = {n: STRATEGIES.get(n) for n in names}
    alone = [n for n, cls in chosen.items() if cls.weight_sharing]
    if alone and len(chosen) > 1:
        raise BadInputError(f"SEARCH.STRATEGY={spec!r}: the weight-sharing search runs alone; set it to "
                            f"'{alone[0]}' (other strategies cannot be combined with it)")
    return chosen
