"""The one registry pattern of the project: fvcore's :class:`~fvcore.common.registry.Registry` (the one detectron2's
``BACKBONE_REGISTRY`` is), keyed by the name a config uses, with an unknown name answered in one line that lists
the known ones.

    STRATEGIES = Registry("SEARCH.STRATEGY")

    @STRATEGIES.register()
    class RandomSearch(Strategy):
        name = "random"          # the key: the class's ``name`` attribute (its class name when it has none)

    STRATEGIES.lookup("random")  # -> RandomSearch; an unknown name: BadInputError naming the key and the choices
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from fvcore.common.registry import Registry as _FvcoreRegistry

from nasnet_det.utils.errors import BadInputError


class Registry(_FvcoreRegistry):
    """A name -> object registry. ``key`` is the setting that names its entries (e.g. ``"SEARCH.STRATEGY"``), used
    in the line an unknown name gets; entries keep their registration order."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def _do_register(self, name: str, obj: Any) -> None:
        # fvcore asserts; a second entry under one name is a programming error worth a clear ValueError
        if name in self:
            raise ValueError(f"{self.key}: {name!r} is registered twice ({self.get(name)!r} and {obj!r})")
        super()._do_register(name, obj)

    def register(self, obj: Any = None, *, name: str | None = None) -> Any:
        """Register ``obj`` (or, without it, the decorated class or function) under ``name``, else its ``name``
        attribute, else its ``__name__``; returns the object, so it works as a decorator."""
        def add(o: Any) -> Any:
            self._do_register(name or getattr(o, "name", None) or o.__name__, o)
            return o
        return add if obj is None else add(obj)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return [n for n, _ in self]

    def lookup(self, name: str, key: str | None = None) -> Any:
        """The entry ``name`` (stripped, lower case); an unknown one is a :class:`BadInputError` naming ``key``
        (default: the registry's key) and the known names."""
        wanted = str(name).strip().lower()
        if wanted not in self:
            raise BadInputError(f"{key or self.key}={name!r}: expected one of {', '.join(sorted(self.names()))}")
        return self.get(wanted)

    def __len__(self) -> int:
        return len(self.names())

    def values(self) -> Iterator[Any]:
        return (obj for _, obj in self)


def import_modules(package: ModuleType) -> None:
    """Import every module of ``package`` (call it from the package's ``__init__`` as
    ``import_modules(sys.modules[__name__])``): a module that registers a plug-in is found by being there,
    so adding one is adding its file. Modules load in name order, so registration order is stable."""
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{info.name}")
