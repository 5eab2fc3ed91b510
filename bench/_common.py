"""Shared by the bench scripts: timing (median of repeats), peak memory, and the results file.

Every script measures ours and a peer in the same process and records rows with :func:`record`, which merges
them into ``bench/results.json`` under the script's name (atomic write); ``bench/run_all.py`` (``make bench``)
renders the file as ``bench/RESULTS.md``.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# bench/gpu.sh points this at its one results file of the run (BENCH_RESULTS_JSON); otherwise bench/results.json.
RESULTS_JSON = Path(os.environ.get("BENCH_RESULTS_JSON") or BENCH_DIR / "results.json")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], repeats: int, iters: int = 1, device: str = "cpu") -> float:
    """Median over ``repeats`` of the mean seconds per call of ``fn`` over ``iters`` calls (after 1 warm-up)."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / iters)
    return statistics.median(times)


def interleaved_median_times(fns: dict[str, Callable[[], Any]], repeats: int, iters: int = 1,
                             device: str = "cpu") -> dict[str, float]:
    """Median seconds per call of each function, the repeats interleaved (a, b, a, b, ...) so that a change in
    the machine's load hits every side alike. Each function gets one warm-up call first."""
    for fn in fns.values():
        fn()
    synchronize(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / iters)
    return {k: statistics.median(v) for k, v in times.items()}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def _malloc_in_use() -> Callable[[], int] | None:
    """glibc's bytes in use (heap chunks + mmap'ed blocks): what torch's CPU allocator holds right now."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        m = libc.mallinfo2()
        return m.uordblks + m.hblkhd
    return in_use


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


_IN_USE = _malloc_in_use() or _rss_bytes


def peak_memory_mb(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Peak extra memory of one call of ``fn`` in MiB. CUDA: ``max_memory_allocated`` above what was allocated
    before. CPU: peak of the bytes malloc has handed out (glibc ``mallinfo2``; resident set size where that is
    missing), sampled every 1 ms by a thread, above the level before the call."""
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = _IN_USE()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _IN_USE())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], _IN_USE())
    return (peak[0] - before) / 2**20


def machine() -> dict[str, Any]:
    """Machine and library versions, for the results file."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": platform.processor(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
        info["loadavg_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    from importlib import metadata

    for pkg in ("timm", "pretrainedmodels", "detectron2", "pycocotools", "faster-coco-eval", "hotcoco", "numpy"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            try:  # detectron2 installed from a republished wheel under another distribution name
                info[pkg] = __import__(pkg.replace("-", "_")).__version__
            except (ImportError, AttributeError):
                info[pkg] = None
    return info


def ratio(ours: float, peer: float, higher_is_better: bool) -> float:
    """How many times better ours is (> 1: ours wins), for a higher- or lower-is-better metric; none (NaN) unless
    both are positive (the ratio of two negative correlations would read backwards)."""
    if not (ours > 0 and peer > 0):
        return float("nan")
    return ours / peer if higher_is_better else peer / ours


def row(bench: str, metric: str, ours: float, peer: float, peer_name: str, higher_is_better: bool,
        **extra: Any) -> dict[str, Any]:
    r = dict(bench=bench, metric=metric, ours=ours, peer=peer, peer_name=peer_name,
             higher_is_better=higher_is_better, ratio=ratio(ours, peer, higher_is_better))
    r.update(extra)
    return r


def print_row(r: dict[str, Any]) -> None:
    better = "higher" if r["higher_is_better"] else "lower"
    print(f"{r['bench']:<44} {r['metric']:<16} ours {r['ours']:10.4g}  {r['peer_name']:<46} {r['peer']:10.4g}  "
          f"ratio {r['ratio']:.2f}x ({better} is better)", flush=True)


def record(script: str, rows: list[dict[str, Any]], command: str | None = None, notes: list[str] | None = None,
           path: Path = RESULTS_JSON) -> None:
    """Merge ``rows`` into the results file under ``script`` (replacing that script's previous rows)."""
    with open(path.with_suffix(".lock"), "w") as lock:  # scripts run in parallel merge one at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        _merge(script, rows, command, notes, path)


def _merge(script: str, rows: list[dict[str, Any]], command: str | None, notes: list[str] | None,
           path: Path) -> None:
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data.setdefault("scripts", {})[script] = {
        "command": command or " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(), "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "rows": rows, "notes": notes or [],
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, default=float)
    os.replace(tmp, path)
