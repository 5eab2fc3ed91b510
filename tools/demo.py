#!/usr/bin/env python
"""Draw detections of a trained NASNet Faster R-CNN. Example:

    python tools/demo.py --config-file configs/detection/smoke-nasnet-c4.yaml --input img.jpg \
        --output out/ MODEL.WEIGHTS output/detection/smoke-c4/model_final.pth
"""

import sys

from nasnet_det.detection.cli import demo_main

if __name__ == "__main__":
    sys.exit(demo_main())
