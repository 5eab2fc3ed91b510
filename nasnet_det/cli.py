"""The ``nasnet-det`` command.

Built-in subcommands live here (``profile``, ``genotype``, ``run``). Others (``search``, ``train``,
``detect``, ``pipeline``) are found through the ``nasnet_det.commands`` entry-point group (pyproject.toml),
so that this dispatcher imports none of them: not the ``search`` package that depends on this one, nor the
pipeline that runs the other commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from nasnet_det.genotypes import PUBLISHED, get_genotype
from nasnet_det.space import GenotypeError
from nasnet_det.utils.errors import check_output_dir, exit_2_on_bad_input
from nasnet_det.utils.io import atomic_write, disk_full_errors

PLUGIN_GROUP = "nasnet_det.commands"


def _plugins() -> dict[str, Callable[[list[str]], int]]:
    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}  # type: ignore[misc]


def check_output_file(path: str, option: str) -> Path:
    """``path`` can be written: not a folder, its folder a writable folder (created when missing). Checked before
    the work whose result it will hold; raises a one-line ``IsADirectoryError`` / ``NotADirectoryError`` /
    ``PermissionError`` naming ``option`` and the path."""
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"{option} {out} is a folder; give the path of the file to write")
    check_output_dir(out.parent, key=option)  # the folder: created when missing, writable (one line naming it)
    if out.exists() and not os.access(out, os.W_OK):
        raise PermissionError(f"{option} {out} is not writable; choose another path")
    return out


@exit_2_on_bad_input
def cmd_profile(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nasnet-det profile",
                                     description="Params and mult-adds of NASNet-A configurations vs the paper.")
    parser.add_argument("--checked-only", action="store_true",
                        help="only the rows the implementation must reproduce (skips the slow extra rows)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    json_path = check_output_file(args.json, "--json") if args.json else None  # before 30-60 s of profiling

    from tqdm import tqdm

    from nasnet_det.models.profile import PAPER_ROWS, format_table, profile_row

    rows = [r for r in PAPER_ROWS if r.checked or not args.checked_only]
    results = [profile_row(r) for r in tqdm(rows, desc="profiling", unit="model", file=sys.stderr)]
    print(format_table(results))
    if json_path is not None:
        numbers = [dict(model=r.row.label, image_size=r.row.image_size, params=r.params, paper_params_m=r.row.params_m,
                        mult_adds=r.mult_adds, paper_mult_adds_m=r.row.mult_adds_m, checked=r.row.checked,
                        within_tolerance=r.within_tolerance) for r in results]
        with disk_full_errors(json_path):
            atomic_write(json_path, json.dumps(numbers, indent=2) + "\n")
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

    return run_command("pipeline", ["--config-file", str(repo_root() / "configs" / "pipeline" / "smoke.yaml"), *argv])


BUILTINS: dict[str, Callable[[list[str]], int]] = {"profile": cmd_profile, "genotype": cmd_genotype, "run": cmd_run}
# The entry points pyproject.toml declares (group nasnet_det.commands): missing means stale package metadata.
OWN_COMMANDS = ("detect", "export", "pipeline", "plan", "search", "train")


def run_command(name: str, argv: list[str]) -> int:
    """Run subcommand ``name``: a built-in, or one of the ``nasnet_det.commands`` entry points."""
    if name in BUILTINS:
        return BUILTINS[name](argv)
    plugins = _plugins()
    if name in OWN_COMMANDS and name not in plugins:
        print(f"nasnet-det: the {name!r} command is not registered: the installed package's metadata is older than "
              "its code; reinstall the package (make setup, or pip install -e .)", file=sys.stderr)
        return 2
    if name not in plugins:
        commands = sorted(set(BUILTINS) | set(plugins))
        print(f"nasnet-det: unknown command {name!r}; choose one of {', '.join(commands)}", file=sys.stderr)
        return 2
    try:
        command = plugins[name].load()
    except ImportError as e:
        print(f"nasnet-det {name}: cannot import {plugins[name].value} ({e}); "
              "reinstall the package (make setup, or pip install -e .)", file=sys.stderr)
        return 2
    return int(command(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    # fvcore and detectron2 call the deprecated torch.jit.script at import time; users can do nothing about it.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        commands = sorted(set(BUILTINS) | set(_plugins()))
        print(f"usage: nasnet-det {{{','.join(commands)}}} [args...]\n\n"
              "Run 'nasnet-det COMMAND --help' for the options of a command.")
        return 0 if argv else 2
    return run_command(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
