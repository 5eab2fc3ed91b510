#!/usr/bin/env python
"""The checks of bench/gpu.sh that are not benchmarks (each is one of its steps; ``--help`` of each says more):

    python bench/gpu_checks.py gate          # exit 0 (and the GPU's name) when CUDA is usable, else why, in one line
    python bench/gpu_checks.py env           # the driver, torch's CUDA build, each device, bf16 support
    python bench/gpu_checks.py train-resume --task classification   # nasnet-det train, bf16, kill -9, --resume
    python bench/gpu_checks.py train-resume --task detection        # tools/train_net.py, AMP, kill -9, rerun
    python bench/gpu_checks.py workers       # the GPU each local search worker lands on (SEARCH.OBJECTIVE latency)
    python bench/gpu_checks.py report --steps STEPS.tsv --log LOG   # the steps' outcomes, into the results file

Each check writes its section under ``checks`` of the results file (``--results``, default ``$BENCH_RESULTS_JSON``,
which bench/gpu.sh sets; the benchmark scripts write their rows under ``scripts`` of the same file). They run on
a CPU too (``--device cpu``), which is how they are tested without a GPU. Not a benchmark: ``make bench`` skips it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the results file
def update_results(path: str, key: str, value: Any) -> None:
    """Set ``checks[key]`` (or the top-level ``key`` when it is ``run`` / ``steps``) of the results file
    ``path`` ("": none), under the lock bench/_common.record takes for the same file."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(target.read_text()) if target.is_file() else {}
        if key in ("run", "steps"):
            data[key] = value
        else:
            data.setdefault("checks", {})[key] = value
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
        os.replace(tmp, target)


def tail(path: Path, lines: int = 15) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []


def nvidia_smi(*query: str) -> list[list[str]]:
    """Rows of ``nvidia-smi --query-...=... --format=csv,noheader,nounits`` ([] without nvidia-smi)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [[c.strip() for c in ln.split(",")] for ln in out.stdout.splitlines() if ln.strip()]


# --------------------------------------------------------------------------- gate, env
def gate(args: argparse.Namespace) -> int:
    import warnings

    import torch

    with warnings.catch_warnings():  # an old driver makes torch warn here: the line below says it better
        warnings.simplefilter("ignore")
        usable = torch.cuda.is_available()
    if not usable:
        from nasnet_det.engine.devices import cuda_unavailable_reason

        print(cuda_unavailable_reason())
        return 1
    count, name = torch.cuda.device_count(), torch.cuda.get_device_name(0)
    print((f"{count}x-" if count > 1 else "") + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
    return 0


def torch_build_record() -> dict[str, str]:
    """scripts/setup_env.sh's record of the torch build it installed (.venv/.torch-build)."""
    path = Path(os.environ.get("VENV", REPO / ".venv")) / ".torch-build"
    if not path.is_file():
        return {}
    return dict(ln.split("=", 1) for ln in path.read_text().splitlines() if "=" in ln)


def env(args: argparse.Namespace) -> int:
    import torch

    from nasnet_det.engine.devices import cuda_unavailable_reason, nvidia_driver

    info: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda or "none (CPU-only build)",
                            "setup_record": torch_build_record(), "driver": nvidia_driver() or None,
                            "nvidia_smi": [", ".join(r) for r in nvidia_smi(
                                "--query-gpu=index,name,driver_version,memory.total,compute_cap")]}
    print(f"torch {info['torch']}, built for CUDA {info['torch_cuda']}; setup record: {info['setup_record'] or 'none'}")
    print(f"NVIDIA driver: {info['driver'] or 'no nvidia-smi answer'}")
    for line in info["nvidia_smi"]:
        print(f"  nvidia-smi: {line}")
    status = 0
    if not torch.cuda.is_available():
        info["cuda_usable"], info["reason"] = False, cuda_unavailable_reason()
        print(f"no usable CUDA: {info['reason']}")
        status = 1
    else:
        info["cuda_usable"] = True
        info["devices"] = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                                    "memory_gib": round(p.total_memory / 2**30, 1)})
            print(f"cuda:{i}: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB")
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        # What the trainers' TRAIN.AMP bf16 does: a convolution under bfloat16 autocast, on the GPU.
        conv = torch.nn.Conv2d(8, 8, 3).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = conv(torch.randn(2, 8, 16, 16, device="cuda"))
        info["bf16_autocast_dtype"] = str(y.dtype)
        info["bf16_autocast_finite"] = bool(torch.isfinite(y.float()).all())
        ok = info["bf16_supported"] and y.dtype == torch.bfloat16 and info["bf16_autocast_finite"]
        print(f"bf16: supported {info['bf16_supported']}, autocast conv gives {y.dtype}"
              f"{'' if info['bf16_autocast_finite'] else ' (not finite)'}"
              f"{'' if ok else ': the bf16 steps below will not run as the trainers ship them'}")
        status = 0 if ok else 1
    update_results(args.results, "env", info)
    return status


# --------------------------------------------------------------------------- train, kill -9, resume
def train_commands(args: argparse.Namespace, out: Path) -> tuple[list[str], list[str]]:
    """The first run (from scratch) and the resuming run, with the CLIs' documented flags."""
    py = sys.executable
    if args.task == "classification":
        base = [py, "tools/train_cifar.py", "--config-file", "configs/train/cifar10_smoke.yaml", "--output-dir",
                str(out)]
        opts = ["TRAIN.DEVICE", args.device, "TRAIN.AMP", args.amp, "SOLVER.MAX_STEPS", str(args.steps),
                "TRAIN.CHECKPOINT_PERIOD", str(args.checkpoint_period), "TRAIN.EVAL_PERIOD", str(args.steps // 2),
                "TRAIN.TENSORBOARD", "False"]
        return base + ["--no-resume", *opts], base + ["--resume", *opts]
    base = [py, "tools/train_net.py", "--config-file", "configs/detection/smoke-nasnet-c4.yaml"]
    opts = ["MODEL.DEVICE", args.device, "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", str(args.steps),
            "SOLVER.CHECKPOINT_PERIOD", str(args.checkpoint_period), "SOLVER.STEPS", f"({args.steps * 3 // 4},)",
            "OUTPUT_DIR", str(out)]
    return base + ["--no-resume", *opts], base + opts  # without --no-resume it resumes from the last checkpoint


def run_killed_after_checkpoint(cmd: list[str], out: Path, log: Path) -> tuple[str, int | None, float]:
    """Run ``cmd`` and kill it (SIGKILL) as soon as it has written its first checkpoint (``last_checkpoint``
    names it): the checkpoint's name ("" if the run ended first), the run's exit code if it ended, seconds."""
    marker = out / "last_checkpoint"
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if marker.is_file() and marker.read_text().strip():
                proc.kill()
                proc.wait()
                return marker.read_text().strip(), None, time.perf_counter() - start
            time.sleep(0.02)
    return "", proc.returncode, time.perf_counter() - start


def verify_resumed_run(task: str, steps: int, out: Path, log_text: str) -> tuple[dict[str, Any], str]:
    """What the resuming run did (resumed at, final step, result) and "" or why it is wrong."""
    if task == "classification":
        m = re.search(r"resumed from \S+ at step (\d+)", log_text)
        final_path = out / "final_metrics.json"
        final = json.loads(final_path.read_text()) if final_path.is_file() else {}
        seen = {"resumed_at": int(m.group(1)) if m else None, "final_step": final.get("step"),
                "top1": final.get("top1")}
        if m is None:
            return seen, "the second run did not say it resumed ('resumed from ... at step N')"
        if final.get("step") != steps or not math.isfinite(float(final.get("top1", math.nan))):
            return seen, f"final_metrics.json {final or 'missing'}: expected step {steps} and a finite top-1"
        return seen, ""
    m = re.search(r"resuming from iteration (\d+)", log_text)
    rows = []
    metrics = out / "metrics.json"
    if metrics.is_file():
        rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip().startswith("{")]
    trained = [r for r in rows if "total_loss" in r]  # the evaluation's row has no loss
    losses = [r["total_loss"] for r in trained]
    seen = {"resumed_at": int(m.group(1)) if m else None,
            "final_iteration": max((r.get("iteration", -1) for r in trained), default=None),
            "last_total_loss": losses[-1] if losses else None, "model_final": (out / "model_final.pth").is_file()}
    if m is None:
        return seen, "the second run did not say it resumed ('resuming from iteration N')"
    if seen["final_iteration"] != steps - 1 or not seen["model_final"]:
        return seen, f"expected iteration {steps - 1} in metrics.json and model_final.pth, got {seen}"
    if not all(math.isfinite(v) for v in losses):
        return seen, "a total_loss in metrics.json is not finite"
    return seen, ""


def train_resume(args: argparse.Namespace) -> int:
    out = Path(tempfile.mkdtemp(prefix=f"gpu_check_{args.task}_"))
    first, second = train_commands(args, out)
    section: dict[str, Any] = {"task": args.task, "device": args.device, "steps": args.steps,
                               "first": " ".join(first[1:]), "second": " ".join(second[1:])}
    try:
        checkpoint, rc, seconds = run_killed_after_checkpoint(first, out, out / "first.log")
        section.update(killed_after=checkpoint, first_seconds=round(seconds, 1))
        print(f"{args.task}: first run {'killed (SIGKILL) after ' + checkpoint if checkpoint else 'ended'} "
              f"in {seconds:.1f} s", flush=True)
        if not checkpoint:
            why = (f"the first run ended (exit {rc}) before it wrote a checkpoint that could be killed; its last "
                   "lines: " + " | ".join(tail(out / "first.log", 8)))
            section.update(ok=False, reason=why)
        else:
            start = time.perf_counter()
            with open(out / "second.log", "w") as f:
                rc = subprocess.run(second, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
            section["second_seconds"] = round(time.perf_counter() - start, 1)
            text = (out / "second.log").read_text(errors="replace")
            if (out / "log.txt").is_file():  # detectron2's log of the run
                text += (out / "log.txt").read_text(errors="replace")
            seen, why = verify_resumed_run(args.task, args.steps, out, text)
            section.update(seen)
            if rc != 0:
                why = f"the resuming run exited {rc}; its last lines: " + " | ".join(tail(out / "second.log", 8))
            section.update(ok=not why, reason=why or None)
            if why:
                section["second_tail"] = tail(out / "second.log", 30)
        print(f"{args.task} on {args.device} ({args.amp if args.task == 'classification' else 'SOLVER.AMP'}): "
              + ("ok: " + ", ".join(f"{k} {section.get(k)}" for k in ("killed_after", "resumed_at", "final_step",
                                                                         "final_iteration", "top1",
                                                                         "last_total_loss") if k in section)
                 if section["ok"] else f"FAILED: {section['reason']}"), flush=True)
    finally:
        update_results(args.results, f"train_resume_{args.task}", section)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        else:
            print(f"outputs kept in {out}")
    return 0 if section.get("ok") else 1


# --------------------------------------------------------------------------- search workers
def workers(args: argparse.Namespace) -> int:
    import torch

    from nasnet_det.genotypes import get_genotype
    from search.config import load_cfg
    from search.objective import with_objective
    from search.runner import build_child_evaluator
    from search.workers import Job, make_backend

    count = args.workers or min(4, torch.cuda.device_count()) or 2
    cfg = load_cfg(str(REPO / "configs" / "search" / "latency_smoke.yaml"),
                   ["SEARCH.OBJECTIVE", "latency", "SEARCH.LATENCY.ESTIMATOR", args.estimator,
                    "WORKERS.NUM_WORKERS", count, *args.opts])
    evaluator = with_objective(build_child_evaluator(cfg), cfg)  # as the search runner builds it
    backend = make_backend("local", evaluator, count, max_retries=0)
    genotype = get_genotype("nasnet_a").to_dict()
    section: dict[str, Any] = {"workers": count, "cuda_devices": torch.cuda.device_count(), "overrides": args.opts,
                               "estimator": args.estimator, "planned": list(getattr(backend, "devices", []))}
    try:
        backend.start()
        for i in range(count):
            backend.submit(Job(i, genotype, i))
        results = []
        while len(results) < count:
            results += backend.wait()
        pids = backend.worker_pids()
        # The GPUs each worker process holds a CUDA context on, while the workers are still alive.
        index_of = {uuid: idx for idx, uuid in nvidia_smi("--query-gpu=index,uuid")}
        held: dict[int, list[str]] = {}
        for pid, uuid in nvidia_smi("--query-compute-apps=pid,gpu_uuid"):
            if pid.isdigit():
                held.setdefault(int(pid), []).append(f"cuda:{index_of.get(uuid, uuid)}")
    finally:
        backend.close()
    section["results"] = [{"eval_id": r.eval_id, "status": r.status, "reward": r.reward, "error": r.error}
                          for r in sorted(results, key=lambda r: r.eval_id)]
    section["worker_gpus"] = {str(pid): sorted(held.get(pid, [])) for pid in pids}
    for i, pid in enumerate(pids):
        planned = section["planned"][i] if i < len(section["planned"]) else "?"
        gpus = ", ".join(section["worker_gpus"][str(pid)]) or ("none seen by nvidia-smi" if index_of else "n/a")
        print(f"worker {i} (pid {pid}): planned {planned}; holds {gpus}")
    failed = [r for r in section["results"] if r["status"] != "ok"]
    for r in failed:
        print(f"child {r['eval_id']}: {r['status']}: {r['error']}")
    used = [g for gs in section["worker_gpus"].values() for g in gs]
    if index_of and held:
        section["distinct_gpus"] = len(set(used))
        print(f"{count} worker(s) on {len(set(used))} distinct GPU(s): "
              + ("each on its own" if all(len(g) == 1 for g in section["worker_gpus"].values())
                 and len(set(used)) == len(used) == count else "shared or several per worker (see above)"))
    elif index_of:
        print("nvidia-smi lists none of the workers' processes (another PID namespace?): devices not seen")
    else:
        print("no nvidia-smi: which GPU each worker holds cannot be seen")
    update_results(args.results, "search_workers", section)
    return 1 if failed else 0


# --------------------------------------------------------------------------- the run's report
def report(args: argparse.Namespace) -> int:
    """Each step of bench/gpu.sh (a TSV line: name, cap, exit code, seconds, status, command) into the results
    file, with the run's facts; prints the summary and where the files are."""
    steps = []
    for line in Path(args.steps).read_text().splitlines():
        name, cap, rc, seconds, status, command = line.split("\t", 5)
        steps.append({"step": name, "cap_s": int(cap), "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                      "seconds": float(seconds) if seconds else None, "status": status, "command": command})
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    run = {"budget_s": args.budget, "setup_s": args.setup_seconds, "log": args.log,
           "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
           "git_commit": commit.stdout.strip() or None, "host": os.uname().nodename}
    update_results(args.results, "steps", steps)
    update_results(args.results, "run", run)
    print("\nstep           cap    took  status")
    for s in steps:
        took = f"{s['seconds']:.0f} s" if s["seconds"] is not None else "-"
        print(f"{s['step']:<14} {s['cap_s']:>3} s {took:>6}  {s['status']}")
    if args.results:
        print(f"results: {args.results}\nlog:     {args.log}")
    return 1 if any(s["status"].startswith(("failed", "timed out")) for s in steps) else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=os.environ.get("BENCH_RESULTS_JSON", ""),
                   help="results file to write the check's section to (default $BENCH_RESULTS_JSON; '': none)")
    sub = p.add_subparsers(dest="check", required=True)
    sub.add_parser("gate", help="exit 0 and print the GPU's name when CUDA is usable, else print why (exit 1)")
    sub.add_parser("env", help="driver, torch build, devices, bf16 support")
    t = sub.add_parser("train-resume", help="train on the GPU, kill -9 after the first checkpoint, resume to the end")
    t.add_argument("--task", choices=("classification", "detection"), required=True)
    t.add_argument("--device", default="cuda", help="TRAIN.DEVICE / MODEL.DEVICE (cpu: the same check on a CPU)")
    t.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "none"), help="classification TRAIN.AMP")
    t.add_argument("--steps", type=int, default=0, help="SOLVER.MAX_STEPS / MAX_ITER (default 200 / 60)")
    t.add_argument("--checkpoint-period", type=int, default=0, help="default 25 / 10")
    t.add_argument("--keep", action="store_true", help="keep the runs' output folder")
    w = sub.add_parser("workers", help="the GPU each local search worker holds (SEARCH.OBJECTIVE latency)")
    w.add_argument("--workers", type=int, default=0, help="default: min(4, CUDA devices), 2 without CUDA")
    w.add_argument("--estimator", default="flops", choices=("flops", "measure", "lut"),
                   help="SEARCH.LATENCY.ESTIMATOR (default flops: nothing timed)")
    w.add_argument("opts", nargs=argparse.REMAINDER, help="search config overrides (KEY VALUE) on "
                   "configs/search/latency_smoke.yaml")
    r = sub.add_parser("report", help="bench/gpu.sh's steps into the results file, and a summary")
    r.add_argument("--steps", required=True, help="TSV: name, cap, exit code, seconds, status, command")
    r.add_argument("--log", default="")
    r.add_argument("--budget", type=int, default=0)
    r.add_argument("--setup-seconds", type=float, default=None)
    return p


def train_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """``train-resume``'s steps and checkpoint period for its task, when not given."""
    args.steps = args.steps or (200 if args.task == "classification" else 60)
    args.checkpoint_period = args.checkpoint_period or (25 if args.task == "classification" else 10)
    if not 0 < args.checkpoint_period < args.steps:
        raise SystemExit(f"error: --checkpoint-period {args.checkpoint_period} must be in 1..{args.steps - 1}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check == "train-resume":
        train_defaults(args)
    sys.path.insert(0, str(REPO))
    return {"gate": gate, "env": env, "train-resume": train_resume, "workers": workers, "report": report}[
        args.check](args)


if __name__ == "__main__":
    raise SystemExit(main())
