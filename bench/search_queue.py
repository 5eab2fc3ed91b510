#!/usr/bin/env python
"""Does the work queue keep every worker busy? Worker utilisation and throughput of the search.

Children are a sleeping evaluator (``search.reward.SleepingReward``): heavy-tailed durations (lognormal,
median ``--median-ms``, the slowest of 100 ~10x the median), drawn from each child's seed, so every run
sees the same durations. The search is PPO (paper controller: 100 units) and random search concurrently,
policy batch 20, as in ``configs/search/paper.yaml``.

utilisation = busy time / (workers x wall time): busy = the summed time children spent in the evaluator,
wall = first submission to last result (worker processes are started, and Ray's warmed up, before the
clock starts: their start-up is paid once per search, and reported separately). Goal >= 0.9.
children/hour with 2 workers vs 1: goal >= 1.8x.

The driver (sampling, journal, policy updates) costs ~25 ms per child on a loaded 2-core CPU, so the
children here are far shorter than real ones (minutes to hours) but long enough that the driver is not
what is measured: with W workers it must handle W results per child duration.

    python bench/search_queue.py [--median-ms 300] [--ray-median-ms 1000] [--per-worker 32] [--skip-ray]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from search.config import load_cfg  # noqa: E402
from search.reward import SleepingReward  # noqa: E402
from search.runner import SearchRunner  # noqa: E402
from search.workers import Job, LocalProcessBackend, RayBackend  # noqa: E402


def search(backend, workers: int, per_worker: int, out: Path, evaluator: SleepingReward) -> dict:
    budget = max(20, workers * per_worker // 2)  # per strategy; two strategies share the workers
    cfg = load_cfg(None, ["SEARCH.STRATEGY", "ppo,random", "SEARCH.BUDGET", str(budget), "SEARCH.BATCH_SIZE", "20",
                          "CONTROLLER.HIDDEN", "100", "WORKERS.BACKEND", "local"])
    q = SearchRunner(cfg, out, evaluator, progress=False, backend=backend).run()["queue"]
    q["children"] = 2 * budget
    q["per_hour"] = 3600 * q["children"] / q["wall_seconds"]
    return q


def line(label: str, q: dict) -> str:
    return (f"{label:<16} utilisation={q['utilisation']:.3f}  children={q['children']}  wall={q['wall_seconds']:.2f}s  "
            f"busy={q['busy_seconds']:.2f}s  driver={1000 * q['driver_seconds'] / q['children']:.1f}ms/child  "
            f"children/hour={q['per_hour']:.0f}  max_in_flight={q['max_in_flight']}  "
            f"idle_fills={q['idle_fills']}  updates={q['policy_updates']} "
            f"(while children ran: {q['updates_while_children_ran']})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--median-ms", type=float, default=300.0, help="median child duration, local workers")
    ap.add_argument("--ray-median-ms", type=float, default=1000.0, help="median child duration, Ray workers")
    ap.add_argument("--per-worker", type=int, default=32, help="children per worker in each run")
    ap.add_argument("--local-workers", default="1,2,8")
    ap.add_argument("--ray-workers", type=int, default=32)
    ap.add_argument("--ray-in-flight", type=int, default=0, help="WORKERS.MAX_IN_FLIGHT for Ray (0: its default)")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    evaluator = SleepingReward(0, median_s=args.median_ms / 1000)
    print(f"== local worker processes: children sleep lognormal(median {args.median_ms:g} ms, sigma 1); "
          f"ppo,random; batch 20 ==")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in [int(x) for x in args.local_workers.split(",") if x.strip()]:
            backend = LocalProcessBackend(evaluator, w, use_cuda=False)
            t0 = time.perf_counter()
            backend.start()
            started = time.perf_counter() - t0
            try:
                results[w] = q = search(backend, w, args.per_worker, Path(tmp) / f"local{w}", evaluator)
            finally:
                backend.close()
            print(line(f"local x{w}", q), f"[{w} worker(s) started in {started:.1f}s]")
        if 1 in results and 2 in results:
            ratio = results[2]["per_hour"] / results[1]["per_hour"]
            print(f"children/hour, 2 workers vs 1: {ratio:.2f}x (goal >= 1.8x)")
        if not args.skip_ray:
            n = args.ray_workers
            slow = SleepingReward(0, median_s=args.ray_median_ms / 1000)
            print(f"== Ray, local cluster of {n} CPU slots on this machine: children sleep lognormal(median "
                  f"{args.ray_median_ms:g} ms, sigma 1) ==")
            t0 = time.perf_counter()
            warm = RayBackend(PidReward(median_s=5.0), num_workers=n)  # starts Ray
            try:
                pids: set[int] = set()
                for _ in range(10):  # until Ray has started (and imported torch in) n workers
                    pids |= {r.params for r in warm.run([Job(-1 - i, _any_genotype(), i) for i in range(n)])}
                    if len(pids) >= n:
                        break
                started = time.perf_counter() - t0
                backend = RayBackend(slow, num_workers=n, max_in_flight=args.ray_in_flight)  # same cluster
                try:
                    q = search(backend, n, args.per_worker, Path(tmp) / "ray", slow)
                finally:
                    backend.close()
            finally:
                warm.close()
            print(line(f"ray x{n}", q), f"[Ray and {n} workers started in {started:.1f}s]")
    return 0


class PidReward(SleepingReward):
    """Warm-up child: sleeps ``median_s`` and reports the worker's process id."""

    def __call__(self, genotype, seed: int = 0) -> dict:
        time.sleep(self.median_s)
        return {"reward": 0.0, "params": os.getpid()}


def _any_genotype() -> dict:
    from nasnet_det.genotypes import NASNET_A

    return NASNET_A.to_dict()


if __name__ == "__main__":
    raise SystemExit(main())
