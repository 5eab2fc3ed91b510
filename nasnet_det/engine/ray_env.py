"""What a Ray job of ours carries to its workers: our packages (``py_modules``) and the environment variables the
tools read to find data and weights. Ray workers do not inherit the driver's environment (on a cluster they run
on other machines, under the raylet's environment), so a variable set where the pipeline or the search was
started must travel in the job's ``runtime_env``; otherwise detectron2 looks for COCO under ./datasets.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Where the tools find data and weights: detectron2's dataset root, torch hub's and Hugging Face's caches
# (nasnet_det/models/hub.py), and Hugging Face's offline flag.
PATH_ENV_VARS = ("DETECTRON2_DATASETS", "TORCH_HOME", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE")
FLAG_ENV_VARS = ("HF_HUB_OFFLINE",)


def worker_env_vars(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of :data:`PATH_ENV_VARS` and :data:`FLAG_ENV_VARS` set in ``environ`` (default: this
    process's), paths made absolute (a worker's working directory is not the driver's; on several machines the
    path must name the same shared storage on each)."""
    environ = os.environ if environ is None else environ
    out = {k: os.path.abspath(os.path.expanduser(environ[k])) for k in PATH_ENV_VARS if environ.get(k)}
    out.update({k: environ[k] for k in FLAG_ENV_VARS if k in environ})
    return out


def ray_runtime_env(modules: Iterable[Path], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Ray ``runtime_env`` that ships ``modules`` (package folders) and :func:`worker_env_vars`."""
    env: dict[str, Any] = {"py_modules": [str(m) for m in modules]}
    env_vars = worker_env_vars(environ)
    if env_vars:
        env["env_vars"] = env_vars
    return env
