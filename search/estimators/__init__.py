"""Cheap estimators of a cell's quality (:mod:`search.estimators.base`), registered by the modules imported
here: sizes (``params``, ``madds``), zero-cost proxies at initialisation (``synflow``, ``naswot``,
``jacob_cov``, ``grad_norm``, ``snip``) and supernet estimators (``supernet``, ``spos``, ``fairnas``,
``fewshot`` and their BatchNorm-recalibrated ``*_bn`` variants)."""

from search.estimators import size, supernet, zero_cost  # noqa: F401 (they register their estimators)
from search.estimators.base import ESTIMATORS, Estimator, build_estimator, register_estimator

__all__ = ["ESTIMATORS", "Estimator", "build_estimator", "register_estimator"]
