#!/usr/bin/env python
"""Export a trained NASNet Faster R-CNN to TorchScript or ONNX (``nasnet-det export``). Example:

    python tools/export.py --config-file configs/detection/smoke-nasnet-fpn.yaml --format onnx \
        --output out/model.onnx --check img.jpg MODEL.WEIGHTS output/detection/smoke-fpn/model_final.pth
"""

import sys

from nasnet_det.detection.export_cli import main

if __name__ == "__main__":
    sys.exit(main())
