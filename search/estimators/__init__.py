"""Cheap estimators of a cell's quality (:mod:`search.estimators.base`), registered by the modules of this
package, every one of which is imported here (a new estimator is its file): sizes (``params``, ``madds``),
zero-cost proxies at initialisation (``synflow``, ``naswot``, ``jacob_cov``, ``grad_norm``, ``snip``, ``zico``,
``meco``, ``swap``, ``swap_reg``), rank aggregates of several scores (``az_nas``, ``ensemble``) and supernet
estimators (``supernet``, ``spos``, ``fairnas``, ``fewshot`` and their BatchNorm-recalibrated ``*_bn``
variants)."""

import sys

from nasnet_det.utils.registry import import_modules
from search.estimators.base import ESTIMATORS, Estimator, build_estimator

import_modules(sys.modules[__name__])

__all__ = ["ESTIMATORS", "Estimator", "build_estimator"]
