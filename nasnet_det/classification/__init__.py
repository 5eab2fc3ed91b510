"""Classification training of NASNet networks: CIFAR-10 final training and ImageNet pretraining.

``train(load_config("configs/train/cifar10_smoke.yaml"))`` runs the loop in :mod:`.trainer`;
:func:`export_backbone` turns a training checkpoint into detection backbone weights; the command line is
:func:`nasnet_det.classification.cli.main`.
"""

from nasnet_det.classification.config import get_cfg, load_config
from nasnet_det.classification.export import export_backbone
from nasnet_det.classification.steps import accumulate_gradients, evaluate
from nasnet_det.classification.trainer import Trainer, train

__all__ = ["Trainer", "accumulate_gradients", "evaluate", "export_backbone", "get_cfg", "load_config", "train"]
