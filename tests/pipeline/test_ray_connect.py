"""A Ray address where nothing answers (issue 31): one line naming the key and the address within seconds, from
the search's Ray backend and from the pipeline's, instead of ray.init's minutes of "Failed to get cluster ID
from GCS". Nothing here starts Ray."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from helpers.pipeline import SMOKE, TINY
from helpers.search import tiny_opts

from nasnet_det.engine.ray_env import check_ray_address
from nasnet_det.pipeline import Pipeline, StageError, load_pipeline_config
from nasnet_det.utils.errors import BadInputError
from search.cli import main as search_main


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_the_search_refuses_a_ray_address_nothing_answers_in_one_line(tmp_path: Path, capsys):
    pytest.importorskip("ray")
    t0 = time.monotonic()
    rc = search_main(["--output-dir", str(tmp_path / "run"), "--no-progress",
                      *tiny_opts("queue", "WORKERS.BACKEND", "ray", "WORKERS.RAY_ADDRESS", "127.0.0.1:1")])
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 30
    assert rc == 2
    line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
    assert "WORKERS.RAY_ADDRESS '127.0.0.1:1': nothing accepts a connection at 127.0.0.1:1" in line


@pytest.mark.timeout(60)
def test_the_pipeline_refuses_a_ray_address_nothing_answers_in_one_line(tmp_path: Path):
    pytest.importorskip("ray")
    cfg = load_pipeline_config(SMOKE, [*TINY, "PIPELINE.BACKEND", "ray", "PIPELINE.RAY.ADDRESS", "127.0.0.1:1",
                                       "OUTPUT_DIR", str(tmp_path / "run")])
    t0 = time.monotonic()
    with pytest.raises(StageError) as e:
        Pipeline(cfg, quiet=True, log=lambda msg: None).run(["search"])
    assert time.monotonic() - t0 < 30
    assert str(e.value).startswith("stage 'search': PIPELINE.RAY.ADDRESS '127.0.0.1:1': nothing accepts a "
                                   "connection at 127.0.0.1:1")
    assert "\n" not in str(e.value)


def test_the_address_check_accepts_what_answers_and_names_malformed_ones():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_ray_address(f"127.0.0.1:{port}", "KEY")
        check_ray_address(f"ray://127.0.0.1:{port}", "KEY")
    for address in ("", "local", "auto"):  # Ray finds or starts the cluster on this machine: nothing to probe
        check_ray_address(address, "KEY")
    with pytest.raises(BadInputError, match=r"KEY 'headnode': expected HOST:PORT"):
        check_ray_address("headnode", "KEY")
    t0, port = time.monotonic(), closed_port()
    with pytest.raises(BadInputError, match=rf"KEY '127.0.0.1:{port}': nothing accepts a connection at "
                                            rf"127.0.0.1:{port} \(connection refused\); start the Ray head"):
        check_ray_address(f"127.0.0.1:{port}", "KEY", timeout_s=2)
    assert time.monotonic() - t0 < 10
