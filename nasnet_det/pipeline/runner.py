"""Run the stages in order, deciding for each from its manifest: skip, resume, or start over.

* finished, with the same settings and the same input checksums, its outputs as it left them: skipped;
* interrupted (``running``, e.g. after kill -9) or ``failed`` with the same settings and inputs: rerun into
  the same folder, where the tool resumes from its own journal / checkpoint;
* settings or inputs changed: the folder is cleared and the stage runs afresh; a later stage reruns when what it
  reads changed (its inputs' checksums), so an earlier stage redone to the same files leaves it finished.

Nothing finished is lost to a damaged file:

* a finished stage counts as finished only while its output files match the size and SHA-256 recorded when it
  finished; otherwise it runs again into its folder (a tool with its own resume repairs it from its checkpoints),
  said in one line. Outputs a stage keeps only as a record (the search's journal) are said and left as they are;
* a stage's inputs (earlier stages' outputs) are checked against what their stage recorded before its folder
  is touched: a damaged one stops the pipeline with one line naming the file, the folder left intact;
* an unreadable manifest is said in one line and the stage runs again into its folder, resuming its own
  checkpoints (its folder is not cleared: what it holds is unknown, not outdated).

A stage's ``wall_seconds_total`` counts every attempt: an interrupted or failed one records its time when it
ends; one that could not (kill -9, a crash) is counted by the next run from its recorded start to the newest
file it wrote in the stage's folder (its output in ``stage.log``, checkpoints, the journal).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fvcore.common.config import CfgNode as CN

from nasnet_det.pipeline.launch import StageError
from nasnet_det.pipeline.manifest import (
    MANIFEST_NAME,
    atomic_write_json,
    file_mismatch,
    file_record,
    read_manifest,
    read_manifest_checked,
    settings_hash,
    sha256_file,
    write_manifest,
)
from nasnet_det.pipeline.plan import PLAN_NAME, Plan
from nasnet_det.pipeline.stages import Context, Stage, pipeline_stages, stage_names
from nasnet_det.utils.errors import BadInputError, check_output_dir
from nasnet_det.utils.io import DiskFullError, exclusive_lock, remove_stale_tmp


def select_stages(start: str | None = None, until: str | None = None, only: str | None = None) -> list[str]:
    """The stage names ``--from``/``--until``/``--only`` pick, in order."""
    names = stage_names()
    for flag, name in (("--from", start), ("--until", until), ("--only", only)):
        if name is not None and name not in names:
            raise ValueError(f"{flag} {name!r}: unknown stage; the stages are {', '.join(names)}")
    if only:
        if start or until:
            raise ValueError("--only cannot be combined with --from / --until")
        return [only]
    lo = names.index(start) if start else 0
    hi = names.index(until) if until else len(names) - 1
    if lo > hi:
        raise ValueError(f"--from {start} comes after --until {until}")
    return names[lo:hi + 1]


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def _relative(value: Any, root: Path) -> Any:
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, str) and os.path.isabs(value):
        try:
            return str(Path(value).relative_to(root))
        except ValueError:
            return value
    return value


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """One pipeline per output folder at a time (a second one would interleave the same stages)."""
    check_output_dir(out)  # an OUTPUT_DIR that is a file, or unwritable: one line naming it
    with exclusive_lock(out / ".pipeline.lock", f"another pipeline is running in {out} (it holds "
                                                 f"{out / '.pipeline.lock'})"):
        yield


def time_spent_before(prev: dict[str, Any], workdir: Path) -> float:
    """Seconds the earlier attempts of a stage took, from its last manifest. An attempt that ended (done,
    failed, interrupted) recorded its total; one killed before it could (status still ``running``) lasted from
    its ``attempt_started_at`` to the newest file it left in ``workdir`` (top level: stage.log, which gets the
    tool's output as it comes, checkpoints, the journal), not to now: the time the job was down is no work."""
    if "wall_seconds_total" in prev:
        return float(prev["wall_seconds_total"])
    before = float(prev.get("wall_seconds_before", 0.0))
    start = prev.get("attempt_started_at")
    if not isinstance(start, (int, float)):  # a manifest of an earlier version: its time is unknown
        return before
    last = start
    with os.scandir(workdir) as entries:
        for entry in entries:
            try:
                last = max(last, entry.stat(follow_symlinks=False).st_mtime)
            except OSError:  # removed meanwhile
                continue
    return before + max(0.0, last - start)


class Pipeline:
    def __init__(self, cfg: CN, quiet: bool = False, log=None, config_file: str = ""):
        self.ctx = Context(cfg, Path(cfg.OUTPUT_DIR).resolve(), quiet)
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.config_file = config_file
        self.plan: Plan | None = None

    def say(self, msg: str) -> None:
        self._log(f"[pipeline] {msg}")

    def run(self, stages: list[str] | None = None, force: bool = False) -> dict[str, str]:
        """Run the chosen stages (all by default); returns ``{stage: what happened}``."""
        all_stages = pipeline_stages()
        chosen = stages or [s.name for s in all_stages]
        done: dict[str, str] = {}
        t0 = time.time()
        with output_lock(self.ctx.out), contextlib.closing(self.ctx.backend):  # a local Ray cluster stops at the end
            self.say(f"output: {self.ctx.out}; stages: {', '.join(chosen)}")
            leftovers = self.ctx.backend.stop_leftovers(self.ctx.out)  # of a run that was killed (kill -9)
            if leftovers:
                self.say(leftovers)
            # temporaries of our atomic writes (manifests, selection.json, ...) that a kill interrupted
            for folder in [self.ctx.out, *(self.ctx.stage_dir(s.name) for s in all_stages)]:
                remove_stale_tmp(folder)
            for stage in all_stages:  # every stage's config loads, before hours of work in the earlier ones
                if stage.name in chosen and stage.enabled(self.ctx):
                    stage.settings(self.ctx)
                    stage.check(self.ctx)
            self._plan([s.name for s in all_stages if s.name in chosen])
            for stage in all_stages:
                if stage.name not in chosen:
                    continue
                if not stage.enabled(self.ctx):
                    self.say(f"{stage.name}: disabled ({stage.name.upper()}.ENABLED False)")
                    done[stage.name] = "disabled"
                    continue
                # A later stage is not forced when an earlier one reran: its inputs' checksums say whether what
                # it reads changed (a stage repaired to the same files must not cost the finished ones after it).
                done[stage.name] = self._run_stage(stage, force=force)
        self.say(f"finished in {_fmt(time.time() - t0)}: " + ", ".join(f"{k} {v}" for k, v in done.items()))
        return done

    def _plan(self, chosen: list[str]) -> None:
        """Print what each chosen stage will do (``nasnet-det plan`` for this machine, the data folders listed
        rather than counted, so a start stays quick) and keep it in ``OUTPUT_DIR/plan.json`` and, for each stage
        that runs, in its manifest (never in its settings hash: a plan that changes, e.g. a throughput figure,
        reruns nothing). The plan informs; a plan that cannot be made (unreadable data folder) is one WARNING line
        and the run goes on, so finished stages still skip."""
        from nasnet_det.pipeline.planner import make_plan

        try:
            self.plan = make_plan(self.ctx.cfg, chosen, config_file=self.config_file, ctx=self.ctx,
                                  count_images=False)
        except Exception as e:  # noqa: BLE001 - whatever the plan hits, the stages decide for themselves
            self.say(f"WARNING: no plan ({type(e).__name__}: {e}); the stages run without it")
            return
        self._log(self.plan.format())
        atomic_write_json(self.ctx.out / PLAN_NAME, self.plan.as_dict())

    def _run_stage(self, stage: Stage, force: bool) -> str:
        ctx, workdir = self.ctx, self.ctx.stage_dir(stage.name)
        settings = stage.settings(ctx)
        inputs = stage.inputs(ctx)
        for key, path in inputs.items():
            if not Path(path).is_file():
                raise StageError(stage.name, f"input {key} {path} does not exist")
        checksums = {k: {"path": str(Path(p).resolve()), "sha256": sha256_file(p)} for k, p in inputs.items()}
        self._check_inputs_intact(stage, checksums)  # before anything in the stage's folder is touched
        digest = settings_hash(settings)
        prev, unreadable = read_manifest_checked(workdir)
        resume_note = ", resuming its own checkpoints" if stage.resumes else ""
        if unreadable is not None:
            self.say(f"{stage.name}: {workdir / MANIFEST_NAME} is unreadable ({unreadable}): the stage runs again "
                     f"into its folder{resume_note}")
        same = prev is not None and prev.get("config_hash") == digest and prev.get("inputs") == _relative(
            checksums, ctx.out)
        repair: dict[str, dict[str, Any]] | None = None
        if same and prev.get("status") == "done" and not force:
            damaged = self._damaged_outputs(prev)
            for key, path, why in damaged:
                if key in stage.kept_outputs:
                    self.say(f"{stage.name}: {path} is damaged ({why}); the stage's results are intact, so it stays "
                             f"finished and the file is kept as it is{stage.kept_outputs[key]}")
            redo = [(path, why) for key, path, why in damaged if key not in stage.kept_outputs]
            if not redo:
                self.say(f"{stage.name}: skipped (finished, settings and inputs unchanged)")
                return "skipped"
            more = f" (and {len(redo) - 1} more damaged output(s))" if len(redo) > 1 else ""
            self.say(f"{stage.name}: output {redo[0][0]} is damaged ({redo[0][1]}){more}: the stage runs again "
                     f"into its folder{resume_note}")
            # what the damaged files are now: a rerun that leaves one as it is has not repaired it
            repair = {path: file_record(path) for path, _ in redo if Path(path).is_file()}
        stage.validate(ctx, inputs)  # a bad given artifact stops here, before the folder is cleared
        if prev is not None and (not same or force) and workdir.exists():
            why = "forced" if force and same else "settings or inputs changed"
            self.say(f"{stage.name}: {why}; clearing {workdir} and starting it afresh")
            shutil.rmtree(workdir)
        resumed = (same and prev.get("status") in ("running", "failed", "interrupted") and not force) \
            or repair is not None or unreadable is not None
        attempts = (prev.get("attempts", 0) if prev is not None and resumed else 0) + 1
        t0 = time.time()
        manifest: dict[str, Any] = {
            "stage": stage.name, "status": "running", "config": settings, "config_hash": digest,
            "inputs": _relative(checksums, ctx.out), "outputs": {}, "metrics": {}, "attempts": attempts,
            # where it ran (PIPELINE.BACKEND) and on how many training processes
            "backend": ctx.backend.name, "world_size": stage.workers(ctx).world_size,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            # for the next run, should this attempt be killed before it records its time
            "attempt_started_at": t0,
            "wall_seconds_before": time_spent_before(prev, workdir) if resumed and prev is not None else 0.0,
        }
        planned = self.plan.stage(stage.name) if self.plan is not None else None
        if planned is not None:  # what it was expected to do (not hashed: config_hash is the settings' alone)
            manifest["plan"] = planned.as_dict()
        write_manifest(workdir, manifest)
        self.say(f"{stage.name}: {'resuming (attempt ' + str(attempts) + ')' if resumed else 'start'}")
        try:
            stage.run(ctx, workdir, inputs)
            outputs, metrics = stage.collect(ctx, workdir)
            for path, record in (repair or {}).items():
                if file_mismatch(path, record) is None:
                    raise StageError(stage.name, f"ran again to repair {path}, but left it as it was (damaged); "
                                                 f"rerun it from scratch with --force --only {stage.name}")
        except BaseException as e:
            elapsed = time.time() - t0
            manifest.update(status="failed" if isinstance(e, Exception) else "interrupted",
                            error=str(e) if isinstance(e, Exception) else type(e).__name__,
                            wall_seconds=elapsed, wall_seconds_total=manifest["wall_seconds_before"] + elapsed)
            write_manifest(workdir, manifest)
            self.say(f"{stage.name}: {manifest['status']} after {_fmt(elapsed)}")
            if isinstance(e, Exception) and not isinstance(e, StageError):
                detail = str(e) if isinstance(e, (DiskFullError, BadInputError)) else f"{type(e).__name__}: {e}"
                raise StageError(stage.name, detail) from e
            raise
        elapsed = time.time() - t0
        manifest.update(ctx.backend.run_record(workdir))
        manifest.update(status="done", outputs=_relative(outputs, ctx.out), metrics=metrics,
                        output_checksums=_output_records(outputs, ctx.out),
                        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), wall_seconds=elapsed,
                        wall_seconds_total=manifest["wall_seconds_before"] + elapsed)
        write_manifest(workdir, manifest)
        self.say(f"{stage.name}: done in {_fmt(elapsed)}")
        return "resumed" if resumed else "ran"

    def _damaged_outputs(self, manifest: dict[str, Any]) -> list[tuple[str, str, str]]:
        """``(key, path, how)`` of each output of a finished stage that is no longer what the stage wrote: its
        size and SHA-256 differ from those recorded when it finished (a manifest of an earlier version recorded
        none: missing or empty files then)."""
        damaged = []
        records = manifest.get("output_checksums")
        if isinstance(records, dict):
            for key, record in records.items():
                path = Path(self.ctx.abspath(record.get("path", "")))
                why = file_mismatch(path, record)
                if why is not None:
                    damaged.append((key.split(".")[0], str(path), why))
            return damaged
        for key, p in _output_paths(manifest.get("outputs", {})):
            if p.endswith((".json", ".pth", ".md", ".sqlite")):
                path = Path(self.ctx.abspath(p))
                if not path.is_file() or path.stat().st_size == 0:
                    damaged.append((key.split(".")[0], str(path), "it is empty" if path.is_file() else
                                    "it does not exist"))
        return damaged

    def _check_inputs_intact(self, stage: Stage, checksums: dict[str, dict[str, str]]) -> None:
        """An input that an earlier stage produced must still be the file that stage recorded when it finished;
        a damaged one stops the pipeline here, before this stage's folder is cleared."""
        recorded: dict[str, tuple[str, dict[str, Any]]] = {}
        for other in stage_names():
            if other == stage.name:
                continue
            m = read_manifest(self.ctx.stage_dir(other))
            if m and m.get("status") == "done" and isinstance(m.get("output_checksums"), dict):
                for record in m["output_checksums"].values():
                    recorded[str(Path(self.ctx.abspath(record.get("path", ""))).resolve())] = (other, record)
        for key, current in checksums.items():
            producer, record = recorded.get(current["path"], (None, None))
            if record is not None and current["sha256"] != record.get("sha256"):
                raise StageError(stage.name, f"input {key} {current['path']} is damaged (it is not the file stage "
                                             f"'{producer}' recorded when it finished: "
                                             f"{file_mismatch(current['path'], record)}); "
                                             f"{self.ctx.stage_dir(stage.name)} is left as it is; rerun stage "
                                             f"'{producer}' (--from {producer}) to redo it")


def _output_paths(outputs: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted key, path)`` of every path a stage's outputs name (nested dicts: ``coco_metrics.<dataset>``)."""
    for k, v in outputs.items():
        if isinstance(v, dict):
            yield from _output_paths(v, f"{prefix}{k}.")
        elif isinstance(v, str) and k != "kind":
            yield f"{prefix}{k}", v


def _output_records(outputs: dict[str, Any], root: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of each output file, as the stage left it (the next run checks them before skipping)."""
    return {key: {"path": _relative(str(Path(p).resolve()), root), **file_record(p)}
            for key, p in _output_paths(outputs) if Path(p).is_file()}
