"""The ``nasnet-det`` command.

Built-in subcommands live here (``profile``, ``genotype``, ``run``). Others (``search``, ``train``,
``detect``) are found through the ``nasnet_det.commands`` entry-point group, so that this package never
imports the ``search`` package that depends on it.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from nasnet_det.genotypes import PUBLISHED, get_genotype
from nasnet_det.space import GenotypeError
from nasnet_det.utils.io import DiskFullError, full_disk_error

PLUGIN_GROUP = "nasnet_det.commands"


class BadInputError(ValueError):
    """Bad input found by a check of ours; the message names the file or key and what was expected."""


def _yaml_error_types() -> tuple[type[BaseException], ...]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - yacs depends on PyYAML
        return ()
    return (yaml.YAMLError,)


# NotADirectoryError / PermissionError: an OUTPUT_DIR or data path that is a file or not writable.
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, NotADirectoryError,
                                                     IsADirectoryError, PermissionError, *_yaml_error_types())


def bad_input_message(exc: BaseException) -> str:
    """The one-line text of a bad-input error.

    A KeyError's str() is the repr of its message: use the message. A YAML syntax error becomes
    ``FILE: not valid YAML: PROBLEM at line L, column C``. A bare OS error gets its file name.
    """
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, _yaml_error_types()):
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        name = getattr(mark, "name", None) or "config file"
        return f"{name}: not valid YAML: {problem}{where}"
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def exit_2_on_bad_input(command: Callable[..., int]) -> Callable[..., int]:
    """Bad input (a missing file, a config mismatch, a YAML syntax error, an unwritable OUTPUT_DIR) ends a
    command with one ``error:`` line and exit code 2 instead of a traceback. A diverged training run
    (detectron2's ``FloatingPointError`` for a NaN / inf loss) and a full disk (the line names the file, see
    :class:`nasnet_det.utils.io.DiskFullError`) end with one line and exit code 1."""

    @functools.wraps(command)
    def wrapped(*args, **kwargs) -> int:
        try:
            return command(*args, **kwargs)
        except BAD_INPUT_ERRORS as e:
            logging.getLogger(__name__).debug("details", exc_info=True)
            print(f"error: {bad_input_message(e)}", file=sys.stderr)
            return 2
        except FloatingPointError as e:
            first = str(e).splitlines()[0] if str(e) else "loss is not finite"
            hint = "" if "BASE_LR" in first else " (lower SOLVER.BASE_LR or check the data and annotations)"
            print(f"error: training diverged: {first}{hint}", file=sys.stderr)
            return 1
        except Exception as e:
            full = full_disk_error(e)  # the command's own run wraps it as a DiskFullError naming the file
            if full is None:
                raise
            logging.getLogger(__name__).debug("details", exc_info=True)
            if not isinstance(full, DiskFullError):  # a write outside the command's own wrapping: no path known
                full = f"no space left on device: a write failed because the disk is full ({full})"
            print(f"error: {full}", file=sys.stderr)
            return 1

    return wrapped


def check_output_dir(path: str | os.PathLike, key: str = "OUTPUT_DIR") -> Path:
    """Create ``path`` if needed and check that it is a writable folder; raises ``NotADirectoryError`` /
    ``PermissionError`` naming ``key`` and the path otherwise."""
    out = Path(path)
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"{key} {out}: {parent} is a file, not a folder; choose another {key}")
        if parent.exists():
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"{key} {out} cannot be created ({e.strerror or e}); choose a writable "
                              f"{key}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(f"{key} {out} is not writable; choose a writable {key}")
    return out


class _PackageConsole(logging.StreamHandler):
    """The handler :func:`show_package_logs` adds (known by its type, so it is added once)."""


def show_package_logs() -> None:
    """This package's INFO and WARNING lines on stdout, as detectron2 prints its own, for the detection
    commands (which set up no logging of their own; where the application did, e.g. ``logging.basicConfig``,
    the records keep going there instead). DEBUG stays hidden: it carries the tracebacks of errors that are
    reported in one line. detectron2's ``setup_logger`` is not used: it stops propagation for good."""
    logger = logging.getLogger("nasnet_det")
    logger.setLevel(logging.INFO)
    if logging.getLogger().handlers or any(isinstance(h, _PackageConsole) for h in logger.handlers):
        return
    handler = _PackageConsole(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)s [%(asctime)s %(name)s]: %(message)s",
                                           datefmt="%m/%d %H:%M:%S"))
    logger.addHandler(handler)


def check_no_options_after_overrides(opts: list[str], prog: str = "nasnet-det") -> None:
    """``KEY VALUE`` overrides come last (argparse.REMAINDER): an ``--option`` among them would otherwise be
    read as a config key."""
    flags = [o for o in opts if o.startswith("--") and o != "--"]
    if flags:
        raise BadInputError(f"{flags[0]} comes after the KEY VALUE overrides; put options first, e.g. "
                            f"{prog} --config-file X.yaml {flags[0]} ... KEY VALUE")


def _merge_yacs(cfg: Any, config_file: str | None, opts: list[str]) -> Any:
    if config_file:
        cfg.merge_from_file(str(config_file))
    if opts:
        cfg.merge_from_list(opts)
    return cfg


def merge_config(cfg: Any, config_file: str | os.PathLike | None, opts: list[str],
                 merge: Callable[[Any, Any, list[str]], Any] | None = None) -> Any:
    """Merge ``config_file`` then the ``KEY VALUE`` ``opts`` into ``cfg`` (a yacs / detectron2 CfgNode) with
    ``merge(cfg, config_file, opts)`` (default: ``merge_from_file`` + ``merge_from_list``; a tool passes its own
    loader, e.g. one that applies presets). The errors yacs reports as bare KeyError / AssertionError become
    messages that name the file or key; a missing file, an odd number of overrides and an ``--option`` among
    them are reported before anything is merged."""
    opts = [o for o in opts if o != "--"]
    check_no_options_after_overrides(opts)
    if config_file and not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file} does not exist")
    if len(opts) % 2:
        raise BadInputError(f"config overrides must be KEY VALUE pairs; {opts[-1]!r} has no value")
    try:
        (merge or _merge_yacs)(cfg, str(config_file) if config_file else None, opts)
    except (KeyError, AssertionError, TypeError) as e:
        detail = str(e.args[0]) if e.args else type(e).__name__
        if config_file and str(config_file) in detail or "override" in detail:
            raise BadInputError(detail) from None
        if "Non-existent config key" in detail:  # yacs' merge_from_file
            raise BadInputError(f"{config_file}: {detail} (unknown key, or a key of another section)") from None
        raise BadInputError(f"config override: {detail}") from None
    return cfg


def _plugins() -> dict[str, Callable[[list[str]], int]]:
    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}  # type: ignore[misc]


def cmd_profile(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nasnet-det profile",
                                     description="Params and mult-adds of NASNet-A configurations vs the paper.")
    parser.add_argument("--checked-only", action="store_true",
                        help="only the rows the implementation must reproduce (skips the slow extra rows)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from nasnet_det.models.profile import PAPER_ROWS, format_table, profile_row

    rows = [r for r in PAPER_ROWS if r.checked or not args.checked_only]
    results = [profile_row(r) for r in tqdm(rows, desc="profiling", unit="model", file=sys.stderr)]
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(model=r.row.label, image_size=r.row.image_size, params=r.params,
                            paper_params_m=r.row.params_m, mult_adds=r.mult_adds,
                            paper_mult_adds_m=r.row.mult_adds_m, checked=r.row.checked,
                            within_tolerance=r.within_tolerance) for r in results], f, indent=2)
    failed = [r.row.label for r in results if r.row.checked and not r.within_tolerance]
    if failed:
        print(f"out of tolerance: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_genotype(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nasnet-det genotype",
                                     description="Print a published genotype or validate a genotype JSON file.")
    parser.add_argument("genotype", nargs="?", help=f"a published name ({', '.join(PUBLISHED)}) or a .json path")
    parser.add_argument("--list", action="store_true", help="list the published genotypes")
    args = parser.parse_args(argv)
    if args.list or not args.genotype:
        for name in PUBLISHED:
            print(name)
        return 0
    try:
        genotype = get_genotype(args.genotype)
    except GenotypeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(genotype.to_json())
    return 0


def cmd_run(argv: list[str]) -> int:
    """The project's main job on the embedded default (``make run``): the smoke pipeline, CIFAR-10 search to
    COCO AP on the real sample shipped in the package. Options and ``KEY VALUE`` overrides go to the pipeline."""
    from nasnet_det.pipeline.paths import repo_root

    return cmd_pipeline(["--config-file", str(repo_root() / "configs" / "pipeline" / "smoke.yaml"), *argv])


def cmd_pipeline(argv: list[str]) -> int:
    """The end-to-end chain (search -> ... -> COCO AP -> report); see nasnet_det.pipeline."""
    from nasnet_det.pipeline.cli import main as pipeline_main

    return pipeline_main(argv)


BUILTINS: dict[str, Callable[[list[str]], int]] = {"profile": cmd_profile, "genotype": cmd_genotype, "run": cmd_run,
                                                   "pipeline": cmd_pipeline}


def main(argv: list[str] | None = None) -> int:
    # fvcore and detectron2 call the deprecated torch.jit.script at import time; users can do nothing about it.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins = _plugins()
    commands = sorted(set(BUILTINS) | set(plugins))
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: nasnet-det {{{','.join(commands)}}} [args...]\n\n"
              "Run 'nasnet-det COMMAND --help' for the options of a command.")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name in BUILTINS:
        return BUILTINS[name](rest)
    if name in plugins:
        try:
            command = plugins[name].load()
        except ImportError as e:
            print(f"nasnet-det {name}: cannot import {plugins[name].value} ({e}); "
                  "reinstall the package (make setup, or pip install -e .)", file=sys.stderr)
            return 2
        return int(command(rest) or 0)
    print(f"nasnet-det: unknown command {name!r}; choose one of {', '.join(commands)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
