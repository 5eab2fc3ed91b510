"""``SEARCH.STRATEGY oneshot``: the weight-sharing (ENAS-style) search, run by the search engine
(:class:`search.runner.SearchRunner`) like every strategy. The strategy owns the supernet
(:mod:`search.supernet_trainer`) and the controller, trained by ``ONESHOT.POLICY`` on rewards scored with the
supernet's shared weights, and supplies the evaluator that scores its cells in the driver process (the
supernet is not sent to workers: the runner uses the inline backend).

Each epoch alternates two phases:

1. supernet: ``ONESHOT.WEIGHT_STEPS`` SGD steps on the training split, each on one cell sampled from the
   controller (cross-entropy, Nesterov, cosine LR over all steps), run before the next batch is drawn;
2. controller: ``ONESHOT.CONTROLLER_STEPS`` policy updates (REINFORCE or PPO), each on ``SEARCH.BATCH_SIZE``
   sampled cells scored on one held-out minibatch each (drawn with the batch).

Then ``ONESHOT.FINAL_SAMPLES`` cells are sampled from the trained controller and scored on the whole held-out
split, journaled as ``oneshot_derive`` in one batch; the best of them is ``best_genotype.json``. One seeded
generator drives every random choice (the runner's per-child generator is not used), so a resumed search redoes
the steps since ``oneshot_state.pth`` (supernet, controller, optimizers, generators, position) identically.

Distributed (``torchrun``): the supernet phase runs as DDP; every process draws the same cells; rank 0 scores
them through the journal and broadcasts the rewards in :meth:`OneShot.update`; the others follow without a
journal (:meth:`OneShot.follow`) and write nothing.

The strategy carries its config node ``ONESHOT`` (:meth:`OneShot.add_config`), its checks
(:meth:`OneShot.check_config`), the settings that enter the journal's identity (:meth:`OneShot.identity`) and
the files it owns in the output folder (:attr:`OneShot.owned_files`)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from fvcore.common.config import CfgNode
from fvcore.common.config import CfgNode as CN

from nasnet_det.engine.devices import require_cuda
from nasnet_det.engine.distributed import barrier, init_distributed
from nasnet_det.engine.rng import capture_rng_state, restore_rng_state
from nasnet_det.space import Genotype
from nasnet_det.utils.errors import BadInputError, is_int, require_int
from nasnet_det.utils.io import atomic_torch_save
from search.journal import Evaluation, load_state
from search.objective import Objective
from search.reward import ChildData, build_child, load_search_data
from search.strategies.base import STRATEGIES, Proposal
from search.strategies.controller_policy import ControllerPolicy
from search.supernet_trainer import SupernetTrainer
from search.workers import Evaluator

log = logging.getLogger(__name__)
SEARCH_NAME = "oneshot"          # journal strategy of the cells scored while training the controller
DERIVE_NAME = "oneshot_derive"   # journal strategy of the final samples (scored on the whole held-out split)
STATE_NAME = "oneshot_state.pth"

# keys added after journals existed: left out of a search's identity at these values, so those journals resume
NEW_KEY_DEFAULTS = {"BN_RECALIBRATION_BATCHES": 0, "WARMUP_EPOCHS": 0, "FAIRNESS": False}
# keys that do not change what the one-shot search computes
NOT_IDENTITY = ("DEVICE", "CHECKPOINT_EVERY", "FEW_SHOT_SPLITS")


@STRATEGIES.register()
class OneShot(ControllerPolicy):
    """The controller and the supernet of the weight-sharing search. ``data`` replaces ``cfg.DATA`` (tests)."""

    name: ClassVar[str] = "oneshot"
    config_node: ClassVar[str | None] = "ONESHOT"
    #: the search's checkpoint: supernet, controller, optimizers, generators and position
    owned_files: ClassVar[tuple[str, ...]] = (STATE_NAME,)
    weight_sharing = True
    own_checkpoint = True
    journal_names: ClassVar[tuple[str, ...]] = (SEARCH_NAME, DERIVE_NAME)
    # best_genotype.json / top_k.json come from the final samples only: they are scored on the whole held-out
    # split, the controller-phase scores on one minibatch each (a max over those is mostly noise)
    final_names: ClassVar[tuple[str, ...]] = (DERIVE_NAME,)

    def __init__(self, cfg: CfgNode, data: ChildData | None = None, progress: bool = False):
        self.cfg, o = cfg, cfg.ONESHOT
        dev = str(o.DEVICE)
        if dev.startswith("cuda"):
            require_cuda("ONESHOT.DEVICE", dev)  # one line saying why (torch's build, the driver)
        info = init_distributed("cpu" if dev == "cpu" else "auto", key="ONESHOT.DEVICE")  # torchrun's group
        self.rank, self.world = info.rank, info.world_size
        self.device = info.device if dev in ("auto", "cpu") or self.world > 1 else torch.device(dev)
        limit = int(cfg.SEARCH.MAX_EVALS_THIS_RUN)
        if self.world > 1 and limit:  # the followers have no journal to count evaluations by: they would train on
            raise BadInputError(f"SEARCH.MAX_EVALS_THIS_RUN={limit}: expected 0 with {self.world} processes "
                                "(a distributed one-shot search runs to its end; stop it with a kill, rerun resumes)")
        if self.world > 1 and o.BATCH_SIZE % self.world:
            raise ValueError(f"ONESHOT.BATCH_SIZE={o.BATCH_SIZE}: expected a multiple of the "
                             f"{self.world} processes (each trains on an equal share)")
        data = data if data is not None else load_search_data(cfg)
        self.supernet_trainer = SupernetTrainer(cfg, data, self.device, int(cfg.SEARCH.SEED),
                                                recalibration=int(o.BN_RECALIBRATION_BATCHES),
                                                rank=self.rank, world=self.world)
        self.x_val, self.y_val = self.supernet_trainer.x_val, self.supernet_trainer.y_val
        self.weight_steps = self.supernet_trainer.steps_per_epoch
        self.supernet = self.supernet_trainer.new_supernet()  # (torch's generator seeded with SEARCH.SEED first)
        super().__init__(cfg, str(o.POLICY))  # the controller, drawn after the supernet
        self.w_opt = self.supernet_trainer.optimizer(self.supernet)
        self.gen = self.supernet_trainer.gen  # every random choice of the search
        self.objective = Objective(cfg)
        self.objective.prepare(progress)
        self.pos = {"epoch": 0, "phase": "weights", "step": 0}
        self.model: torch.nn.Module = self.supernet  # wrapped in DDP when distributed
        self.out: Path | None = None
        self.batch: dict[str, Any] | None = None  # the batch drawn and not yet learnt from
        self.journaled: dict[str, list[Evaluation]] = {}

    # ---- the engine's hooks ------------------------------------------------------------------------------
    @classmethod
    def budget(cls, cfg: CN) -> int:
        o = cfg.ONESHOT
        return (o.EPOCHS - o.WARMUP_EPOCHS) * o.CONTROLLER_STEPS * cfg.SEARCH.BATCH_SIZE + o.FINAL_SAMPLES

    @property
    def controller_updates(self) -> int:
        o = self.cfg.ONESHOT
        return (o.EPOCHS - o.WARMUP_EPOCHS) * o.CONTROLLER_STEPS

    def updates_due(self, finished: int) -> int:
        """Batches complete after ``finished`` cells: the controller's, then the final samples' one."""
        bs, ctrl = self.cfg.SEARCH.BATCH_SIZE, self.controller_updates * self.cfg.SEARCH.BATCH_SIZE
        if finished <= ctrl:
            return finished // bs
        return self.controller_updates + (finished - ctrl) // self.cfg.ONESHOT.FINAL_SAMPLES

    def update_batch(self, name: str, step: int) -> tuple[str, int]:
        """(journal strategy, batch) of update ``step``: the controller's batches, then the final samples."""
        return (SEARCH_NAME, step) if step < self.controller_updates else (DERIVE_NAME, 0)

    def batch_size_of(self, journal_name: str) -> int:
        return self.cfg.ONESHOT.FINAL_SAMPLES if journal_name == DERIVE_NAME else self.batch_size

    def evaluator(self) -> Evaluator:
        return self.score_next

    def attach(self, output_dir: Path, rows: list[Evaluation]) -> None:
        """Load ``oneshot_state.pth`` (when there is one) and remember the journaled rows, so an interrupted
        batch is completed with the rewards already journaled."""
        self.out = Path(output_dir)
        barrier()  # the other processes read the checkpoint after the fresh start removed it
        if self._load():
            log.info("resuming the one-shot search at %s", self.pos)
        self._wrap_ddp()
        self.journaled = {name: [r for r in rows if r.strategy == name] for name in self.journal_names}
        if any(r.status == "pending" for r in rows):  # the batch a kill interrupted: redrawn (and checked) now
            self._draw_batch()

    def updates_done(self) -> int:
        """Controller updates (and the final batch) the checkpoint holds."""
        o, p = self.cfg.ONESHOT, self.pos
        if p["phase"] in ("derive", "done"):
            return self.controller_updates + (p["phase"] == "done")
        return self.controller_epochs_before(p["epoch"]) * o.CONTROLLER_STEPS + (
            p["step"] if p["phase"] == "controller" else 0)

    def propose(self, n: int, generator: torch.Generator, sampled: int, step: int) -> Proposal | None:
        """The next whole batch, drawn from the search's own generator (``n`` and ``generator`` are ignored:
        the runner's per-child generator would change the results), after any supernet phase due."""
        if self.batch is not None:  # handed out already: the engine waits for its rewards
            return None
        b = self._draw_batch()
        if b is None:
            return None
        if b["rows"]:  # journaled before an interruption: the engine resubmits its pending cells
            return None
        return Proposal(b["name"], b["first"], b["policy"], b["actions"], b["logp"])

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        actions, logp = super().sample(n, self.gen)
        return actions, logp

    def score_next(self, genotype: Genotype, seed: int) -> dict[str, Any]:  # noqa: ARG002 (the evaluator's signature)
        """Score the batch's next unscored cell (the inline backend runs them in journal order)."""
        if self.batch is None:
            self._draw_batch()
        b = self.batch
        slot = b["todo"].pop(0)
        if b["genotypes"][slot] != genotype:
            raise ValueError(f"cell {slot} of the one-shot batch differs from the journal's; the checkpoint and "
                             "the journal disagree (start over with --fresh)")
        scored = self.objective.apply({"reward": self.score(genotype, *b["data"][slot])}, genotype)
        if b["name"] == DERIVE_NAME:
            scored["params"] = _child_params(genotype, self.cfg)
        return scored

    def update(self, decisions: torch.Tensor, logprobs: torch.Tensor | None, rewards: torch.Tensor
               ) -> dict[str, float]:
        """Learn from the finished batch (regenerating it first when the engine replays a journaled one, so
        the generator stays in step), advance the position and write the checkpoint."""
        if self.batch is None:
            self._draw_batch()
        b, self.batch = self.batch, None
        if len(rewards) != len(b["genotypes"]):
            raise RuntimeError(f"{len(b['genotypes']) - len(rewards)} cell(s) of batch {b['policy']} of {b['name']} "
                               "could not be scored (the journal's error column says why)")
        rewards = self._broadcast(rewards)
        if b["name"] == DERIVE_NAME:
            self.pos.update(phase="done", step=0)
            self._save()
            return {}
        stats = super().update(b["actions"], b["logp"], rewards)
        stats["reward"] = float(rewards.mean())
        p = self.pos
        p["step"] += 1
        self._save()
        if p["step"] >= self.cfg.ONESHOT.CONTROLLER_STEPS:
            self._end_epoch()
        return stats

    @classmethod
    def build(cls, cfg: CfgNode, data: ChildData | None = None, progress: bool = False) -> OneShot:
        return cls(cfg, data=data, progress=progress)  # the supernet trains on the images here

    @classmethod
    def follows(cls) -> bool:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0  # torchrun's

    def follow(self, output_dir: Path) -> None:
        """Ranks > 0 of a distributed search: the same steps without the journal, with rank 0's rewards."""
        self.attach(output_dir, [])
        while self._draw_batch() is not None:
            b = self.batch
            rewards = [float(self.objective.apply({"reward": self.score(g, *b["data"][i])}, g)["reward"])
                       for i, g in enumerate(b["genotypes"])]
            self.update(b["actions"], b["logp"], torch.tensor(rewards))

    def summary(self) -> dict[str, Any]:
        return {"position": dict(self.pos), "weight_steps_per_epoch": self.weight_steps,
                "policy": str(self.cfg.ONESHOT.POLICY), "device": str(self.device),
                "supernet_params": sum(q.numel() for q in self.supernet.parameters())}

    def score(self, genotype: Genotype, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> float:
        """Accuracy of ``genotype`` with the shared weights (default: on the whole held-out split):
        batch-statistics BN, as ENAS, or with ``ONESHOT.BN_RECALIBRATION_BATCHES`` > 0 running statistics
        recomputed for this cell first."""
        x, y = (self.x_val, self.y_val) if x is None else (x, y)
        return self.supernet_trainer.score(self.supernet, genotype, x, y)

    # ---- the phases --------------------------------------------------------------------------------------
    def controller_epochs_before(self, epoch: int) -> int:
        """Epochs with a controller phase before ``epoch`` (the warm-up epochs have none)."""
        return max(0, epoch - self.cfg.ONESHOT.WARMUP_EPOCHS)

    def weight_step(self) -> float:
        """One supernet SGD step on one sampled cell; returns the loss."""
        o, t = self.cfg.ONESHOT, self.supernet_trainer
        if self.pos["epoch"] < o.WARMUP_EPOCHS:  # SPOS warm-up: uniform paths (FairNAS: 13 fair ones)
            genotypes = [self.space.genotype(a) for a in t.draw_paths(o.FAIRNESS).tolist()]
        else:
            actions, _ = self.sample(1, self.gen)
            genotypes = [self.space.genotype(a) for a in actions.tolist()]
        done = self.pos["epoch"] * self.weight_steps + self.pos["step"]
        return t.update(self.supernet, self.w_opt, genotypes, done, model=self.model)

    def _end_epoch(self) -> None:
        p = self.pos
        p.update(epoch=p["epoch"] + 1, step=0, phase="weights" if p["epoch"] + 1 < self.cfg.ONESHOT.EPOCHS
                 else "derive")
        self._save()

    def _draw_batch(self) -> dict[str, Any] | None:
        """Run the supernet phases due, then draw the next batch (cells and their held-out minibatches); None
        when the search is done."""
        o, p = self.cfg.ONESHOT, self.pos
        while p["phase"] == "weights":
            while p["step"] < self.weight_steps:
                self.weight_step()
                p["step"] += 1
                if p["step"] % o.CHECKPOINT_EVERY == 0 and p["step"] < self.weight_steps:
                    self._save()
            p.update(phase="controller", step=0)
            self._save()
            if p["epoch"] < o.WARMUP_EPOCHS:  # no controller phase in the warm-up
                self._end_epoch()
        if p["phase"] == "done":
            return None
        derive = p["phase"] == "derive"
        n = o.FINAL_SAMPLES if derive else self.cfg.SEARCH.BATCH_SIZE
        batch = self.controller_updates if derive else (
            self.controller_epochs_before(p["epoch"]) * o.CONTROLLER_STEPS + p["step"])
        actions, logp = self.sample(n, self.gen)
        data = []
        for _ in range(n):
            if derive:
                data.append((self.x_val, self.y_val))
            else:
                idx = torch.randperm(len(self.x_val), generator=self.gen)[:o.REWARD_BATCH_SIZE].to(self.device)
                data.append((self.x_val[idx], self.y_val[idx]))
        name = DERIVE_NAME if derive else SEARCH_NAME
        first = 0 if derive else batch * n
        rows = self.journaled.get(name, [])[first:first + n]
        if rows and [r.decisions for r in rows] != actions.tolist():
            raise ValueError(f"{self.out}: batch {batch} of {name} holds other cells than this run samples; the "
                             "checkpoint and the journal disagree (start over with --fresh)")
        genotypes = [self.space.genotype(a) for a in actions.tolist()]
        self.batch = {"name": name, "first": first, "policy": batch, "actions": actions,
                      "logp": None if derive else logp, "genotypes": genotypes, "data": data, "rows": rows,
                      "todo": [i for i in range(n) if not rows or rows[i].status == "pending"]}
        return self.batch

    def _broadcast(self, rewards: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return rewards
        t = rewards.to(dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)  # every process updates its controller copy with rank 0's rewards
        return torch.tensor(t.tolist())

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _wrap_ddp(self) -> None:
        if self.world > 1 and self.model is self.supernet:
            from torch.nn.parallel import DistributedDataParallel

            # Every process runs the same path, so the unused ops are unused everywhere; DDP must still be
            # told that some parameters get no gradient.
            self.model = DistributedDataParallel(
                self.supernet, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)

    def _save(self) -> None:
        if self.rank != 0 or self.out is None:
            return
        atomic_torch_save({"position": dict(self.pos), "supernet": self.supernet.state_dict(),
                           "w_opt": self.w_opt.state_dict(), **self.state_dict(),
                           "gen": self.gen.get_state(), "rng": capture_rng_state()},
                          self.out / STATE_NAME)

    def restore(self, output_dir: Path) -> bool:
        """Load ``output_dir``'s checkpoint (for evaluating a finished search, e.g. bench/oneshot_eval.py);
        False when there is none."""
        self.out = Path(output_dir)
        return self._load()

    def _load(self) -> bool:
        path = self.out / STATE_NAME
        try:
            state = load_state(path)
        except ValueError:  # load_state's advice (replay the journal) is the regular search's, not ours
            raise ValueError(f"{path} cannot be read (a foreign or damaged file); delete it to restart the "
                             "one-shot search from its beginning (the journal's cells are reused), or rerun "
                             "with --fresh") from None
        if state is None:
            return False
        self.pos = dict(state["position"])
        self.supernet.load_state_dict(state["supernet"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.load_state_dict(state)
        self.gen.set_state(state["gen"])
        if "rng" in state:
            restore_rng_state(state["rng"])
        else:  # a state file from before the engine's RNG capture: torch's generators only
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        return True

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        """``ONESHOT.*``: the supernet's training, the controller's phase and the final derivation. The network
        size (N, f), image size and augmentation are the child networks' settings, so the found cell is
        searched at the size it is later trained at."""
        o = cfg.ONESHOT = CN()
        o.POLICY = "reinforce"         # controller update: "reinforce" (ENAS) or "ppo" (search/policy.py)
        o.EPOCHS = 10                  # alternations: WEIGHT_STEPS supernet steps, then CONTROLLER_STEPS updates
        o.WEIGHT_STEPS = 0             # supernet SGD steps per epoch (0: one pass over the training split)
        o.BATCH_SIZE = 64              # supernet training minibatch (ENAS: 160)
        o.LR = 0.05                    # cosine over all supernet steps, LR -> LR_MIN (ENAS: 0.05 -> 5e-4)
        o.LR_MIN = 0.0005
        o.MOMENTUM = 0.9               # Nesterov (ENAS)
        o.WEIGHT_DECAY = 1e-4          # ENAS: 1e-4
        o.GRAD_CLIP = 5.0              # global norm; 0 disables
        o.CONTROLLER_STEPS = 10        # policy updates per epoch, each on SEARCH.BATCH_SIZE sampled cells
        o.REWARD_BATCH_SIZE = 128      # held-out images per scored cell (one shuffled minibatch, ENAS: 160)
        o.FINAL_SAMPLES = 20           # cells sampled from the trained controller, scored on the whole held-out split
        o.CHECKPOINT_EVERY = 50        # supernet steps between checkpoints (every controller update saves one)
        o.DEVICE = "auto"              # auto: cuda when available, else cpu
        # Known fixes of weight-sharing rankings (the supernet trainer's options; the supernet estimators of
        # search/estimators/supernet.py use them too): BatchNorm statistics recomputed on this many training
        # minibatches (ONESHOT.BATCH_SIZE images each) before each cell is scored (0: batch statistics, as ENAS)
        o.BN_RECALIBRATION_BATCHES = 0
        # SPOS warm-up: the first WARMUP_EPOCHS of the EPOCHS train the supernet on uniformly drawn single paths,
        # with no controller phase, so the controller starts from weights that no path was favoured in
        o.WARMUP_EPOCHS = 0
        o.FAIRNESS = False             # warm-up updates train 13 paths, each op of every slot once (FairNAS)
        o.FEW_SHOT_SPLITS = 4          # sub-supernets of the fewshot estimators (split on the first op decision)

    @classmethod
    def check_config(cls, cfg: CN) -> None:
        """``ValueError`` naming the key for a bad ``ONESHOT`` value."""
        o = cfg.ONESHOT

        def need(ok: bool, key: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"ONESHOT.{key}={o[key]!r}: expected {expected}")

        need(str(o.POLICY) in ("reinforce", "ppo"), "POLICY", "'reinforce' or 'ppo'")
        for key in ("EPOCHS", "BATCH_SIZE", "CONTROLLER_STEPS", "REWARD_BATCH_SIZE", "FINAL_SAMPLES",
                    "CHECKPOINT_EVERY", "FEW_SHOT_SPLITS"):
            require_int(o[key], f"ONESHOT.{key}", 1)
        # require_int's rule with messages that explain 0
        need(is_int(o.WEIGHT_STEPS, 0), "WEIGHT_STEPS",
             "an integer >= 0 (0: one pass over the training split per epoch)")
        need(is_int(o.BN_RECALIBRATION_BATCHES, 0), "BN_RECALIBRATION_BATCHES",
             "an integer >= 0 (0: score with the batch's statistics)")
        need(is_int(o.WARMUP_EPOCHS, 0) and o.WARMUP_EPOCHS < o.EPOCHS, "WARMUP_EPOCHS",
             f"an integer >= 0 and below ONESHOT.EPOCHS ({o.EPOCHS}): the controller needs at least one epoch")
        need(isinstance(o.FAIRNESS, bool), "FAIRNESS", "true or false")
        for key in ("LR", "LR_MIN", "MOMENTUM", "WEIGHT_DECAY", "GRAD_CLIP"):
            v = o[key]
            need(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, key, "a finite number >= 0")
        need(o.LR > 0, "LR", "a number > 0")
        need(o.LR_MIN <= o.LR, "LR_MIN", f"at most ONESHOT.LR ({o.LR})")
        need(str(o.DEVICE) == "auto" or str(o.DEVICE).startswith(("cpu", "cuda")), "DEVICE",
             "'auto', 'cpu' or 'cuda[:N]'")

    @classmethod
    def identity(cls, cfg: CN) -> dict[str, Any]:
        """The journal identity's ``SEARCH.STRATEGY`` (a weight-sharing journal is no other strategy's) and
        ``ONESHOT`` entries: the node without the keys that do not change what the search computes, and without
        keys added later while they keep their defaults (so older journals resume)."""
        node = {k: v for k, v in cfg.ONESHOT.items()
                if k not in NOT_IDENTITY and not (k in NEW_KEY_DEFAULTS and v == NEW_KEY_DEFAULTS[k])}
        return {"SEARCH.STRATEGY": cls.name, "ONESHOT": node}


def _child_params(genotype: Genotype, cfg: CfgNode) -> int | None:
    """Parameters of the stand-alone child network of ``genotype`` (``MODEL.NASNET``, for top_k.json)."""
    try:
        model = build_child(genotype, cfg.MODEL.NASNET)
    except ValueError:
        return None
    return sum(q.numel() for q in model.parameters())
