"""What the stages plan with (:meth:`Stage.plan`; :func:`nasnet_det.pipeline.planner.make_plan` asks each stage).

A stage's plan loads its config as the stage will run it (classification: ``load_config(CONFIG_FILE, OPTS + the
pipeline's network opts)``, :func:`plan_classification`; detection: ``load_cfg(get_nasnet_cfg(), CONFIG_FILE,
opts)``, :func:`load_detection`), turns it into the effective settings with :mod:`nasnet_det.engine.scaling`, and
checks the devices and the data (:func:`device_checks`, :func:`throughput_rows`, ...). The search's plan is here
too (:func:`plan_search`): its YAML is read as plain data, since ``nasnet_det`` never imports ``search``.
The stages import this module inside ``plan`` (it loads torch; the pipeline driver does not).
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any

import yaml
from fvcore.common.config import CfgNode as CN

from nasnet_det.engine.scaling import classification_schedule
from nasnet_det.pipeline.backends import Workers, device_kind
from nasnet_det.pipeline.launch import StageError
from nasnet_det.pipeline.paths import resolve_path
from nasnet_det.pipeline.plan import Check, PlanContext, StagePlan, hours
from nasnet_det.pipeline.plan_data import DataFound, cifar10_source, imagenet_folders
from nasnet_det.pipeline.throughput import THROUGHPUT_KEYS, stated_throughput
from nasnet_det.utils.errors import bad_input_message
from nasnet_det.utils.mapping import lookup
from nasnet_det.utils.yaml_config import load_config_tree

if TYPE_CHECKING:  # the stages import this module (in their plan()); it imports none of them
    from nasnet_det.pipeline.stages.base import Stage

# The search config keys a plan reads, with search/config.py's defaults (``nasnet_det`` does not import
# ``search``; tests/pipeline/test_plan.py checks them against ``search.config.get_cfg_defaults()``).
SEARCH_DEFAULTS: dict[str, Any] = {
    "SEARCH.STRATEGY": "ppo", "SEARCH.BUDGET": 100, "CHILD.EPOCHS": 1, "CHILD.MAX_STEPS": 0, "CHILD.BATCH_SIZE": 32,
    "CHILD.DEVICE": "auto", "DATA.SOURCE": "folder:datasets/cifar10", "DATA.VAL_SIZE": 5000, "DATA.TRAIN_LIMIT": 0,
    "WORKERS.BACKEND": "local", "WORKERS.NUM_WORKERS": 0, "WORKERS.MAX_IN_FLIGHT": 0,
}
# The strategies that train one weight-sharing supernet instead of children one by one (the search strategies
# whose ``weight_sharing`` is True; tests/pipeline/test_stage_plugins.py checks them against the registry).
WEIGHT_SHARING_STRATEGIES = ("oneshot",)


_PLURALS = {"strategy": "strategies", "child": "children", "process": "processes"}


def plural(n: int, word: str) -> str:
    return f"{n:,} {word if n == 1 else _PLURALS.get(word, word + 's')}"


def config_row(config_file: str, node: str, opts: list[str]) -> tuple[str, str]:
    return "config", config_file + (f" + {node} {list(opts)}" if opts else "")


def throughput_rows(pc: PlanContext, node: str, images: float | None, processes: int, gpu: bool, runs: int = 1
                    ) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The throughput and expected-time rows of a stage that processes ``images`` (None: unknown) ``runs`` times,
    one run after another, on ``processes`` devices, at the images per second per device ``node`` states."""
    value, unit, source = stated_throughput(pc.cfg, node)
    key = THROUGHPUT_KEYS[node][0]
    if value <= 0 or images is None:
        why = f"unknown ({node}.{key} 0)" if value <= 0 else "unknown (the amount of work is not known)"
        return [("throughput", why if value <= 0 else f"{value:g} {unit}; {source}"), ("expected time", why)], \
            {"throughput": {"value": value, "unit": unit, "source": source},
             "expected": {"wall_hours": None, "gpu_hours": None}}
    device_hours = runs * images / value / 3600
    wall = device_hours / processes
    kind = "GPU" if gpu else "CPU-process"
    return [("throughput", f"{value:g} {unit}; {source}"),
            ("expected time", f"{hours(wall)} wall, {device_hours:,.1f} {kind}-hours")], \
        {"throughput": {"value": value, "unit": unit, "source": source},
         "expected": {"wall_hours": wall, "gpu_hours": device_hours if gpu else 0.0, "device_hours": device_hours}}


def device_checks(pc: PlanContext, stage: str, key: str, value: str, workers: Workers,
                  count_key: str) -> tuple[bool, list[Check]]:
    """(whether the stage trains on GPUs, the checks of its devices) for a stage asking ``key value``
    ("cpu" trains on the CPU on purpose; "auto" / "cuda" expect GPUs)."""
    if pc.backend == "ray":
        return _ray_device_checks(pc, stage, key, value, workers)
    if value == "cpu":
        return False, []
    m, checks = pc.machine, []
    if not pc.target.this_machine:
        if not m.cuda:
            checks.append(Check("WARN", stage, f"planned for {plural(workers.per_machine, 'GPU')} per machine; this "
                                               "machine, without a usable GPU, cannot run it"))
        return True, checks
    if not m.cuda:
        what = (f"{key} auto would train on the CPU here ({plural(workers.world_size, 'process')} planned for "
                f"GPUs)" if value == "auto" else f"{key} {value}, but CUDA is not usable here")
        checks.append(Check("FAIL", stage, f"{what}: {m.reason}"))
    elif workers.per_machine > m.gpus:
        checks.append(Check("FAIL", stage, f"{count_key} {workers.per_machine} processes per machine, but this machine "
                                           f"has {plural(m.gpus, 'usable GPU')}"))
    return True, checks


def _ray_cluster_gpus(pc: PlanContext) -> tuple[int | None, str]:
    """The GPUs of the Ray cluster a plan can know, and what it is: planned for ``--gpus`` x ``--nodes``, or the
    local cluster a run starts on this machine (PIPELINE.RAY.ADDRESS ""); None for another cluster's."""
    if not pc.target.this_machine:
        if pc.target.gpus is None:
            return None, "the cluster"
        return pc.target.gpus * (pc.target.nodes or 1), "the planned cluster (--gpus x --nodes)"
    if not pc.cfg.PIPELINE.RAY.ADDRESS:
        return (pc.machine.gpus if pc.machine.cuda else 0), "the local Ray cluster on this machine"
    return None, f"the cluster at {pc.cfg.PIPELINE.RAY.ADDRESS}"


def _ray_device_checks(pc: PlanContext, stage: str, key: str, value: str, workers: Workers
                       ) -> tuple[bool, list[Check]]:
    """What :func:`nasnet_det.pipeline.backends.ray_worker_resources` will ask Ray for, as the plan sees it:
    no GPU for ``key cpu`` (gloo workers), else ``PIPELINE.RAY.GPUS_PER_WORKER`` GPUs per worker."""
    kind = device_kind(value)
    if kind == "cpu":
        return False, []
    gpus_per_worker, n = pc.cfg.PIPELINE.RAY.GPUS_PER_WORKER, workers.world_size
    cluster, what = _ray_cluster_gpus(pc)
    if gpus_per_worker == 0:
        outcome = "trains on the CPU" if kind == "auto" else "fails (no CUDA device)"
        return False, [Check("FAIL", stage, f"PIPELINE.RAY.GPUS_PER_WORKER 0: its {plural(n, 'Ray Train worker')} "
                                            f"{'gets' if n == 1 else 'get'} no GPU, so {key} {value} {outcome}; "
                                            "set PIPELINE.RAY.GPUS_PER_WORKER 1")]
    if kind == "auto" and gpus_per_worker < 0 and cluster == 0:
        return False, [Check("WARN", stage, f"PIPELINE.RAY.GPUS_PER_WORKER -1 (auto) and {what} has no GPU: its "
                                            f"{plural(n, 'Ray Train worker')} train on the CPU ({key} auto)")]
    per_worker = 1 if gpus_per_worker < 0 else gpus_per_worker
    needed = per_worker * n
    if cluster is not None and cluster < needed:
        return True, [Check("WARN", stage, f"{plural(n, 'Ray Train worker')} x {per_worker:g} GPU(s) "
                                           f"(PIPELINE.RAY.GPUS_PER_WORKER {gpus_per_worker:g}) need {needed:g} GPUs "
                                           f"but {what} has {cluster}: the stage waits until GPU nodes join")]
    return True, []


def multi_machine_check(pc: PlanContext, stage: str, machines: int, missing: bool, keys: str) -> list[Check]:
    """A multi-machine launch of the local backend needs a rendezvous and one command per machine."""
    if pc.backend != "local" or machines <= 1 or not missing:
        return []
    return [Check("FAIL" if pc.target.this_machine else "WARN", stage,
                  f"{plural(machines, 'machine')} with the local backend: run the same command on each, with {keys}")]


def launch_row(pc: PlanContext, workers: Workers, launcher: str, gpu: bool) -> tuple[str, str]:
    how = (f"Ray Train workers, {'GPUs, nccl' if gpu else 'no GPU, gloo'}" if pc.backend == "ray" else
           launcher if workers.world_size > 1 else "one process")
    return "processes", (f"{workers.world_size} = {workers.per_machine} per machine x "
                         f"{plural(workers.machines, 'machine')} ({how})")


def _load_classification(stage: str, node: str, config_file: str, opts: list[str], dataset: str) -> CN:
    from nasnet_det.classification.config import load_config

    try:
        return load_config(resolve_path(config_file), [*opts, "DATA.DATASET", dataset])
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise StageError(stage, f"{node} {config_file} with its opts: {e.args[0] if e.args else e}") from None


def _classification_data(tcfg: CN, count: bool) -> DataFound:
    d = tcfg.DATA
    if d.DATASET == "cifar10":
        return cifar10_source(d.SOURCE, "DATA.SOURCE", d.VAL_SIZE, d.LIMIT_TRAIN)
    if d.TRAIN_DIR:
        return imagenet_folders(d.TRAIN_DIR, d.VAL_DIR, count=count)
    if d.IMAGE_SAMPLE:
        from nasnet_det.data.cifar import CIFAR10_CLASSES

        n = len(CIFAR10_CLASSES) * d.SAMPLE_TRAIN_PER_CLASS
        return DataFound(f"the embedded {d.IMAGE_SAMPLE} sample written as class folders ({n:,} train images)", n)
    n = d.FAKE_CLASSES * d.FAKE_TRAIN_PER_CLASS
    return DataFound(f"generated class folders ({d.FAKE_CLASSES} classes, {n:,} train images)", n)


def plan_classification(pc: PlanContext, stage: str, node: str, config_key: str, config_file: str,
                        opts: list[str], pipeline_opts: list[str], dataset: str, workers: Workers, count_key: str,
                        runs: int = 1) -> StagePlan:
    """The plan of a classification training (``dataset``, by its config file + ``pipeline_opts`` + ``opts``) on
    ``workers``, ``runs`` times one after another (the re-ranking trains each candidate)."""
    tcfg = _load_classification(stage, config_key, config_file, [*pipeline_opts, *opts], dataset)
    data = _classification_data(tcfg, pc.count_images)
    s = classification_schedule(tcfg.SOLVER, workers.world_size, data.images)
    gpu, checks = device_checks(pc, stage, "TRAIN.DEVICE", tcfg.TRAIN.DEVICE, workers, count_key)
    if s.reference_batch > 0:
        factor = (f"{s.global_batch}/{s.reference_batch}" if s.lr_scaling == "linear" else
                  f"sqrt({s.global_batch}/{s.reference_batch})" if s.lr_scaling == "sqrt" else "1 (LR_SCALING none)")
        lr = f"{s.lr:.6g} = BASE_LR {s.base_lr:g} x {factor}"
        steps = (f"{s.steps:,} = SOLVER.MAX_STEPS {tcfg.SOLVER.MAX_STEPS:,} of {s.reference_batch:,} images, as steps "
                 f"of {s.global_batch:,}" if tcfg.SOLVER.MAX_STEPS > 0 else None)
    else:
        lr = f"{s.lr:.6g} = BASE_LR as written (SOLVER.REFERENCE_BATCH_SIZE 0)"
        steps = f"{s.steps:,} = SOLVER.MAX_STEPS as written" if tcfg.SOLVER.MAX_STEPS > 0 else None
    steps = steps or f"{s.steps:,} = SOLVER.EPOCHS {tcfg.SOLVER.EPOCHS} x {s.steps_per_epoch:,} steps per epoch"
    rows = [config_row(config_file, f"{node}.OPTS" if node != "SELECT" else "SELECT.RERANK_OPTS", opts),
            launch_row(pc, workers, "torchrun", gpu),
            ("devices", f"{plural(workers.world_size, 'GPU')}, one per process (TRAIN.DEVICE {tcfg.TRAIN.DEVICE})"
             if gpu else f"CPU (TRAIN.DEVICE {tcfg.TRAIN.DEVICE})"),
            ("batch", f"{s.batch_per_process} per device x {s.accum_steps} accumulation x {workers.world_size} = "
                      f"{s.global_batch:,} images per step (global)"),
            ("learning rate", f"{lr}; {s.lr_per_image:.6g} per image"),
            ("steps", steps),
            ("epochs", (f"{s.epochs:.1f} of {s.train_images:,} training images" + (
                f" (SOLVER.EPOCHS {tcfg.SOLVER.EPOCHS} passes, each without its last partial step)"
                if tcfg.SOLVER.MAX_STEPS <= 0 else "")) if s.train_images else "unknown"),
            ("warm-up", f"{s.warmup_steps:,} steps (SOLVER.WARMUP_EPOCHS {tcfg.SOLVER.WARMUP_EPOCHS:g})"),
            ("EMA decay", f"{s.ema_decay:.8g} per step" if s.ema_decay > 0 else "none"),
            ("AMP", f"{tcfg.TRAIN.AMP} (TRAIN.AMP)")]
    images = s.steps * s.global_batch
    more, values = throughput_rows(pc, node, float(images) if images else None, workers.world_size, gpu, runs)
    rows += [*more, ("data", data.summary)]
    checks += [Check("FAIL", stage, p) for p in data.problems] + [Check("WARN", stage, r) for r in data.remarks]
    return StagePlan(stage, rows, {"processes": workers.world_size, "per_machine": workers.per_machine,
                                   "machines": workers.machines, "device": "cuda" if gpu else "cpu",
                                   "schedule": s.as_dict(), "amp": tcfg.TRAIN.AMP, "runs": runs, **values,
                                   "data": {"summary": data.summary, "train_images": data.images}}, checks)


def search_settings(cfg: CN) -> dict[str, Any]:
    """The search keys the plan reads: SEARCH.CONFIG_FILE (``_BASE_`` merged as the search does), then what the
    pipeline's backend adds (Ray: the children on its cluster), then SEARCH.OPTS, in the order SearchStage.run
    passes them (SEARCH.OPTS win)."""
    c = cfg.SEARCH
    path = resolve_path(c.CONFIG_FILE)
    if not path.is_file():
        raise StageError("search", f"SEARCH.CONFIG_FILE {c.CONFIG_FILE!r} does not exist (expected a search YAML)")
    try:  # read as the search reads it: plain YAML, no repeated key, _BASE_ files checked
        raw = load_config_tree(path, python_objects=False).merged
    except (ValueError, FileNotFoundError, yaml.YAMLError) as e:
        raise StageError("search", f"SEARCH.CONFIG_FILE: {bad_input_message(e, str(path))}") from None
    values = {}
    for key, default in SEARCH_DEFAULTS.items():
        found, value = lookup(raw, key)
        values[key] = value if found else default
    opts = [*(["WORKERS.BACKEND", "ray"] if cfg.PIPELINE.BACKEND == "ray" else []), *c.OPTS]
    for key, value in zip(opts[::2], opts[1::2]):
        if key in values:
            try:  # as yacs decodes a command-line value
                values[key] = ast.literal_eval(value) if isinstance(value, str) else value
            except (ValueError, SyntaxError):
                values[key] = value
    return values


def plan_search(pc: PlanContext, stage: Stage) -> StagePlan:
    cfg, name = pc.cfg, stage.name
    if cfg.SEARCH.GENOTYPE:
        return StagePlan(name, [("runs", f"no: SEARCH.GENOTYPE {cfg.SEARCH.GENOTYPE} gives the cell")])
    v = search_settings(cfg)
    strategies = [x.strip().lower() for x in str(v["SEARCH.STRATEGY"]).split(",") if x.strip()]
    checks: list[Check] = []
    backend, on_cpu = v["WORKERS.BACKEND"], v["CHILD.DEVICE"] == "cpu"
    per_child, unit, source = stated_throughput(cfg, "SEARCH")
    if backend == "ray":  # one child per GPU of the cluster
        gpus = cfg.PRETRAIN.NPROC_PER_NODE * cfg.PRETRAIN.NNODES
        where = ("a Ray cluster of --gpus x --nodes GPUs" if not pc.target.this_machine else
                 f"a Ray cluster, assumed to have as many GPUs as pretraining's {gpus} processes (--gpus / --nodes "
                 "plan another size)")
        workers = gpus
    elif backend == "local":  # one worker per visible GPU of this one machine (NUM_WORKERS 0), else 2 on a CPU
        gpus = (pc.machine.gpus if pc.machine.cuda else 0) if pc.target.this_machine else \
            (pc.target.gpus if pc.target.gpus is not None else cfg.PRETRAIN.NPROC_PER_NODE)
        workers = v["WORKERS.NUM_WORKERS"] or gpus or 2
        where = f"local worker processes on one machine (WORKERS.NUM_WORKERS {v['WORKERS.NUM_WORKERS']})"
        if (pc.target.nodes or 1) > 1:
            checks.append(Check("WARN", name, f"WORKERS.BACKEND local runs the children on one machine ({gpus} "
                                              "GPUs), not on all --nodes; WORKERS.BACKEND ray uses them all"))
        if not on_cpu and not pc.machine.cuda:
            if not pc.target.this_machine:
                checks.append(Check("WARN", name, f"planned for {plural(gpus, 'GPU')}; this machine, without a "
                                                  "usable GPU, cannot run it"))
            else:  # a FAIL where the config expects GPUs: CHILD.DEVICE cuda, or a stated GPU throughput
                gpu_time = f"; SEARCH.GPU_HOURS_PER_CHILD {per_child:g} is GPU time" if per_child > 0 else ""
                checks.append(Check("FAIL" if v["CHILD.DEVICE"] != "auto" or per_child > 0 else "WARN", name,
                                    f"CHILD.DEVICE {v['CHILD.DEVICE']}: the children train on the CPU here "
                                    f"({workers} CPU workers){gpu_time}: {pc.machine.reason}"))
    else:
        gpus, workers, where = (1 if pc.machine.cuda else 0), 1, f"in the search's own process ({backend})"
    parallel = min(workers, v["WORKERS.MAX_IN_FLIGHT"]) if v["WORKERS.MAX_IN_FLIGHT"] else workers
    in_use = 0 if on_cpu else min(parallel, gpus)
    data = cifar10_source(v["DATA.SOURCE"], "DATA.SOURCE", v["DATA.VAL_SIZE"], v["DATA.TRAIN_LIMIT"],
                          held_out_of_folder=True)
    rows = [config_row(cfg.SEARCH.CONFIG_FILE, "SEARCH.OPTS", list(cfg.SEARCH.OPTS)),
            ("strategy", ", ".join(strategies))]
    values: dict[str, Any] = {"strategies": strategies, "workers": parallel, "gpus": in_use}
    if any(s in WEIGHT_SHARING_STRATEGIES for s in strategies):  # a supernet trained once, no child one by one
        rows += [("children", "none trained one by one (the weight-sharing supernet: ONESHOT.*)"),
                 ("expected time", "unknown (SEARCH.GPU_HOURS_PER_CHILD does not apply to a one-shot search)")]
        values["expected"] = {"wall_hours": None, "gpu_hours": None}
    else:
        children = int(v["SEARCH.BUDGET"]) * len(strategies)
        n_train, batch = data.images, int(v["CHILD.BATCH_SIZE"])
        steps = max(1, n_train // batch) * int(v["CHILD.EPOCHS"]) if n_train else 0
        if v["CHILD.MAX_STEPS"] > 0:
            steps = min(steps, int(v["CHILD.MAX_STEPS"])) if steps else int(v["CHILD.MAX_STEPS"])
        epochs = steps * batch / n_train if n_train else 0.0
        rows += [("children", f"{children:,} = SEARCH.BUDGET {v['SEARCH.BUDGET']:,} x "
                              f"{plural(len(strategies), 'strategy')}"),
                 ("where", where),
                 ("in parallel", f"{plural(parallel, 'child')} at a time, on {plural(in_use, 'GPU')}"
                                 if in_use else f"{plural(parallel, 'child')} at a time, on the CPU"),
                 ("per child", f"{steps:,} steps of {batch} images = {epochs:.1f} epochs of {n_train:,} images "
                               f"(CHILD.EPOCHS {v['CHILD.EPOCHS']}, MAX_STEPS {v['CHILD.MAX_STEPS']}); CHILD.DEVICE "
                               f"{v['CHILD.DEVICE']}"),
                 ("throughput", f"{per_child:g} {unit}; {source}" if per_child > 0 else
                  "unknown (SEARCH.GPU_HOURS_PER_CHILD 0)")]
        gpu_hours = children * per_child
        if per_child > 0 and in_use > 0:
            wall = gpu_hours / in_use
            rows.append(("expected time", f"{hours(wall)} wall = {children:,} children x {per_child:g} GPU-hours / "
                                          f"{plural(in_use, 'GPU')}; {gpu_hours:,.0f} GPU-hours"))
            values["expected"] = {"wall_hours": wall, "gpu_hours": gpu_hours, "device_hours": gpu_hours}
        else:
            rows.append(("expected time", "unknown" + (" (no GPU to run the children)" if per_child > 0 else "")))
            values["expected"] = {"wall_hours": None, "gpu_hours": None}
        values.update(children=children, child_steps=steps, child_epochs=epochs, train_images=n_train)
    rows.append(("data", data.summary))
    checks += [Check("FAIL", name, p) for p in data.problems]
    return StagePlan(name, rows, values, checks)


def load_detection(stage: str, config_file: str, opts: list[str]) -> CN:
    """The detectron2 config of a detection stage, loaded as ``tools/train_net.py`` loads it."""
    from nasnet_det.config import load_cfg
    from nasnet_det.detection.config import get_nasnet_cfg

    try:
        return load_cfg(get_nasnet_cfg(), resolve_path(config_file), opts)
    except (ValueError, KeyError, AssertionError, FileNotFoundError) as e:
        raise StageError(stage, f"DETECT.CONFIG_FILE {config_file} with its opts: {e.args[0] if e.args else e}"
                         ) from None
