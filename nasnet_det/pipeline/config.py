"""The pipeline's configuration: one yacs ``CfgNode`` (``configs/pipeline/*.yaml`` + ``KEY VALUE`` overrides).

Each stage adds its own node (``Stage.add_config``: the stage's name in capitals), naming the stage's own
config file (``CONFIG_FILE``, in that tool's config system) plus override opts (``OPTS``: a flat
``[KEY, VALUE, ...]`` list passed on the tool's command line), and how it is launched (processes, machines).
The pipeline only adds what connects the stages: the output folder, the chosen genotype, the backbone
weights, and the one network (``MODEL.NASNET``, the node every tool uses) that pretraining and detection
must share.
"""

from __future__ import annotations

from pathlib import Path

from fvcore.common.config import CfgNode as CN

from nasnet_det.config import load_cfg
from nasnet_det.pipeline.backends import add_backend_config, check_backend_config
from nasnet_det.pipeline.paths import resolve_path
from nasnet_det.pipeline.stages import pipeline_stages
from nasnet_det.pipeline.stages.base import SHARED_NETWORK_KEYS
from nasnet_det.pipeline.throughput import add_throughput_config, check_throughput_config

NETWORK_PRESET = "nasnet_a_mobile"  # the default network (MODEL.NASNET.PRESET picks another)


def get_pipeline_cfg() -> CN:
    """The defaults: the output folder, the stages' interpreter, the network, and each stage's node."""
    from nasnet_det.models.config import add_nasnet_model_config

    cfg = CN()
    cfg.OUTPUT_DIR = "output/pipeline"
    cfg.PIPELINE = CN()
    cfg.PIPELINE.PYTHON = ""  # interpreter for the stage processes; "" = the one running the pipeline
    add_backend_config(cfg.PIPELINE)  # PIPELINE.BACKEND local | ray, and each backend's keys
    # The network of pretraining, detection and evaluation (NASNet-A mobile by default); only the
    # keys the backbone and the detector must share are passed on (stages.SHARED_NETWORK_KEYS). The genotype
    # comes from the select stage (SEARCH.GENOTYPE gives one), the weights from the pretrain stage.
    add_nasnet_model_config(cfg, NETWORK_PRESET)
    for stage in pipeline_stages():
        stage.add_config(cfg)
    # What `nasnet-det plan` estimates each stage's time from (not part of any stage's settings: reruns nothing)
    add_throughput_config(cfg)
    return cfg


def check_pipeline_config(cfg: CN) -> None:
    """Reject values no pipeline can run with; ``ValueError`` names the key."""
    from nasnet_det.models.config import check_nasnet_node, preset_node

    check_backend_config(cfg.PIPELINE)
    for stage in pipeline_stages():
        stage.check_config(cfg)
    check_throughput_config(cfg)
    check_nasnet_node(cfg.MODEL.NASNET)
    default = preset_node(cfg.MODEL.NASNET.PRESET or NETWORK_PRESET)
    for key, instead in (("GENOTYPE", "SEARCH.GENOTYPE, or the search and select stages"),
                         ("WEIGHTS", "PRETRAIN.WEIGHTS, or the pretrain stage")):
        if cfg.MODEL.NASNET[key] != default[key]:
            raise ValueError(f"MODEL.NASNET.{key} is not used by the pipeline (got {cfg.MODEL.NASNET[key]!r}); "
                             f"it comes from {instead}")
    # Only the keys the backbone and the detector must share reach the stages; any other would be ignored.
    for key in sorted(set(cfg.MODEL.NASNET) - {*SHARED_NETWORK_KEYS, "PRESET", "GENOTYPE", "WEIGHTS"}):
        if key in default and cfg.MODEL.NASNET[key] != default[key]:
            raise ValueError(f"MODEL.NASNET.{key} is not passed on by the pipeline (got {cfg.MODEL.NASNET[key]!r}; "
                             f"only {', '.join(SHARED_NETWORK_KEYS)} are); set it for one stage in its OPTS, "
                             f"e.g. PRETRAIN.OPTS or DETECT.OPTS")


def load_pipeline_config(config_file: str | Path | None, opts: list[str] | None = None) -> CN:
    """Defaults, the pipeline YAML (``_BASE_`` allowed) and ``KEY VALUE`` overrides; errors name the key."""
    cfg = load_cfg(get_pipeline_cfg(), resolve_path(config_file) if config_file else None, opts)
    check_pipeline_config(cfg)
    cfg.freeze()
    return cfg
