"""The search config's own nodes, which every search has (defaults and checks), and the rules of its journal
identity. :mod:`search.config` adds the nodes of the plug-ins (strategies, estimators) to these; the plug-ins
and the child training import from here, so that :mod:`search.config` may import them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fvcore.common.config import CfgNode as CN

from nasnet_det import config as shared_config
from nasnet_det.models.config import add_nasnet_model_config, check_nasnet_node
from nasnet_det.utils.errors import require
from nasnet_det.utils.mapping import lookup


def base_cfg_defaults() -> CN:
    """The nodes every search has, without the plug-ins' own (search.config adds those). Paper values are noted
    where they differ from the small defaults."""
    c = CN()
    c.OUTPUT_DIR = "output/search"

    c.SEARCH = CN()
    # A strategy registered in search/strategies (one file each: "ppo", "reinforce", "random", "zero_cost",
    # "predictor", "oneshot", ...), or several comma-separated (e.g. "ppo,random") run concurrently, sharing the
    # workers, with the same budget each, for comparison ("oneshot", the weight-sharing search, runs alone).
    c.SEARCH.STRATEGY = "ppo"
    c.SEARCH.BUDGET = 100            # child models per strategy (paper: 20,000)
    c.SEARCH.BATCH_SIZE = 20         # architectures per policy update (paper: 20)
    c.SEARCH.NUM_BLOCKS = 5          # B (paper: 5)
    c.SEARCH.SEED = 0
    c.SEARCH.MAX_EVALS_THIS_RUN = 0  # stop after this many finished evaluations in this run (0: no limit)
    c.SEARCH.TOP_K = 5               # genotypes kept in top_k.json
    # A journal.sqlite that is not a readable journal (garbage, truncated): "stop" says so and stops; "restart"
    # moves it (and the checkpoints that went with it) aside to <name>.damaged-<time> and searches again.
    c.SEARCH.DAMAGED_JOURNAL = "stop"
    # What a child's reward is: "accuracy" (held-out accuracy, the paper's) or "latency" (MnasNet's
    # ACC x (LAT / TARGET)^w, LAT the cell's detection backbone as SEARCH.LATENCY says; search/objective.py).
    c.SEARCH.OBJECTIVE = "accuracy"
    c.SEARCH.LATENCY = CN()
    c.SEARCH.LATENCY.ESTIMATOR = "lut"     # measure | lut | flops (nasnet_det/latency.py)
    c.SEARCH.LATENCY.TARGET_MS = 100.0     # T of the measure and lut estimators
    c.SEARCH.LATENCY.TARGET_MULT_ADDS_M = 5000.0  # T of the flops estimator (million mult-adds)
    c.SEARCH.LATENCY.CONSTRAINT = "soft"   # soft: w = WEIGHT always; hard: w = 0 within T, -1 beyond (MnasNet)
    c.SEARCH.LATENCY.WEIGHT = -0.07        # MnasNet's w (soft constraint)
    c.SEARCH.LATENCY.INPUT_SIZE = 600      # detection input (px, square; rounded up to the backbone's divisor)
    c.SEARCH.LATENCY.DEVICE = "cpu"        # cpu | cuda: where the backbone is timed
    c.SEARCH.LATENCY.BACKBONE = "FPN"      # FPN | C4 (nasnet_det/detection/backbone.py)
    c.SEARCH.LATENCY.NUM_CELLS = 4         # N of the detection backbone (NASNet-A mobile: 4 @ f 44, F 1056)
    c.SEARCH.LATENCY.FILTERS = 44          # f of the detection backbone (the same for every cell)
    c.SEARCH.LATENCY.WARMUP = 2            # untimed runs before timing (measure; each lut entry)
    c.SEARCH.LATENCY.REPEATS = 5           # timed runs: their median counts
    c.SEARCH.LATENCY.THREADS = 1           # torch threads while timing on CPU (fixed: comparable numbers)
    c.SEARCH.LATENCY.CACHE_DIR = "output/latency_lut"  # where lut tables are kept (one per device/size/N@f/torch)
    # Record every child's latency, backbone params and mult-adds with the accuracy objective too (the
    # latency objective always does): a Pareto front of an accuracy search.
    c.SEARCH.LATENCY.RECORD = False

    c.CONTROLLER = CN()
    c.CONTROLLER.HIDDEN = 100        # paper: one-layer LSTM, 100 units
    c.CONTROLLER.INIT_RANGE = 0.1    # paper: uniform [-0.1, 0.1]
    c.CONTROLLER.LR = 0.00035        # paper: 0.00035 (Adam)
    c.CONTROLLER.ENTROPY_WEIGHT = 1e-5  # paper: 1e-5
    c.CONTROLLER.BASELINE_DECAY = 0.95  # paper: exponential moving average, weight 0.95
    c.CONTROLLER.PPO_EPOCHS = 4      # optimisation passes over each batch
    c.CONTROLLER.PPO_CLIP = 0.2
    c.CONTROLLER.GRAD_CLIP = 5.0     # 0 disables
    # Divide advantages by the batch's reward std: makes the step size independent of the reward scale
    # (accuracies differ by ~1e-2 early in a search); off reproduces the plain paper update.
    c.CONTROLLER.NORMALIZE_ADVANTAGE = True
    # Reward given to a child that failed (diverged, out of memory, worker died) in the policy update, so
    # the controller learns to avoid such cells; 0.0 is "no better than an untrained network". None leaves
    # failed children out of the update (they still count against the budget).
    c.CONTROLLER.FAILED_REWARD = 0.0

    # The children's network (any genotype the controller samples): MODEL.NASNET, sized by f. Default preset
    # search_child_tiny (N=1 @ f=8); the paper's children are MODEL.NASNET.PRESET search_child_paper (2 @ 32).
    add_nasnet_model_config(c, "search_child_tiny")

    # How each child is trained.
    c.CHILD = CN()
    c.CHILD.EPOCHS = 1               # paper: 20
    c.CHILD.MAX_STEPS = 0            # cap on SGD steps (0: EPOCHS full passes)
    c.CHILD.BATCH_SIZE = 32
    c.CHILD.EVAL_BATCH_SIZE = 256
    c.CHILD.LR = 0.05                # cosine-decayed to 0
    c.CHILD.MOMENTUM = 0.9
    c.CHILD.WEIGHT_DECAY = 5e-4
    c.CHILD.AUGMENT = True           # pad-4 random crop + horizontal flip
    c.CHILD.IMAGE_SIZE = 32          # < 32 downsamples the images (cheap smoke runs)
    c.CHILD.DEVICE = "auto"          # auto: the worker's GPU when there is one, else CPU

    c.DATA = CN()
    c.DATA.SOURCE = "folder:datasets/cifar10"  # or "npz:PATH", "synthetic:N"
    c.DATA.VAL_SIZE = 5000           # held out of the training images; the reward is accuracy on them
    c.DATA.TRAIN_LIMIT = 0           # use at most this many training images (0: all)
    c.DATA.SPLIT_SEED = 0

    c.WORKERS = CN()
    c.WORKERS.BACKEND = "local"      # local (process pool) | ray | inline (same process, for debugging)
    c.WORKERS.NUM_WORKERS = 0        # 0: one per GPU, or 2 CPU workers without CUDA
    c.WORKERS.RAY_ADDRESS = ""       # "" starts a local Ray; "auto" or "ray://host:10001" joins a cluster
    # Re-runs of a child whose worker process died (Ray: task retries; local: re-runs of a child that
    # killed its worker while running alone) before it is recorded as failed.
    c.WORKERS.MAX_RETRIES = 2
    c.WORKERS.THREADS_PER_WORKER = 1  # torch threads in each CPU worker
    # Children kept in flight on Ray (0: one per GPU of the cluster, re-read as it grows or shrinks, or one
    # per CPU without GPUs, plus one queued for the next worker to free). The local backend keeps each of
    # its NUM_WORKERS busy, with one child queued; MAX_IN_FLIGHT > 0 caps that too.
    c.WORKERS.MAX_IN_FLIGHT = 0
    return c


# Keys that define what a journal's evaluations mean: resuming with different values would mix
# incomparable results, so the runner refuses it.
IDENTITY_KEYS = ("SEARCH.BATCH_SIZE", "SEARCH.NUM_BLOCKS", "SEARCH.SEED", "SEARCH.OBJECTIVE", "CONTROLLER",
                 "MODEL.NASNET", "CHILD", "DATA")
# SEARCH.LATENCY keys that do not change a reward (where tables are kept, whether an accuracy search records
# latencies); with the accuracy objective the node is no part of the identity at all.
LATENCY_NOT_IDENTITY = ("CACHE_DIR", "RECORD")
# MODEL.NASNET keys that do not decide the children: a preset's name (the values beside it do) and the memory
# layout (same results to float rounding), so a search resumes whatever they are (and journals from before a
# key existed resume too).
NOT_IDENTITY = ("PRESET", "CHANNELS_LAST")


def own_node_identity(cfg: CN, plugin: type) -> dict[str, Any]:
    """A plug-in's (strategy's or estimator's) own config node ``plugin.config_node`` as its identity entry,
    ``{path: plain dict}``; {} for a plug-in without one."""
    path = plugin.config_node
    if path is None:
        return {}
    found, node = lookup(cfg, path)
    if not found:
        raise KeyError(f"plug-in {plugin.name!r} ({plugin.__name__}): its config node {path} is not in the config")
    return {path: plain_dict(node)}


def plain_dict(node: Any) -> Any:
    """A config node as nested plain dicts (a leaf value as it is), in the node's key order."""
    if isinstance(node, CN):
        return {k: plain_dict(v) for k, v in node.items()}
    return node


def check_child_settings(child: Mapping[str, Any]) -> None:
    """Validate the ``CHILD`` settings once, before any child is trained (a bad value would otherwise
    fail every child of the search)."""
    for old, new in shared_config.RENAMED_KEYS.items():
        section, _, name = old.partition(".")
        if section == "CHILD" and name in child:
            raise ValueError(f"{old} was renamed to {new}")
    for name in ("EPOCHS", "BATCH_SIZE", "EVAL_BATCH_SIZE"):
        v = child.get(name)
        require(isinstance(v, int) and v >= 1, f"CHILD.{name}", v, "an integer >= 1")
    v = child.get("MAX_STEPS", 0)
    require(isinstance(v, int) and v >= 0, "CHILD.MAX_STEPS", v, "an integer >= 0 (0: no cap)")
    v = child.get("IMAGE_SIZE", 32)
    require(isinstance(v, int) and v >= 8, "CHILD.IMAGE_SIZE", v, "an integer >= 8 (pixels)")
    for name in ("LR", "MOMENTUM", "WEIGHT_DECAY"):
        v = child.get(name)
        require(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, f"CHILD.{name}", v,
                 "a finite number >= 0")
    require(child.get("LR", 0) > 0, "CHILD.LR", child.get("LR"), "a number > 0")


def check_base_cfg(cfg: CN) -> None:
    """Validate the values of the nodes every search has; ``ValueError`` names the key."""
    s, c, d, w = cfg.SEARCH, cfg.CONTROLLER, cfg.DATA, cfg.WORKERS
    for key, v in (("SEARCH.BUDGET", s.BUDGET), ("SEARCH.BATCH_SIZE", s.BATCH_SIZE),
                   ("SEARCH.NUM_BLOCKS", s.NUM_BLOCKS), ("SEARCH.TOP_K", s.TOP_K),
                   ("CONTROLLER.HIDDEN", c.HIDDEN), ("CONTROLLER.PPO_EPOCHS", c.PPO_EPOCHS)):
        require(isinstance(v, int) and v >= 1, key, v, "an integer >= 1")
    for key, v in (("SEARCH.MAX_EVALS_THIS_RUN", s.MAX_EVALS_THIS_RUN), ("DATA.TRAIN_LIMIT", d.TRAIN_LIMIT),
                   ("WORKERS.NUM_WORKERS", w.NUM_WORKERS), ("WORKERS.MAX_RETRIES", w.MAX_RETRIES),
                   ("WORKERS.MAX_IN_FLIGHT", w.MAX_IN_FLIGHT)):
        require(isinstance(v, int) and v >= 0, key, v, "an integer >= 0")
    require(s.DAMAGED_JOURNAL in ("stop", "restart"), "SEARCH.DAMAGED_JOURNAL", s.DAMAGED_JOURNAL,
             "'stop' or 'restart'")
    require(isinstance(d.VAL_SIZE, int) and d.VAL_SIZE >= 1, "DATA.VAL_SIZE", d.VAL_SIZE, "an integer >= 1")
    require(isinstance(c.LR, (int, float)) and math.isfinite(c.LR) and c.LR > 0, "CONTROLLER.LR", c.LR,
             "a finite number > 0")
    require(0 <= c.BASELINE_DECAY < 1, "CONTROLLER.BASELINE_DECAY", c.BASELINE_DECAY, "a number in [0, 1)")
    fr = c.FAILED_REWARD
    require(fr is None or (isinstance(fr, (int, float)) and math.isfinite(fr)), "CONTROLLER.FAILED_REWARD",
             fr, "a finite number, or None to leave failed children out of the policy update")
    check_child_settings(cfg.CHILD)
    dev = str(cfg.CHILD.get("DEVICE", "auto"))
    require(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"), "CHILD.DEVICE", dev,
             "auto, cpu, cuda or cuda:N")
    if dev.startswith("cuda") and w.BACKEND != "ray":  # on Ray the children run on the cluster's GPUs, not here
        from nasnet_det.engine.devices import require_cuda

        require_cuda("CHILD.DEVICE", dev)  # one line saying why (torch's CUDA build, the driver)
    check_child_network(cfg.MODEL.NASNET)
    check_latency_settings(s)


def check_latency_settings(s: CN) -> None:
    """``SEARCH.OBJECTIVE`` and ``SEARCH.LATENCY.*`` (checked whatever the objective: a typo fails at once; the
    backbone when latencies are estimated)."""
    from nasnet_det.latency import DEVICES, LATENCY_ESTIMATORS, backbone_variants

    lat = s.LATENCY
    require(s.OBJECTIVE in ("accuracy", "latency"), "SEARCH.OBJECTIVE", s.OBJECTIVE, "'accuracy' or 'latency'")
    require(lat.ESTIMATOR in LATENCY_ESTIMATORS, "SEARCH.LATENCY.ESTIMATOR", lat.ESTIMATOR,
            f"one of {', '.join(sorted(LATENCY_ESTIMATORS.names()))}")
    require(lat.CONSTRAINT in ("soft", "hard"), "SEARCH.LATENCY.CONSTRAINT", lat.CONSTRAINT, "'soft' or 'hard'")
    require(lat.DEVICE in DEVICES, "SEARCH.LATENCY.DEVICE", lat.DEVICE, f"one of {', '.join(DEVICES)}")
    if s.OBJECTIVE == "latency" or lat.RECORD:  # the choices are detectron2's registry: imported only when used
        backbones = backbone_variants()
        require(lat.BACKBONE in backbones, "SEARCH.LATENCY.BACKBONE", lat.BACKBONE, f"one of {', '.join(backbones)}")
    for key in ("TARGET_MS", "TARGET_MULT_ADDS_M"):
        v = lat[key]
        require(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"SEARCH.LATENCY.{key}", v,
                 "a number > 0")
    require(isinstance(lat.WEIGHT, (int, float)) and math.isfinite(lat.WEIGHT) and lat.WEIGHT <= 0,
             "SEARCH.LATENCY.WEIGHT", lat.WEIGHT, "a number <= 0 (MnasNet: -0.07; slower cells score less)")
    for key, least in (("INPUT_SIZE", 32), ("NUM_CELLS", 1), ("FILTERS", 4), ("REPEATS", 1), ("THREADS", 1)):
        v = lat[key]
        require(isinstance(v, int) and v >= least, f"SEARCH.LATENCY.{key}", v, f"an integer >= {least}")
    require(isinstance(lat.WARMUP, int) and lat.WARMUP >= 0, "SEARCH.LATENCY.WARMUP", lat.WARMUP,
             "an integer >= 0")


def check_child_network(network: Mapping[str, Any]) -> None:
    """The children's ``MODEL.NASNET``: buildable, and sized by f (F need not fit every sampled genotype)."""
    check_nasnet_node(network)
    v = network["FILTERS"]
    require(isinstance(v, int) and v >= 1, "MODEL.NASNET.FILTERS", v,
             "an integer >= 1: search children are sized by f (set MODEL.NASNET.FILTERS, which zeroes "
             "PENULTIMATE_FILTERS)")
