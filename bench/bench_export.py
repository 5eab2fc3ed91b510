#!/usr/bin/env python
"""Detection latency per image of NASNet-A mobile Faster R-CNN (FPN and C4): eager PyTorch against the same model
exported by ``nasnet-det export`` (nasnet_det.detection.export) to TorchScript and to ONNX run in onnxruntime.

The models are built from configs/detection/faster_rcnn_nasnet_a_mobile_{fpn,c4}_600.yaml with random weights,
calibrated as in bench_detection.py (BN statistics from one training forward, then frozen BN), 80 classes,
``--proposals`` RPN proposals, without the BN-folded inference copy (the exported graphs trace the module as
built). Input: one photo of the package's COCO sample resized to shortest side ``--size`` (max 5/3 of it), batch
1, the preprocessed tensor given to each (so only the model is timed). Each side gets one warm-up call, then
``--repeats`` calls interleaved across the three (a, b, c, a, b, c, ...), median. Threads: torch and
onnxruntime both ``--threads``. Rows: ours = the exported model's seconds per image, peer = eager PyTorch.

    python bench/bench_export.py                      # CPU: 320 px, 2 threads, 5 repeats
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import REPO, interleaved_median_times, print_row, record, row
from bench_detection import build, calibrate_frozen_bn, make_batch

PEER = "eager PyTorch (same model)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320, help="shortest image side after resizing")
    parser.add_argument("--proposals", type=int, default=300, help="RPN.POST_NMS_TOPK_TEST")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layouts", nargs="+", default=["fpn", "c4"])
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    from nasnet_det.detection.export import eager_detections, export_model, load_exported, preprocess
    from nasnet_det.detection.export_cli import SAMPLE_IMAGE

    rows, notes = [], []
    build_args = argparse.Namespace(device="cpu", no_fuse=True, rois=128, proposals=args.proposals)
    for layout in args.layouts:
        model = build(layout, build_args)
        calibrate_frozen_bn(model, make_batch(1, args.size, "cpu"))
        model.eval()
        cfg = model_cfg(layout, args)
        image = preprocess(cfg, SAMPLE_IMAGE)
        with tempfile.TemporaryDirectory() as tmp:
            ts_path = export_model(model, image, "torchscript", Path(tmp) / "model.ts")
            onnx_path = export_model(model, image, "onnx", Path(tmp) / "model.onnx")
            ts = load_exported(ts_path, "torchscript")
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            array = image.numpy()
            fns = {"eager": lambda m=model, x=image: eager_detections(m, x),
                   "torchscript": lambda f=ts, x=image: f(x),
                   "onnxruntime": lambda s=session, a=array: s.run(None, {"image": a})}
            counts = {k: len(fn()[0]) for k, fn in fns.items()}
            times = interleaved_median_times(fns, args.repeats)
        size = f"{image.shape[1]}x{image.shape[2]}"
        for name in ("torchscript", "onnxruntime"):
            r = row(f"export {layout} mobile {size} ({name})", "s/image", times[name], times["eager"], PEER, False,
                    detections=counts[name], eager_detections=counts["eager"])
            print_row(r)
            rows.append(r)
        notes.append(f"{layout}: input {size} (batch 1), {args.threads} threads, {args.repeats} interleaved "
                     f"repeats after 1 warm-up, median; detections eager/torchscript/onnxruntime "
                     f"{counts['eager']}/{counts['torchscript']}/{counts['onnxruntime']}")
    if not args.no_record:
        record("bench_export", rows, notes=notes)


def model_cfg(layout: str, args: argparse.Namespace):
    """The input settings the export's preprocessing reads (INPUT.FORMAT, MIN/MAX_SIZE_TEST)."""
    from nasnet_det.config import load_cfg
    from nasnet_det.detection.config import get_nasnet_cfg

    # plain YAML, as the tools read it (merge_from_file falls back to yaml.unsafe_load)
    cfg = load_cfg(get_nasnet_cfg(), REPO / "configs" / "detection" / f"faster_rcnn_nasnet_a_mobile_{layout}_600.yaml")
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = args.size, args.size * 5 // 3
    return cfg


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
