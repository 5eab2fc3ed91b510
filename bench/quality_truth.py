"""The ground truth of the search-quality bench (``bench/search_quality.py``): how a cell is trained alone
(:class:`Budget`), the bench's data splits, size-matched random cells, and the resumable on-disk cache of every
trained cell's accuracy (:class:`TruthCache`, :func:`ground_truth`)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasnet_det.data.cifar import holdout_split, load_cifar_source
from nasnet_det.genotypes import NASNET_A
from nasnet_det.search_space import SearchSpace
from nasnet_det.space import Genotype
from nasnet_det.utils.errors import BadInputError
from search.reward import ChildData, build_child, default_child_network, train_child

NUM_BLOCKS = 5

# ----------------------------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class Budget:
    """How each ground-truth cell is trained: ``steps`` SGD steps of batch ``batch_size`` on
    ``image_size``-px images, a CIFAR network of ``num_cells`` cells per stage at ``filters`` filters."""

    steps: int
    image_size: int
    num_cells: int
    filters: int
    batch_size: int = 32
    lr: float = 0.05
    device: str = "cpu"  # where it trains: not part of the cache key (the same result to rounding)

    @classmethod
    def parse(cls, text: str, batch_size: int = 32, lr: float = 0.05, device: str = "cpu") -> Budget:
        """``STEPS@SIZEpx:N@f``, e.g. ``400@16px:1@8``."""
        try:
            run, net = text.split(":")
            steps, size = run.split("@")
            n, f = net.split("@")
            b = cls(int(steps), int(size.removesuffix("px")), int(n), int(f), batch_size, lr, device)
        except ValueError:
            raise BadInputError(f"--budget {text!r}: expected STEPS@SIZEpx:N@f, e.g. 400@16px:1@8") from None
        if min(b.steps, b.num_cells, b.filters) < 1 or b.image_size < 8:
            raise BadInputError(f"--budget {text!r}: steps, N and f must be >= 1 and the image size >= 8 px")
        return b

    @property
    def label(self) -> str:
        return f"{self.steps}@{self.image_size}px:{self.num_cells}@{self.filters}"

    def child(self) -> dict[str, Any]:
        """The ``CHILD`` settings of ``train_child``: the step cap decides the length (EPOCHS is only an
        upper bound)."""
        return dict(EPOCHS=10**6, MAX_STEPS=self.steps, BATCH_SIZE=self.batch_size, EVAL_BATCH_SIZE=256,
                    LR=self.lr, MOMENTUM=0.9, WEIGHT_DECAY=5e-4, AUGMENT=True, IMAGE_SIZE=self.image_size)

    def network(self) -> dict[str, Any]:
        net = default_child_network()
        net.update(NUM_CELLS=self.num_cells, FILTERS=self.filters)
        return net


# ------------------------------------------------------------------------------------------------- data
@dataclass
class BenchData:
    """The bench's splits. ``search``: what searches and estimators may use (its own train / val split).
    ``truth``: the ground truth's training images (all of the search's) and its held-out images (the
    holdout, or the test set), which no search sees. ``key`` names the data for the cache."""

    search: ChildData
    truth: ChildData
    key: str
    description: str
    source: str = ""
    holdout: int = 0
    split_seed: int = 0


def source_key(source: str) -> str:
    """A data source as the cache names it: ``KIND:PATH`` with only the file's name (``npz:cifar10-subset.npz``),
    so a cache made in one checkout (or with the data elsewhere) serves another."""
    kind, sep, path = source.partition(":")
    return f"{kind}{sep}{Path(path).name}" if sep and ("/" in path or "\\" in path) else source


def load_bench_data(source: str, holdout: int, search_val: int, split_seed: int = 0,
                    test: str = "") -> BenchData:
    x, y = load_cifar_source(source)
    if not 0 < holdout < len(x) - search_val - 1:
        raise BadInputError(f"--holdout {holdout}: expected 1 .. {len(x) - search_val - 2} for the {len(x)} "
                            f"images of {source} with --search-val {search_val}")
    rest, held = holdout_split(len(x), holdout, split_seed)
    x_rest, y_rest = x[rest], y[rest].astype(np.int64)
    search = ChildData.from_arrays(x_rest, y_rest, search_val, split_seed)
    if test:
        x_test, y_test = load_cifar_source(test if ":" in test else f"npz:{test}")
        truth = ChildData(x_rest, y_rest, x_test, y_test.astype(np.int64))
        scored_on = f"the test set {test} ({len(x_test)} images)"
    else:
        truth = ChildData(x_rest, y_rest, x[held], y[held].astype(np.int64))
        scored_on = f"a held-out split of {holdout} images no search sees"
    desc = (f"{source} ({len(x)} images): ground truth trained on {len(x_rest)}, scored on {scored_on}; "
            f"searches and estimators see only the {len(x_rest)} ({len(x_rest) - search_val} train / "
            f"{search_val} val)")
    key = f"{source_key(source)}|holdout={holdout}|split_seed={split_seed}|test={source_key(test)}"
    return BenchData(search, truth, key, desc, source, holdout, split_seed)


# ------------------------------------------------------------------------------------------------ cells
def param_count(genotype: Genotype, network: Mapping[str, Any]) -> int:
    return sum(p.numel() for p in build_child(genotype, network).parameters())


def within_size(params: int, reference: int, tolerance: float) -> bool:
    """Whether ``params`` lies within ``tolerance`` (a fraction) of ``reference``."""
    return abs(params - reference) <= tolerance * reference


def size_matched_cells(n: int, network: Mapping[str, Any], tolerance: float = 0.3, seed: int = 0,
                       reference: Genotype = NASNET_A, max_draws: int = 0) -> list[tuple[Genotype, int]]:
    """``n`` uniformly random cells (normal + reduction) whose networks at ``network`` have parameter counts
    within ``tolerance`` of ``reference``'s, drawn in a fixed order from ``seed``: (genotype, params) each.
    Refuses (BadInputError) when ``max_draws`` draws (default 50 n) do not give ``n``."""
    ref = param_count(reference, network)
    gen, space = torch.Generator().manual_seed(seed), SearchSpace(NUM_BLOCKS)
    max_draws = max_draws or 50 * n
    out: list[tuple[Genotype, int]] = []
    draws = 0
    while len(out) < n:
        if draws >= max_draws:
            raise BadInputError(f"--size-tolerance {tolerance}: only {len(out)} of {n} random cells within "
                                f"{tolerance:.0%} of {reference.name or 'the reference'}'s {ref} parameters "
                                f"in {max_draws} draws; widen the tolerance")
        draws += 1
        g = space.genotype(space.sample(1, gen)[0].tolist(), name=f"random_{seed}_{draws - 1}")
        p = param_count(g, network)
        if within_size(p, ref, tolerance):
            out.append((g, p))
    return out


# ------------------------------------------------------------------------------------------------ cache
def genotype_key(genotype: Genotype) -> str:
    """The genotype's cells, not its name: the same cell found by two strategies is trained once."""
    d = genotype.to_dict()
    d.pop("name", None)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class TruthCache:
    """Ground-truth accuracies on disk, one JSON line per trained cell (appended and flushed as each
    finishes, so an interrupt loses at most the cell in training). A torn last line is skipped on reading."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.entries[e["key"]] = e

    @staticmethod
    def key(genotype: Genotype, budget: Budget, data_key: str, seed: int) -> str:
        return f"{genotype_key(genotype)}|{budget.label}|bs{budget.batch_size}|lr{budget.lr}|{data_key}|seed{seed}"

    def get(self, genotype: Genotype, budget: Budget, data_key: str, seed: int) -> dict[str, Any] | None:
        return self.entries.get(self.key(genotype, budget, data_key, seed))

    def put(self, entry: dict[str, Any]) -> None:
        self.entries[entry["key"]] = entry
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())


def ground_truth(cache: TruthCache, genotype: Genotype, budget: Budget, data: BenchData, seed: int,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """The cell's stand-alone held-out accuracy at ``budget`` and ``seed`` (from the cache, or trained now
    and cached): ``{"accuracy", "params", "seconds", ...}``."""
    hit = cache.get(genotype, budget, data.key, seed)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    r = train_child(genotype, budget.child(), data.truth, seed=seed, network=budget.network(), device=budget.device)
    entry = {"key": cache.key(genotype, budget, data.key, seed), "genotype": genotype.to_dict(),
             "name": genotype.name, "budget": budget.label, "seed": seed, "accuracy": r["reward"],
             "params": r["params"], "steps": r["steps"], "seconds": round(time.perf_counter() - t0, 2),
             "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    cache.put(entry)
    log(f"  [{budget.label}] {genotype.name or genotype_key(genotype)} seed {seed}: acc {r['reward']:.4f} "
        f"({r['params']} params, {entry['seconds']:.0f} s)")
    return entry


# ------------------------------------------------------------------------------------------- estimators
def search_cfg(budget: Budget | None, config: str | None, opts: Sequence[str], data: BenchData | None = None) -> Any:
    """The search config the estimators and strategies run with: ``config``, then the budget's network and
    image size, one in-process worker (the bench owns the one core it measures on), the bench's data with
    the holdout as ``DATA.VAL_SIZE`` (a strategy that loads ``cfg.DATA`` itself -- zero_cost's data-dependent
    proxies -- draws its images from the search's side only), then ``opts``."""
    from search.config import load_cfg

    base = ["WORKERS.BACKEND", "inline"]
    if budget is not None:  # None: the config's own network and image size (the NDS bench scores as the search)
        base += ["MODEL.NASNET.NUM_CELLS", str(budget.num_cells), "MODEL.NASNET.FILTERS", str(budget.filters),
                 "CHILD.IMAGE_SIZE", str(budget.image_size)]
    if data is not None:
        base += ["DATA.SOURCE", data.source, "DATA.VAL_SIZE", str(data.holdout), "DATA.SPLIT_SEED",
                 str(data.split_seed), "DATA.TRAIN_LIMIT", "0"]
    return load_cfg(config, [*base, *opts])


def cfg_hash(cfg: Any) -> str:
    """The config's identity for the cache (the data source by :func:`source_key`, not where it lies)."""
    cfg = cfg.clone()
    if "DATA" in cfg and "SOURCE" in cfg.DATA:
        cfg.defrost()
        cfg.DATA.SOURCE = source_key(str(cfg.DATA.SOURCE))
    return hashlib.sha1(cfg.dump().encode()).hexdigest()[:16]
