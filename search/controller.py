"""The NASNet controller: a one-layer LSTM that emits 2 x 5B categorical decisions.

For each block of the normal cell, then of the reduction cell, it picks (input_1, input_2, op_1, op_2,
combine). Every decision has its own softmax classifier and its own embedding (fed to the next step).
The softmax over input choices of block ``b`` has exactly ``2 + b`` outputs (the states that exist), so an invalid cell
cannot be sampled. The decisions and their meaning are the search space's
(:class:`nasnet_det.search_space.SearchSpace`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasnet_det.search_space import SearchSpace
from nasnet_det.space import Genotype


class Controller(nn.Module):
    """LSTM policy over cells. ``sample`` draws architectures; ``evaluate`` recomputes log-probabilities and
    entropies of given decisions (teacher forcing), which PPO needs for its probability ratios."""

    def __init__(self, num_blocks: int = 5, hidden: int = 100, init_range: float = 0.1):
        super().__init__()
        self.num_blocks, self.hidden = num_blocks, hidden
        self.space = SearchSpace(num_blocks)
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.heads = nn.ModuleList(nn.Linear(hidden, s.num_valid) for s in self.space.slots)
        self.embeds = nn.ModuleList(nn.Embedding(s.num_valid, hidden) for s in self.space.slots)
        for p in self.parameters():
            nn.init.uniform_(p, -init_range, init_range)

    @property
    def num_decisions(self) -> int:
        return self.space.num_decisions

    def _run(self, n: int, actions: torch.Tensor | None, generator: torch.Generator | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dev = self.start.device
        h = torch.zeros(n, self.hidden, device=dev)
        c = torch.zeros(n, self.hidden, device=dev)
        x = self.start.expand(n, -1)
        chosen, logps, ents = [], [], []
        for t, slot in enumerate(self.space.slots):
            h, c = self.lstm(x, (h, c))
            logp_all = F.log_softmax(self.heads[t](h), dim=-1)
            if actions is None:
                a = torch.multinomial(logp_all.exp(), 1, generator=generator).squeeze(1)
            else:
                a = actions[:, t]
                if int(a.min()) < 0 or int(a.max()) >= slot.num_valid:
                    raise ValueError(f"decision {t} ({slot.kind} of cell {slot.cell} block {slot.block}) "
                                     f"must be in 0..{slot.num_valid - 1}")
            chosen.append(a)
            logps.append(logp_all.gather(1, a[:, None]).squeeze(1))
            ents.append(-(logp_all.exp() * logp_all).sum(-1))
            x = self.embeds[t](a)
        return torch.stack(chosen, 1), torch.stack(logps, 1).sum(1), torch.stack(ents, 1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` architectures: (decisions LongTensor [n, 2*5B], log-prob [n], entropy [n])."""
        return self._run(n, None, generator)

    def evaluate(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability [n] and entropy [n] of given decisions (differentiable)."""
        if actions.ndim != 2 or actions.shape[1] != self.num_decisions:
            raise ValueError(f"actions must be [n, {self.num_decisions}], got {tuple(actions.shape)}")
        _, logp, ent = self._run(actions.shape[0], actions.long(), None)
        return logp, ent

    def genotypes(self, actions: torch.Tensor) -> list[Genotype]:
        return [self.space.genotype(row.tolist()) for row in actions]

