#!/usr/bin/env python
"""CIFAR-10 architecture search (NASNet space). Arguments: see ``search.cli``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from search.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
