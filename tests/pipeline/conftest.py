"""Fixtures of the pipeline tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def toy_stages(monkeypatch):
    """Stages registered in a test stay in it: ``register`` adds one to a copy of the registry, ``reset`` starts
    the copy again from the real stages."""
    from types import SimpleNamespace

    from nasnet_det.pipeline.stages import base
    from nasnet_det.utils.registry import Registry

    real = base.STAGES

    def reset() -> None:
        copy = Registry(real.key)
        for name, cls in real:
            copy.register(cls, name=name)
        monkeypatch.setattr(base, "STAGES", copy)

    reset()
    return SimpleNamespace(Stage=base.Stage, register=lambda cls: base.STAGES.register(cls), reset=reset)
