#!/usr/bin/env python
"""ImageNet pretraining of any genotype at any N@F (ImageFolder train/val directories).

    python tools/pretrain_imagenet.py --config-file configs/train/imagenet_nasnet_a_mobile.yaml \
        DATA.TRAIN_DIR /data/imagenet/train DATA.VAL_DIR /data/imagenet/val
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        tools/pretrain_imagenet.py --config-file ...
    # A finished run writes OUTPUT_DIR/model_final.pth (the detection backbone) itself; to export an
    # earlier checkpoint (EMA weights when the run keeps an EMA):
    python tools/pretrain_imagenet.py --export-backbone OUTPUT_DIR/checkpoints/ckpt_00100000.pth backbone.pth
"""

import sys

from nasnet_det.classification.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], dataset="imagenet"))  # this tool's dataset, whatever the config says
