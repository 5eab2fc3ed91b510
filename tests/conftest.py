"""Shared fixtures (helpers live in the tests/helpers package, imported as helpers.<module>).

`make test` runs the suite in two pytest-xdist workers (one per core of the 2-core machine): each worker's torch
then runs one thread per test (a test that sets its own count, or runs code that does, keeps it for its run), and
OpenMP threads that wait sleep instead of spinning (OMP_WAIT_POLICY, read when torch's OpenMP starts: set before
torch is imported, and inherited by the tests' subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")


# --------------------------------------------------------------------------- xdist groups
# The tests that start a Ray cluster (marked ``ray``) run one after another in one xdist worker: two clusters at
# once, each with its raylet, GCS, agents and workers, would starve each other on two cores. xdist's own
# ``xdist_group`` marker cannot say so here: its workers put the group into the test's nodeid, which pytest 9.2's
# nodeid (a property) no longer takes. So the workers write each grouped test's group to a file, and the
# controller's scheduler (``--dist loadgroup``, as xdist's) sends a group's tests to one worker.
GROUPS_DIR_VAR = "NASNET_DET_TEST_GROUPS_DIR"


def test_group(item: pytest.Item) -> str | None:
    """The xdist group a test runs in: ``@pytest.mark.xdist_group(name)``; else ``ray_cluster`` for a Ray test;
    else, for a test that uses one of its module's ``XDIST_SHARED_FIXTURES`` (an expensive module-scoped fixture,
    e.g. a finished pipeline run), that module's group: its tests then run in one worker, one after another, and
    the fixture is built once (a module fixture is built again each time a worker comes back to its module)."""
    mark = item.get_closest_marker("xdist_group")
    if mark is not None:
        return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    if item.get_closest_marker("ray"):
        return "ray_cluster"
    module = getattr(item, "module", None)
    shared = set(getattr(module, "XDIST_SHARED_FIXTURES", ())) & set(getattr(item, "fixturenames", ()))
    return f"{module.__name__}:{','.join(sorted(shared))}" if shared else None


def pytest_configure(config: pytest.Config) -> None:
    if not XDIST_WORKER and config.pluginmanager.hasplugin("xdist") and config.getoption("dist", "no") == "loadgroup":
        os.environ[GROUPS_DIR_VAR] = tempfile.mkdtemp(prefix="nasnet-det-test-groups-")  # the workers inherit it


def pytest_unconfigure(config: pytest.Config) -> None:
    if not XDIST_WORKER and os.environ.get(GROUPS_DIR_VAR):
        shutil.rmtree(os.environ.pop(GROUPS_DIR_VAR), ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The long tests (marked ``slow``) first: xdist hands tests out in collection order, and a long test handed
    # out last keeps one worker busy while the other has nothing left (the same order on every worker: xdist
    # checks that they collected the same list).
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)
    if XDIST_WORKER and os.environ.get(GROUPS_DIR_VAR):
        groups = {item.nodeid: g for item in items if (g := test_group(item))}
        path = Path(os.environ[GROUPS_DIR_VAR]) / f"{XDIST_WORKER}.json"
        path.with_suffix(".tmp").write_text(json.dumps(groups))
        path.with_suffix(".tmp").replace(path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getoption("dist") != "loadgroup" or not os.environ.get(GROUPS_DIR_VAR):
        return None
    from xdist.scheduler import LoadGroupScheduling

    # the one xdist internal this relies on (requirements/constraints.txt pins the xdist it was written for): were
    # it renamed, the Ray tests would silently run side by side
    if not callable(getattr(LoadGroupScheduling, "_split_scope", None)):
        raise pytest.UsageError("tests/conftest.py: this pytest-xdist's LoadGroupScheduling has no _split_scope; "
                                "install the version requirements/constraints.txt pins")
    groups_dir = Path(os.environ[GROUPS_DIR_VAR])

    class MarkedGroupScheduling(LoadGroupScheduling):
        """xdist's loadgroup, with the groups the workers wrote (every worker collects the same tests)."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # read once every worker has collected (the scheduler then splits)
                self.groups = {}
                for path in sorted(groups_dir.glob("*.json")):
                    self.groups.update(json.loads(path.read_text()))
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return MarkedGroupScheduling(config, log)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_thread_per_xdist_worker():
    """Two workers of two threads each would oversubscribe two cores (and a test that set its own count, e.g. a
    Trainer's share of the machine, would otherwise leave it for the next tests of its worker)."""
    if XDIST_WORKER:
        torch.set_num_threads(1)
    yield


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a shared 2-core CPU one thread per test process is faster than two."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
