"""Fixtures of the robustness tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _close_the_modules_job_servers(request: pytest.FixtureRequest):
    """A module's ``JOBS`` (helpers.jobs.Jobs: a job server per tool its tests run) ends with the module's tests."""
    yield
    jobs = getattr(request.module, "JOBS", None)
    if jobs is not None:
        jobs.close()
