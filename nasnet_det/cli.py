"""The ``nasnet-det`` command.

Built-in subcommands live here (``profile``, ``genotype``, ``run``). Others (``search``, ``train``,
``detect``) are found through the ``nasnet_det.commands`` entry-point group, so that this package never
imports the ``search`` package that depends on it.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points

from nasnet_det.genotypes import PUBLISHED, get_genotype
from nasnet_det.space import GenotypeError

PLUGIN_GROUP = "nasnet_det.commands"
BAD_INPUT_ERRORS = (ValueError, FileNotFoundError, KeyError)


def bad_input_message(exc: BaseException) -> str:
    """The text of a bad-input error. A KeyError's str() is the repr of its message: use the message."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def exit_2_on_bad_input(command: Callable[..., int]) -> Callable[..., int]:
    """Bad input (a missing file, a config mismatch) ends a command with one ``error:`` line and exit
    code 2 instead of a traceback."""

    @functools.wraps(command)
    def wrapped(*args, **kwargs) -> int:
        try:
            return command(*args, **kwargs)
        except BAD_INPUT_ERRORS as e:
            print(f"error: {bad_input_message(e)}", file=sys.stderr)
            return 2

    return wrapped


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
    """The project's main job on an embedded default: the NASNet-A model report."""
    argparse.ArgumentParser(prog="nasnet-det run", description=cmd_run.__doc__).parse_args(argv)
    return cmd_profile([])


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
