"""ImageNet NASNet weights by name: ``timm://nasnetalarge``, ``pretrainedmodels://nasnetamobile``.

Each scheme is a :class:`WeightSource` registered once in :data:`WEIGHT_SOURCES`. A source finds the file
through its library's own download and cache, and returns the library's state dict unchanged; the callers
convert it as they convert such a file given by path (:func:`nasnet_det.models.pretrained.convert_external_state_dict`).

- ``timm://NAME`` (timm's pretrained cfg; ``NAME`` may carry a tag, ``nasnetalarge.tf_in1k``): the file of the
  cfg's Hugging Face hub id through ``timm.models.load_state_dict_from_hf`` (cache ``$HF_HOME/hub``, offline
  with ``HF_HUB_OFFLINE=1``); timm's older GitHub-release file in ``torch.hub``'s cache is used when present.
- ``pretrainedmodels://NAME``: the URL in ``pretrainedmodels.pretrained_settings[NAME]["imagenet"]`` through
  ``torch.hub.load_state_dict_from_url`` (what the library's ``model_zoo.load_url`` is; cache
  ``$TORCH_HOME/hub/checkpoints``). With ``HF_HUB_OFFLINE=1`` (the offline flag) it does not try to download.

A file neither in the cache nor downloadable is one :class:`BadInputError` line saying how to get it by hand.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

import torch

from nasnet_det.utils.errors import BadInputError
from nasnet_det.utils.registry import Registry

SEPARATOR = "://"


class WeightSource(ABC):
    """One ``SCHEME://NAME`` family of published NASNet weights."""

    name: str = ""  # the scheme (``NAME://``): the source's key in WEIGHT_SOURCES
    library: str = ""  # the package that holds the names and downloads the files

    @abstractmethod
    def names(self) -> list[str]:
        """The NASNet-A names this library publishes weights for."""

    @abstractmethod
    def fetch(self, name: str, key: str) -> dict[str, torch.Tensor]:
        """The library's state dict for ``name`` (from its cache, downloaded there when missing and allowed)."""


WEIGHT_SOURCES = Registry("weights scheme")  # @WEIGHT_SOURCES.register() adds a WeightSource, keyed by its scheme


def is_named_weights(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` is a ``SCHEME://NAME`` (any scheme: :func:`check_named_weights` refuses unknown ones)."""
    return isinstance(spec, str) and SEPARATOR in spec


def offline() -> bool:
    """Hugging Face's offline flag (``HF_HUB_OFFLINE=1``), honoured by every source."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return bool(constants.is_offline_mode())


def _source(spec: str, key: str) -> tuple[WeightSource, str]:
    scheme, _, name = spec.partition(SEPARATOR)
    if scheme not in WEIGHT_SOURCES:
        known = ", ".join(f"{s}://{n}" for s, src in WEIGHT_SOURCES for n in _names_or_missing(src()))
        raise BadInputError(f"{key} {spec!r}: unknown weights scheme {scheme + SEPARATOR!r}; known: {known}, "
                            "or a file path")
    source = WEIGHT_SOURCES.get(scheme)()
    try:
        names = source.names()
    except ImportError:
        raise BadInputError(f"{key} {spec!r}: the {scheme}{SEPARATOR} scheme needs {source.library}, which is not "
                            f"installed: pip install {source.library} (or pip install -e .[pretrained])") from None
    if name not in names:  # exact: a tag the library does not know would fail in its own fetch with a traceback
        raise BadInputError(f"{key} {spec!r}: {source.library} has no NASNet weights named {name!r}; known: "
                            + ", ".join(f"{scheme}{SEPARATOR}{n}" for n in names))
    return source, name


def _names_or_missing(source: WeightSource) -> list[str]:
    try:
        return source.names()
    except ImportError:
        return [f"<install {source.library}>"]


def check_named_weights(spec: str, key: str = "MODEL.NASNET.WEIGHTS") -> None:
    """Refuse an unknown scheme or name (one line listing what exists) without reading or downloading anything."""
    _source(spec, key)


def fetch_named_weights(spec: str, key: str = "MODEL.NASNET.WEIGHTS") -> dict[str, torch.Tensor]:
    """The state dict ``spec`` names, in its library's parameter names (convert it like a file given by path)."""
    source, name = _source(spec, key)
    state_dict = source.fetch(name, f"{key} {spec!r}")
    return {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}


def _torch_hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``url`` (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _from_torch_hub(url: str, where: str) -> dict[str, torch.Tensor]:
    cached = _torch_hub_file(url)
    by_hand = f"get it by hand: curl -L -o {cached} {url} (or give the file's path)"
    if not cached.is_file() and offline():
        raise BadInputError(f"{where}: not in the cache ({cached}) and HF_HUB_OFFLINE is set; {by_hand}")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, weights_only=True)
    except OSError as e:  # URLError, timeouts, refused connections, a full disk
        raise BadInputError(f"{where}: not in the cache ({cached}) and the download failed "
                            f"({type(e).__name__}: {e}); {by_hand}") from e


@WEIGHT_SOURCES.register()
class TimmWeights(WeightSource):
    name = "timm"
    library = "timm"

    def names(self) -> list[str]:
        import timm

        return [n for n in timm.list_pretrained() if n.split(".", 1)[0].startswith("nasnet")] + \
            sorted({n.split(".", 1)[0] for n in timm.list_pretrained() if n.startswith("nasnet")})

    def fetch(self, name: str, key: str) -> dict[str, torch.Tensor]:
        from timm.models import get_pretrained_cfg, load_state_dict_from_hf

        cfg = get_pretrained_cfg(name)
        url = cfg.url or ""
        if url and _torch_hub_file(url).is_file():  # timm's older cache of the same weights
            return _from_torch_hub(url, key)
        if not cfg.hf_hub_id:
            return _from_torch_hub(url, key)
        from huggingface_hub import constants
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return load_state_dict_from_hf(cfg.hf_hub_id)
        except (LocalEntryNotFoundError, OSError) as e:
            hub = Path(constants.HF_HUB_CACHE) / f"models--{cfg.hf_hub_id.replace('/', '--')}"
            how = f"hf download {cfg.hf_hub_id} model.safetensors (cache {hub})"
            if url:
                how += f", or curl -L -o {_torch_hub_file(url)} {url}"
            state = "HF_HUB_OFFLINE is set" if offline() else f"the download failed ({type(e).__name__})"
            raise BadInputError(f"{key}: not in the cache and {state}; get it by hand: {how}") from e


@WEIGHT_SOURCES.register()
class PretrainedModelsWeights(WeightSource):
    name = "pretrainedmodels"
    library = "pretrainedmodels"
    SETTING = "imagenet"

    def names(self) -> list[str]:
        import pretrainedmodels

        return sorted(n for n in pretrainedmodels.pretrained_settings if n.startswith("nasnet"))

    def fetch(self, name: str, key: str) -> dict[str, torch.Tensor]:
        import pretrainedmodels

        return _from_torch_hub(pretrainedmodels.pretrained_settings[name][self.SETTING]["url"], key)
