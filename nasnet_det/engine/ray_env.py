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

from nasnet_det.engine.process import OMP_WAIT_POLICY, omp_wait_policy
from nasnet_det.utils.errors import BadInputError

# Where the tools find data and weights: detectron2's dataset root, torch hub's and Hugging Face's caches
# (nasnet_det/models/hub.py), and Hugging Face's offline flag.
PATH_ENV_VARS = ("DETECTRON2_DATASETS", "TORCH_HOME", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE")
FLAG_ENV_VARS = ("HF_HUB_OFFLINE",)


def worker_env_vars(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of :data:`PATH_ENV_VARS` and :data:`FLAG_ENV_VARS` set in ``environ`` (default: this
    process's), paths made absolute (a worker's working directory is not the driver's; on several machines the
    path must name the same shared storage on each), and ``OMP_WAIT_POLICY``
    (:func:`~nasnet_det.engine.process.omp_wait_policy`)."""
    environ = os.environ if environ is None else environ
    out = {k: os.path.abspath(os.path.expanduser(environ[k])) for k in PATH_ENV_VARS if environ.get(k)}
    out.update({k: environ[k] for k in FLAG_ENV_VARS if k in environ})
    # idle OpenMP threads sleep (the user's policy travels if set): see omp_wait_policy. Ray gives a worker as
    # many threads as CPUs it reserved (OMP_NUM_THREADS), and a machine's workers share its cores.
    out[OMP_WAIT_POLICY] = omp_wait_policy(environ)
    return out


def ray_runtime_env(modules: Iterable[Path], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Ray ``runtime_env`` that ships ``modules`` (package folders) and :func:`worker_env_vars`."""
    env: dict[str, Any] = {"py_modules": [str(m) for m in modules]}
    env_vars = worker_env_vars(environ)
    if env_vars:
        env["env_vars"] = env_vars
    return env


# Seconds a Ray address gets to accept a connection before we say nothing answers there (ray.init itself retries
# for minutes, "Failed to get cluster ID from GCS", before it gives up).
RAY_CONNECT_TIMEOUT_S = 5.0


def check_ray_address(address: str, key: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Refuse, in one line naming ``key``, a Ray address (``HOST:PORT`` of a head's GCS, or ``ray://HOST:PORT``
    of a Ray client server) where nothing accepts a connection within ``timeout_s``. ``""``, ``local`` and
    ``auto`` (Ray finds or starts the cluster on this machine) are not probed."""
    import socket

    if address in ("", "local", "auto"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise BadInputError(f"{key} {address!r}: expected HOST:PORT of a Ray head (or ray://HOST:PORT), \"auto\", or "
                         "\"\" for a local cluster")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        why = f"no answer within {timeout_s:g} s" if isinstance(e, TimeoutError) else \
            (e.strerror or type(e).__name__).lower()
        raise BadInputError(f"{key} {address!r}: nothing accepts a connection at {host}:{port} ({why}); start "
                            f"the Ray head there (ray start --head) or correct {key}") from None
