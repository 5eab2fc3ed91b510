#!/usr/bin/env python
"""What each stage of a pipeline will do, before it runs (``nasnet-det plan``, see ``nasnet_det.pipeline.plan``):

    python tools/plan_pipeline.py --config-file configs/pipeline/paper.yaml --gpus 8
    python tools/plan_pipeline.py --config-file configs/pipeline/ray_cluster.yaml --gpus 8 --nodes 4 --json plan.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nasnet_det.pipeline.plan_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
