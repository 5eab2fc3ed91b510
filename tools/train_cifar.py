#!/usr/bin/env python
"""CIFAR-10 final training of any genotype at any N@F.

    python tools/train_cifar.py --config-file configs/train/cifar10_nasnet_a_6x768.yaml [--output-dir D] \
        [--resume | --no-resume] [KEY VALUE ...]
    torchrun --nproc-per-node 4 tools/train_cifar.py --config-file ...   # multi-GPU DDP
"""

import sys

from nasnet_det.classification.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], dataset="cifar10"))  # this tool's dataset, whatever the config says
