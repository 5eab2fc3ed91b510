"""The pipeline's configuration: one yacs ``CfgNode`` (``configs/pipeline/*.yaml`` + ``KEY VALUE`` overrides).

Each stage node names the stage's own config file (``CONFIG_FILE``, in that tool's config system) plus
override opts (``OPTS``: a flat ``[KEY, VALUE, ...]`` list passed on the tool's command line), and how it is
launched (processes, machines). The pipeline only adds what connects the stages: the output folder, the
chosen genotype, the backbone weights, and the one network size (``NETWORK``) that pretraining and
detection must share.
"""

from __future__ import annotations

from pathlib import Path

from fvcore.common.config import CfgNode as CN

from nasnet_det.config import load_cfg

STAGES: tuple[str, ...] = ("search", "select", "cifar", "pretrain", "detect", "evaluate", "report")

_C = CN()
_C.OUTPUT_DIR = "output/pipeline"

_C.PIPELINE = CN()
_C.PIPELINE.PYTHON = ""  # interpreter for the stage processes; "" = the one running the pipeline

# The network of pretraining, detection and evaluation (the backbone must load into the detector, so they
# are set once, here). The genotype comes from the select stage.
_C.NETWORK = CN()
_C.NETWORK.NUM_CELLS = 4  # N
_C.NETWORK.PENULTIMATE_FILTERS = 1056  # F (used when FILTERS is 0)
_C.NETWORK.FILTERS = 0  # f; 0 = derive from F
_C.NETWORK.STEM_FILTERS = 32
_C.NETWORK.SKIP_REDUCTION_LAYER_INPUT = False
_C.NETWORK.PAD_MODE = "tf"

_C.SEARCH = CN()
_C.SEARCH.CONFIG_FILE = "configs/search/smoke.yaml"
_C.SEARCH.OPTS = []
# Shortcut: a published genotype ("nasnet_a") or a genotype JSON file; the search stage then does not run.
_C.SEARCH.GENOTYPE = ""

_C.SELECT = CN()
# Re-rank the search's TOP_K best cells by training each with RERANK_CONFIG_FILE (a configs/train/ CIFAR
# config) + RERANK_OPTS and keep the best held-out accuracy (the paper did this before choosing NASNet-A).
# TOP_K 1 keeps the best reward of the search.
_C.SELECT.TOP_K = 1
_C.SELECT.RERANK_CONFIG_FILE = "configs/train/cifar10_smoke.yaml"
_C.SELECT.RERANK_OPTS = []

_C.CIFAR = CN()
_C.CIFAR.ENABLED = False
_C.CIFAR.CONFIG_FILE = "configs/train/cifar10_smoke.yaml"
_C.CIFAR.OPTS = []
_C.CIFAR.NPROC_PER_NODE = 1  # > 1: torchrun --nproc-per-node (one process per GPU; gloo on a CPU)

_C.PRETRAIN = CN()
_C.PRETRAIN.CONFIG_FILE = "configs/train/imagenet_smoke.yaml"
_C.PRETRAIN.OPTS = []
# Shortcut: a nasnet-det checkpoint (.pth with arch + state_dict) or a timm / pretrainedmodels state dict of
# the NETWORK above; pretraining then does not run.
_C.PRETRAIN.WEIGHTS = ""
# torchrun: processes per machine, machines, this machine's rank, rendezvous HOST:PORT (multi-machine only).
_C.PRETRAIN.NPROC_PER_NODE = 1
_C.PRETRAIN.NNODES = 1
_C.PRETRAIN.NODE_RANK = 0
_C.PRETRAIN.RDZV_ENDPOINT = ""

_C.DETECT = CN()
_C.DETECT.CONFIG_FILE = "configs/detection/smoke-nasnet-c4.yaml"
_C.DETECT.OPTS = []
# detectron2 launch: processes per machine (GPUs; gloo processes on a CPU), machines, rank, rendezvous URL.
_C.DETECT.NUM_GPUS = 1
_C.DETECT.NUM_MACHINES = 1
_C.DETECT.MACHINE_RANK = 0
_C.DETECT.DIST_URL = "auto"

_C.EVALUATE = CN()
_C.EVALUATE.OPTS = []  # on top of DETECT.CONFIG_FILE + DETECT.OPTS (e.g. DATASETS.TEST)
_C.EVALUATE.NUM_GPUS = 1

_C.REPORT = CN()
_C.REPORT.PROFILE_IMAGE_SIZE = 224  # image size of the backbone's mult-add count


def get_pipeline_cfg() -> CN:
    return _C.clone()


def repo_root() -> Path:
    """The checkout (or editable install) holding ``configs/`` and ``tools/``."""
    return Path(__file__).resolve().parents[2]


def resolve_path(path: str | Path) -> Path:
    """A path as given if it exists from the working directory, else relative to the repository root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    in_repo = repo_root() / p
    return in_repo if in_repo.exists() else p


def load_pipeline_config(config_file: str | Path | None, opts: list[str] | None = None) -> CN:
    """Defaults, the pipeline YAML (``_BASE_`` allowed) and ``KEY VALUE`` overrides; errors name the key."""
    cfg = load_cfg(_C, resolve_path(config_file) if config_file else None, opts)
    for node in ("SEARCH", "CIFAR", "PRETRAIN", "DETECT", "EVALUATE"):
        stage_opts = cfg[node].OPTS
        if len(stage_opts) % 2:
            raise ValueError(f"{node}.OPTS must be KEY VALUE pairs (an even-length list), got {list(stage_opts)}")
    for key in ("PRETRAIN.NPROC_PER_NODE", "PRETRAIN.NNODES", "CIFAR.NPROC_PER_NODE", "DETECT.NUM_GPUS",
                "DETECT.NUM_MACHINES", "EVALUATE.NUM_GPUS", "SELECT.TOP_K"):
        node, name = key.split(".")
        if cfg[node][name] < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[node][name]}")
    if (cfg.NETWORK.PENULTIMATE_FILTERS > 0) == (cfg.NETWORK.FILTERS > 0):
        raise ValueError("set exactly one of NETWORK.PENULTIMATE_FILTERS (F) and NETWORK.FILTERS (f) > 0")
    cfg.freeze()
    return cfg
