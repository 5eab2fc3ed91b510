#!/usr/bin/env python
"""The whole chain, CIFAR-10 search to COCO AP (see ``nasnet_det.pipeline``):

    python tools/run_pipeline.py --config-file configs/pipeline/smoke.yaml
    python tools/run_pipeline.py --config-file configs/pipeline/paper.yaml --from pretrain PRETRAIN.NPROC_PER_NODE 8
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nasnet_det.pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
