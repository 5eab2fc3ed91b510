"""``SEARCH.STRATEGY oneshot``: the controller of the weight-sharing search (:mod:`search.oneshot`), trained
by ``ONESHOT.POLICY`` on rewards scored with the supernet's shared weights (:mod:`search.supernet_trainer`).

The strategy carries its config node ``ONESHOT`` (:meth:`OneShot.add_config`), its checks
(:meth:`OneShot.check_config`), the settings that enter the journal's identity (:meth:`OneShot.identity`) and
the files it owns in the output folder (:attr:`OneShot.owned_files`)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from fvcore.common.config import CfgNode
from fvcore.common.config import CfgNode as CN

from search.strategies.base import STRATEGIES
from search.strategies.controller_policy import ControllerPolicy

# keys added after journals existed: left out of a search's identity at these values, so those journals resume
NEW_KEY_DEFAULTS = {"BN_RECALIBRATION_BATCHES": 0, "WARMUP_EPOCHS": 0, "FAIRNESS": False}
# keys that do not change what the one-shot search computes
NOT_IDENTITY = ("DEVICE", "CHECKPOINT_EVERY", "FEW_SHOT_SPLITS")


@STRATEGIES.register()
class OneShot(ControllerPolicy):
    name: ClassVar[str] = "oneshot"
    config_node: ClassVar[str | None] = "ONESHOT"
    #: the search's checkpoint: supernet, controller, optimizers, generators and position
    owned_files: ClassVar[tuple[str, ...]] = ("oneshot_state.pth",)
    weight_sharing = True

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg, str(cfg.ONESHOT.POLICY))

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
            need(isinstance(o[key], int) and not isinstance(o[key], bool) and o[key] >= 1, key, "an integer >= 1")
        need(isinstance(o.WEIGHT_STEPS, int) and o.WEIGHT_STEPS >= 0, "WEIGHT_STEPS",
             "an integer >= 0 (0: one pass over the training split per epoch)")
        need(isinstance(o.BN_RECALIBRATION_BATCHES, int) and o.BN_RECALIBRATION_BATCHES >= 0,
             "BN_RECALIBRATION_BATCHES", "an integer >= 0 (0: score with the batch's statistics)")
        need(isinstance(o.WARMUP_EPOCHS, int) and 0 <= o.WARMUP_EPOCHS < o.EPOCHS, "WARMUP_EPOCHS",
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
