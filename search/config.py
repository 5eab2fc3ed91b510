"""Default configuration of the search (yacs ``CfgNode``; YAML files may use ``_BASE_``)."""

from __future__ import annotations

from fvcore.common.config import CfgNode as CN


def get_cfg_defaults() -> CN:
    """A fresh copy of the defaults. Paper values are noted where they differ from the small defaults."""
    c = CN()
    c.OUTPUT_DIR = "output/search"

    c.SEARCH = CN()
    # "ppo", "reinforce", "random", or several comma-separated (e.g. "ppo,random") run one after the other
    # with the same budget each, for comparison.
    c.SEARCH.STRATEGY = "ppo"
    c.SEARCH.BUDGET = 100            # child models per strategy (paper: 20,000)
    c.SEARCH.BATCH_SIZE = 20         # architectures per policy update (paper: 20)
    c.SEARCH.NUM_BLOCKS = 5          # B (paper: 5)
    c.SEARCH.SEED = 0
    c.SEARCH.MAX_EVALS_THIS_RUN = 0  # stop after this many finished evaluations in this run (0: no limit)
    c.SEARCH.TOP_K = 5               # genotypes kept in top_k.json

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

    c.CHILD = CN()
    c.CHILD.NUM_CELLS = 1            # N (paper: 2 during search)
    c.CHILD.FILTERS = 8              # f (paper: 32)
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
    c.WORKERS.MAX_RETRIES = 2        # Ray re-runs of a child whose worker process died
    c.WORKERS.THREADS_PER_WORKER = 1  # torch threads in each CPU worker
    return c


# Keys that define what a journal's evaluations mean: resuming with different values would mix
# incomparable results, so the runner refuses it.
IDENTITY_KEYS = ("SEARCH.BATCH_SIZE", "SEARCH.NUM_BLOCKS", "SEARCH.SEED", "CONTROLLER", "CHILD", "DATA")


def identity_of(cfg: CN) -> dict:
    out = {}
    for key in IDENTITY_KEYS:
        node = cfg
        for part in key.split("."):
            node = node[part]
        out[key] = node if not isinstance(node, CN) else _plain(node)
    return out


def _plain(node):
    if isinstance(node, CN):
        return {k: _plain(v) for k, v in node.items()}
    return node


def load_cfg(config_file: str | None = None, opts: list[str] | None = None) -> CN:
    """Defaults, merged with ``config_file`` (may use ``_BASE_``) and ``KEY VALUE`` overrides."""
    cfg = get_cfg_defaults()
    if config_file:
        from pathlib import Path

        if not Path(config_file).is_file():
            raise FileNotFoundError(f"config file {config_file} does not exist")
        cfg.merge_from_file(config_file)
    if opts:
        if len(opts) % 2:
            raise ValueError(f"overrides must be KEY VALUE pairs, got an odd number: {opts}")
        cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg
