#!/usr/bin/env python
"""Train / evaluate NASNet Faster R-CNN (detectron2 style). Example:

    python tools/train_net.py --config-file configs/detection/smoke-nasnet-c4.yaml
    python tools/train_net.py --config-file configs/detection/smoke-nasnet-c4.yaml --eval-only \
        MODEL.WEIGHTS output/detection/smoke-c4/model_final.pth
"""

import sys

from nasnet_det.detection.train import train_main

if __name__ == "__main__":
    sys.exit(train_main())
