"""``nasnet-det detect``: train / evaluate / demo / score NASNet Faster R-CNN.

- ``train``  : detectron2's train_net arguments (``--config-file``, ``--eval-only``, ``--resume``,
               ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, ``--dataset``, opts)
- ``demo``   : ``--config-file``, ``--input`` images/folders/globs or ``--samples`` (4 embedded COCO photos,
  top-5 boxes, beside their ground truth), ``--output`` folder, opts
- ``score``  : ``evaluate_coco`` on a ground-truth json and a detections json
"""

from __future__ import annotations

import argparse
import json
import sys

from nasnet_det.utils.errors import check_output_dir, exit_2_on_bad_input
from nasnet_det.utils.logs import show_package_logs

USAGE = "usage: nasnet-det detect {train,demo,score} ... (see --help of each)"


@exit_2_on_bad_input
def demo_main(argv: list[str] | None = None) -> int:
    from nasnet_det.config import load_cfg
    from nasnet_det.detection.config import get_nasnet_cfg, validate_input_sizes
    from nasnet_det.detection.demo import SAMPLE_IMAGES, TOP_BOXES, draw_sample_detections, run_demo

    parser = argparse.ArgumentParser(description="Draw NASNet Faster R-CNN detections on images")
    parser.add_argument("--config-file", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, folders or glob patterns")
    source.add_argument("--samples", action="store_true",
                        help=f"the {SAMPLE_IMAGES} first photos of the embedded COCO sample, with the {TOP_BOXES} "
                             "top-scoring boxes each (no threshold)")
    parser.add_argument("--output", required=True, help="folder for the drawn images")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    show_package_logs()
    cfg = load_cfg(get_nasnet_cfg(), args.config_file, args.opts)
    validate_input_sizes(cfg)
    check_output_dir(args.output, "--output")
    if args.samples:
        for path, boxes in draw_sample_detections(cfg, args.output):
            print(f"{path}: " + (", ".join(f"{name} {score:.2f}" for name, score, _ in boxes) or "no boxes"))
        return 0
    skipped: list = []
    written = run_demo(cfg, args.input, args.output, args.confidence_threshold, skipped=skipped)
    print(f"wrote {len(written)} images to {args.output}"
          + (f"; skipped {len(skipped)} unreadable: {', '.join(map(str, skipped))}" if skipped else ""))
    return 0


@exit_2_on_bad_input
def score_main(argv: list[str] | None = None) -> int:
    from nasnet_det.detection.evaluation import BACKENDS, evaluate_coco

    parser = argparse.ArgumentParser(description="COCO box AP of a detections json")
    parser.add_argument("gt_json")
    parser.add_argument("detections_json")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    args = parser.parse_args(argv)
    print(json.dumps(evaluate_coco(args.gt_json, args.detections_json, backend=args.backend), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n" + __doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from nasnet_det.detection.train import train_main

        return train_main(rest)
    if command == "demo":
        return demo_main(rest)
    if command == "score":
        return score_main(rest)
    print(f"unknown command {command!r}; {USAGE}", file=sys.stderr)
    return 2
