"""How fast a cell's detection backbone runs: estimators of the latency of the FPN or C4 trunk (backbone.py)
built with any genotype at a fixed N@f and input size, on a device.

- ``measure``: build the backbone, run it (warm-up, then the median of repeats) on the device;
- ``lut``: FBNet-style lookup table of per-unit latencies (each op of a cell, each cell's 1x1 / factorized-
  reduce preprocessing, each stem / FPN layer, keyed by the module and its input shape), measured once per
  (device, input size, N@f, backbone, torch version) and cached on disk; a cell's latency is the sum over its
  units plus a fixed part (the adds, concats and resizes between them: measured once, on NASNet-A). On CUDA a
  unit is timed with CUDA events over back-to-back calls (:func:`cuda_event_ms`), as its kernels run inside a
  whole network, not one launch and one sync per call (which at batch 1 would time mostly the launch);
- ``flops``: mult-adds as the cost (no timing).

Every estimator also gives the backbone's params and mult-adds (:meth:`LatencyEstimator.profile`).
An estimator is a class registered once in :data:`LATENCY_ESTIMATORS` (``SEARCH.LATENCY.ESTIMATOR`` names it).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import platform
import re
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from nasnet_det.genotypes import get_genotype
from nasnet_det.models.cell import Cell
from nasnet_det.models.profile import conv_mult_adds, count_params
from nasnet_det.search_space import cell_from_decisions
from nasnet_det.space import OPS, Genotype
from nasnet_det.utils.io import atomic_write
from nasnet_det.utils.registry import Registry

log = logging.getLogger(__name__)
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class LatencySetting:
    """What a latency means: the backbone (``FPN`` / ``C4``) of N cells at f filters, one ``input_size`` x
    ``input_size`` image (rounded up to the backbone's size divisibility), on ``device`` with ``threads``
    torch threads (CPU), timed as the median of ``repeats`` runs after ``warmup``."""

    device: str = "cpu"
    input_size: int = 600
    num_cells: int = 4
    filters: int = 44
    backbone: str = "FPN"
    warmup: int = 2
    repeats: int = 5
    threads: int = 1
    cache_dir: str = "output/latency_lut"

    def table_key(self) -> dict[str, Any]:
        """What a lookup table depends on (the repeat counts aside). A CUDA table also names its unit timer: a
        table timed one synced call at a time (before CUDA events) is not reused."""
        key = {"device": self.device, "device_name": device_name(self.device), "input_size": self.input_size,
               "num_cells": self.num_cells, "filters": self.filters, "backbone": self.backbone,
               "threads": self.threads, "torch": torch.__version__}
        if self.device == "cuda":
            key["unit_timer"] = "cuda_events"
        return key


def device_name(device: str) -> str:
    """The processor a table was timed on (a cache folder copied or shared between machines must not lend one
    machine's timings to another): the GPU's name, or the CPU model of /proc/cpuinfo."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class CostProfile:
    """The backbone's cost: latency in ms (None for ``flops``), trainable params and mult-adds."""

    latency_ms: float | None
    params: int
    mult_adds: int


def backbone_variants() -> dict[str, str]:
    """``SEARCH.LATENCY.BACKBONE``'s choices: each NASNet detector backbone registered in detectron2's
    ``BACKBONE_REGISTRY`` as ``build_nasnet_<variant>_backbone`` (``FPN``, ``C4``), with its registered name (the
    multi-tap ``build_nasnet_backbone`` is a part of the FPN one, not a detector's backbone)."""
    from detectron2.modeling import BACKBONE_REGISTRY

    import nasnet_det.detection.backbone  # noqa: F401 (registers the NASNet backbones)

    found = (re.fullmatch(r"build_nasnet_(\w+)_backbone", name) for name, _ in BACKBONE_REGISTRY)
    return {m.group(1).upper(): m.group(0) for m in found if m}


def detection_backbone(genotype: Genotype | str, setting: LatencySetting) -> nn.Module:
    """The detector's backbone (``setting.backbone``) with ``genotype``'s cells, N@f of ``setting``, in eval
    mode (the inference-time module: FrozenBN, no drop path): ``MODEL.BACKBONE.NAME``'s builder in detectron2's
    ``BACKBONE_REGISTRY``, given the cells as a :class:`Genotype` (a searched cell has no file to name)."""
    from detectron2.modeling import BACKBONE_REGISTRY

    from nasnet_det.detection.config import get_nasnet_cfg

    variants = backbone_variants()
    if setting.backbone not in variants:
        raise ValueError(f"latency backbone {setting.backbone!r}: expected one of {', '.join(variants)}")
    cfg = get_nasnet_cfg()
    cfg.MODEL.BACKBONE.NAME = variants[setting.backbone]
    cfg.MODEL.NASNET.NUM_CELLS, cfg.MODEL.NASNET.FILTERS = setting.num_cells, setting.filters
    cfg.MODEL.NASNET.PENULTIMATE_FILTERS = 0
    cfg.MODEL.FPN.IN_FEATURES = list(cfg.MODEL.NASNET.OUT_FEATURES)
    genotype = get_genotype(genotype) if isinstance(genotype, str) else genotype
    return BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, genotype=genotype).eval()


def padded_size(size: int, divisor: int) -> int:
    return -(-size // divisor) * divisor


def input_for(model: nn.Module, setting: LatencySetting, device: torch.device | str) -> torch.Tensor:
    s = padded_size(setting.input_size, int(model.size_divisibility) or 1)
    return torch.randn(1, 3, s, s, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block (n <= 0: leave it), restored after."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def median_ms(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` runs after ``warmup`` (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


@torch.inference_mode()
def cuda_event_ms(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> float:
    """Mean time of ``fn`` in ms on CUDA ``device``: ``warmup`` calls, then ``repeats`` calls back to back between
    two CUDA events and one synchronize. The calls queue behind each other as a network's layers do, so the figure
    is the unit's GPU time within a whole-network pass, not a launch plus a host sync per call."""
    n = max(1, repeats)
    with torch.cuda.device(device):
        for _ in range(warmup):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / n


Timer = Callable[[Callable[[], Any], int, int, torch.device], float]


def unit_timer(device: torch.device) -> Timer:
    """How the lookup table times one unit on ``device``: CUDA events over back-to-back calls on a GPU; on the
    CPU the median of synchronous runs, as the whole backbone is timed."""
    return cuda_event_ms if device.type == "cuda" else median_ms


def _device(setting: LatencySetting) -> torch.device:
    if setting.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("SEARCH.LATENCY.DEVICE='cuda' but no CUDA device is available here; use 'cpu'")
    return torch.device(setting.device)


class LatencyEstimator(ABC):
    """The latency of a genotype's detection backbone under one :class:`LatencySetting`. ``cost`` is what the
    objective compares with its target (ms; million mult-adds for ``flops``, :attr:`unit` says)."""

    name: ClassVar[str]
    unit: ClassVar[str] = "ms"

    def __init__(self, setting: LatencySetting):
        self.setting = setting
        self.cuda_device: torch.device | None = None  # the GPU a search worker was given (None: the current one)

    def place_on(self, device: str | torch.device) -> None:
        """Time on ``device``, the GPU of the search worker this estimator runs in, when the setting times on CUDA
        (a CPU setting stays on the CPU, and a CPU worker leaves a CUDA setting on the current GPU)."""
        device = torch.device(device)
        if self.setting.device == "cuda" and device.type == "cuda":
            self.cuda_device = device

    def timing_device(self) -> torch.device:
        """Where this estimator times: the setting's device, on the worker's GPU when it was placed on one."""
        device = _device(self.setting)
        return self.cuda_device if device.type == "cuda" and self.cuda_device is not None else device

    @abstractmethod
    def latency_ms(self, genotype: Genotype, model: nn.Module | None = None) -> float | None:
        """Estimated milliseconds per image (None when the estimator does not time)."""

    def profile(self, genotype: Genotype) -> CostProfile:
        model = detection_backbone(genotype, self.setting)
        with torch_threads(self.setting.threads):
            macs = conv_mult_adds(model, input_for(model, self.setting, "cpu"))
            lat = self.latency_ms(genotype, model)
        return CostProfile(lat, count_params(model), macs)

    @staticmethod
    def cost(profile: CostProfile) -> float:
        assert profile.latency_ms is not None
        return profile.latency_ms


# @LATENCY_ESTIMATORS.register() adds one, named by its ``name`` (latency estimators: not the cell estimators)
LATENCY_ESTIMATORS = Registry("SEARCH.LATENCY.ESTIMATOR")


def make_estimator(name: str, setting: LatencySetting) -> LatencyEstimator:
    return LATENCY_ESTIMATORS.lookup(name)(setting)


@LATENCY_ESTIMATORS.register()
class MeasuredLatency(LatencyEstimator):
    """Times the whole backbone on the device."""

    name = "measure"

    def latency_ms(self, genotype: Genotype, model: nn.Module | None = None) -> float:
        device = self.timing_device()
        model = (model if model is not None else detection_backbone(genotype, self.setting)).to(device)
        x = input_for(model, self.setting, device)
        with torch_threads(self.setting.threads):
            return median_ms(lambda: model(x), self.setting.warmup, self.setting.repeats, device)


@LATENCY_ESTIMATORS.register()
class MultAddCost(LatencyEstimator):
    """No timing: the backbone's mult-adds (in millions) are the cost."""

    name, unit = "flops", "M mult-adds"

    def latency_ms(self, genotype: Genotype, model: nn.Module | None = None) -> None:
        return None

    @staticmethod
    def cost(profile: CostProfile) -> float:
        return profile.mult_adds / 1e6


# --- the lookup table -----------------------------------------------------------------------------------------
def _unit_key(module: nn.Module, x: torch.Tensor) -> str:
    """A unit's table key: its class, a digest of its repr (channels, kernels, strides, padding) and the
    shape and memory layout of its input."""
    digest = hashlib.sha1(repr(module).encode()).hexdigest()[:12]
    layout = "cl" if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 else "c"
    return f"{type(module).__name__}:{digest}:{'x'.join(map(str, x.shape))}:{layout}"


def _units(model: nn.Module) -> list[nn.Module]:
    """What the table times separately: each direct child of a cell (an op, or a preprocessing conv), and each
    leaf module outside the cells (stem conv and BN, FPN convs, the extra pooled level)."""
    inside = set()
    units: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, Cell):
            for child in m.children():
                units.append(child)
                inside.update(id(x) for x in child.modules())
    for m in model.modules():
        if id(m) not in inside and not isinstance(m, Cell) and next(m.children(), None) is None:
            units.append(m)
    return units


@torch.inference_mode()
def unit_inputs(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    """(unit, the input it gets) for every unit one forward of ``model`` on ``x`` runs, in run order."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [u.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0])) if args else None)
             for u in _units(model)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def covering_genotypes(num_blocks: int = 5) -> list[Genotype]:
    """One genotype per op of the space: every block applies that op to a cell input and to the previous
    block's output, in both cells, so the table holds every op at every stage, stride and input."""
    out = []
    for i, op in enumerate(OPS):
        d = []
        for b in range(num_blocks):
            d += [0, 1, i, i, 0] if b == 0 else [b + 1, b % 2, i, i, 0]
        cell = cell_from_decisions(d, num_blocks)
        out.append(Genotype(cell, cell, f"all_{op}"))
    return out


@LATENCY_ESTIMATORS.register()
class LookupTableLatency(LatencyEstimator):
    """FBNet's latency model on NASNet units. The table is a JSON file in ``setting.cache_dir``, named by a
    digest of :meth:`LatencySetting.table_key` (a new device, input size, N@f or torch version is a new
    table). :meth:`build` fills it from :func:`covering_genotypes` plus NASNet-A (whose measured total gives the
    fixed part); a unit a cell has that the table lacks (e.g. an op reading a concat-combined state) is
    timed once and added. Every write is atomic."""

    name = "lut"

    def __init__(self, setting: LatencySetting):
        super().__init__(setting)
        digest = hashlib.sha1(json.dumps(setting.table_key(), sort_keys=True).encode()).hexdigest()[:10]
        self.path = Path(setting.cache_dir) / f"lut_{setting.backbone}_{setting.input_size}px_" \
                                              f"{setting.num_cells}x{setting.filters}_{setting.device}_{digest}.json"
        self.units: dict[str, float] = {}
        self.fixed_ms: float | None = None
        self._load()

    def _load(self) -> None:
        self.units, self.fixed_ms = self._read()

    def _read(self) -> tuple[dict[str, float], float | None]:
        """The table on disk (units, fixed part); empty when there is none or it cannot be used."""
        if not self.path.is_file():
            return {}, None
        try:
            data = json.loads(self.path.read_text())
            if data.get("setting") != self.setting.table_key():
                raise ValueError("it was built for other settings")
            return {str(k): float(v) for k, v in data["units"].items()}, data["fixed_ms"]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("latency table %s cannot be used (%s); rebuilding it", self.path, e)
            return {}, None

    def _save(self) -> None:
        # Workers of one search add the units their cells need to the same file: merge what the others saved
        # since this table was read, so one worker's save does not drop another's timings (atomic writes keep
        # the file whole; a unit lost to a race in between is only timed again).
        saved_units, saved_fixed_ms = self._read()
        self.units = {**saved_units, **self.units}
        if self.fixed_ms is None:
            self.fixed_ms = saved_fixed_ms
        atomic_write(self.path, json.dumps({"setting": self.setting.table_key(), "timing": asdict(self.setting),
                                            "fixed_ms": self.fixed_ms, "units": self.units}, indent=1) + "\n")

    def _unit_sum(self, model: nn.Module, device: torch.device) -> float:
        """Sum of the table's latencies over the units of ``model``, timing (and saving) the missing ones."""
        total, added = 0.0, 0
        timer = unit_timer(device)
        for unit, x in unit_inputs(model, input_for(model, self.setting, device)):
            key = _unit_key(unit, x)
            if key not in self.units:
                run = functools.partial(copy.deepcopy(unit), torch.randn_like(x))  # the unit alone, on fresh data
                self.units[key] = timer(run, self.setting.warmup, self.setting.repeats, device)
                added += 1
            total += self.units[key]
        if added:
            self._save()
        return total

    def build(self, progress: bool = False) -> None:
        """Fill the table (once: a complete table on disk is reused as is)."""
        if self.fixed_ms is not None:
            return
        from tqdm import tqdm

        device = self.timing_device()
        with torch_threads(self.setting.threads):
            for g in tqdm(covering_genotypes(), desc="latency table", disable=not progress):
                self._unit_sum(detection_backbone(g, self.setting).to(device), device)
            ref = detection_backbone(get_genotype("nasnet_a"), self.setting).to(device)
            x = input_for(ref, self.setting, device)
            whole = median_ms(lambda: ref(x), self.setting.warmup, self.setting.repeats, device)
            # What the units leave out (adds, concats, FPN resizes) in the reference cell; about constant.
            self.fixed_ms = whole - self._unit_sum(ref, device)
        self._save()

    def latency_ms(self, genotype: Genotype, model: nn.Module | None = None) -> float:
        self.build()
        device = self.timing_device()
        model = (model if model is not None else detection_backbone(genotype, self.setting)).to(device)
        with torch_threads(self.setting.threads):
            return self._unit_sum(model, device) + float(self.fixed_ms or 0.0)
