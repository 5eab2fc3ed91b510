"""The tiny search configs shared by the tests/search/ files, one per kind of search."""

from __future__ import annotations

from fvcore.common.config import CfgNode

from search.config import load_cfg

BASES: dict[str, list[str]] = {
    # the synchronous loop, children trained in the driver: journal, resume, outputs
    "runner": ["SEARCH.BUDGET", "20", "SEARCH.BATCH_SIZE", "5", "CONTROLLER.HIDDEN", "16",
               "CONTROLLER.LR", "0.01", "WORKERS.BACKEND", "inline"],
    # the work queue: two strategies sharing the workers
    "queue": ["SEARCH.STRATEGY", "ppo,random", "SEARCH.BATCH_SIZE", "2", "CONTROLLER.HIDDEN", "16",
              "CONTROLLER.LR", "0.01"],
    # the weight-sharing search: a 1 @ f=4 supernet of 2-block cells on 8 px images, a few steps per phase
    "oneshot": ["SEARCH.STRATEGY", "oneshot", "SEARCH.NUM_BLOCKS", "2", "SEARCH.BATCH_SIZE", "3",
                "CONTROLLER.HIDDEN", "16", "CONTROLLER.LR", "0.01",
                "MODEL.NASNET.NUM_CELLS", "1", "MODEL.NASNET.FILTERS", "4",
                "CHILD.IMAGE_SIZE", "8", "DATA.VAL_SIZE", "16", "ONESHOT.EPOCHS", "2",
                "ONESHOT.WEIGHT_STEPS", "3", "ONESHOT.BATCH_SIZE", "8", "ONESHOT.CONTROLLER_STEPS", "2",
                "ONESHOT.REWARD_BATCH_SIZE", "8", "ONESHOT.FINAL_SAMPLES", "3",
                "ONESHOT.CHECKPOINT_EVERY", "2", "ONESHOT.DEVICE", "cpu"],
}


def tiny_opts(kind: str, *opts: object) -> list[str]:
    """The ``KEY VALUE`` list of the ``kind`` search (a key of :data:`BASES`) followed by ``opts``."""
    return [*BASES[kind], *map(str, opts)]


def runner_cfg(*opts: object) -> CfgNode:
    """The inline search loop's config, ``opts`` applied last."""
    return load_cfg(None, tiny_opts("runner", *opts))


def queue_opts(*opts: object) -> list[str]:
    """The work queue's ``KEY VALUE`` list (for ``load_cfg`` or a subprocess's command line)."""
    return tiny_opts("queue", *opts)


def oneshot_cfg(*opts: object) -> CfgNode:
    """The weight-sharing search's config, ``opts`` applied last."""
    return load_cfg(None, tiny_opts("oneshot", *opts))


def random_cells(n: int, num_blocks: int = 2, seed: int = 0) -> list:
    """``n`` uniformly drawn genotypes of ``num_blocks`` blocks (as random search draws them)."""
    import torch

    from nasnet_det.search_space import SearchSpace

    space = SearchSpace(num_blocks)
    return [space.genotype(d) for d in space.sample(n, torch.Generator().manual_seed(seed)).tolist()]


def scores_of_two_builds(name: str, cfg: CfgNode, data, seed: int, genotypes: list) -> list[list[float]]:
    """The scores of ``genotypes`` by estimator ``name`` built and prepared twice from the same seed."""
    from search.estimators import build_estimator

    scores = []
    for _ in range(2):
        est = build_estimator(name, cfg)
        est.prepare(data, seed=seed)
        scores.append([est.score(g) for g in genotypes])
    return scores
