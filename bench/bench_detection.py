#!/usr/bin/env python
"""Faster R-CNN with NASNet-A mobile backbones (FPN and C4) against detectron2's R50-FPN, same process.

All three are built by detectron2 from their configs (ours: configs/detection/faster_rcnn_nasnet_a_mobile_
{fpn,c4}_600.yaml; the peer: model_zoo's COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml), random weights, 80
classes, the same input size, the same proposal/ROI budget (``--rois``), frozen BN and FREEZE_AT=2 as shipped.
Random weights with identity frozen-BN statistics overflow in deep nets, so every model is first calibrated:
built with trainable BN, one training forward on the batch sets the BN statistics, then BN becomes frozen BN
(and ours freezes its stride <= 4 modules, as MODEL.NASNET.FREEZE_AT 2 does).
Ours evaluates with MODEL.NASNET.FUSE_BN_AT_INFERENCE (BN folded into the convs). Measured, repeats
interleaved, median: training iteration seconds (batch ``--batch``: forward with losses, backward, SGD step),
inference seconds per image, and peak memory of each (CPU: malloc bytes in use above the level before; CUDA:
``max_memory_allocated``).

    python bench/bench_detection.py                        # CPU: 320 px, batch 2, 128 ROIs/image
    python bench/bench_detection.py --device cuda --size 600 --batch 4 --rois 512
"""

from __future__ import annotations

import argparse

import torch
from _common import REPO, interleaved_median_times, peak_memory_mb, print_row, record, row

PEER = "detectron2 R50-FPN"


def build(which: str, args: argparse.Namespace) -> torch.nn.Module:
    from detectron2 import model_zoo
    from detectron2.modeling import build_model

    from nasnet_det.config import load_cfg
    from nasnet_det.detection.config import get_nasnet_cfg

    # plain YAML, as the tools read it (merge_from_file falls back to yaml.unsafe_load)
    if which == "peer":
        cfg = load_cfg(get_nasnet_cfg(), model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
        cfg.MODEL.RESNETS.NORM = "BN"  # for the calibration pass (see calibrate_frozen_bn)
    else:
        config = REPO / "configs" / "detection" / f"faster_rcnn_nasnet_a_mobile_{which}_600.yaml"
        cfg = load_cfg(get_nasnet_cfg(), config)
        cfg.MODEL.NASNET.FUSE_BN_AT_INFERENCE = not args.no_fuse
        cfg.MODEL.NASNET.NORM, cfg.MODEL.NASNET.FREEZE_AT = "BN", 0
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = args.rois
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = args.proposals
    torch.manual_seed(0)
    return build_model(cfg)


@torch.no_grad()
def calibrate_frozen_bn(model: torch.nn.Module, batch: list[dict]) -> None:
    """BN statistics from one training forward on ``batch``, then frozen BN everywhere (see the docstring)."""
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.utils.events import EventStorage

    from nasnet_det.detection.backbone import apply_norm_and_freeze

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running statistics = this batch's
    with EventStorage(0):
        model.train()(batch)
    for m in list(model.modules()):
        if hasattr(type(m), "nasnet_for_forward"):  # our NASNet parts: frozen BN + FREEZE_AT 2
            apply_norm_and_freeze(m.nasnet, "FrozenBN", 2 if hasattr(m.nasnet, "conv0") else 0)
    for name, child in list(model.named_children()):
        setattr(model, name, FrozenBatchNorm2d.convert_frozen_batchnorm(child))


def make_batch(n: int, size: int, device: str, seed: int = 0) -> list[dict]:
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        k = 6
        xy = torch.rand(k, 2, generator=g) * size * 0.7
        wh = torch.rand(k, 2, generator=g) * size * 0.3 + 8
        inst = Instances((size, size), gt_boxes=Boxes(torch.cat([xy, xy + wh], 1).to(device)),
                         gt_classes=torch.randint(0, 80, (k,), generator=g).to(device))
        batch.append({"image": (torch.rand(3, size, size, generator=g) * 255).to(device), "height": size,
                      "width": size, "instances": inst})
    return batch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320, help="input height = width (default 320 on CPU)")
    parser.add_argument("--batch", type=int, default=2, help="images per training iteration")
    parser.add_argument("--rois", type=int, default=128, help="ROI_HEADS.BATCH_SIZE_PER_IMAGE, all models")
    parser.add_argument("--proposals", type=int, default=300, help="RPN.POST_NMS_TOPK_TRAIN/TEST, all models")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-fuse", action="store_true", help="evaluate ours without folding BN")
    parser.add_argument("--no-record", action="store_true")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    dev = args.device
    models = {k: build(k, args) for k in ("peer", "fpn", "c4")}
    train_batch = make_batch(args.batch, args.size, dev)
    for m in models.values():
        calibrate_frozen_bn(m, train_batch)
    image = [{k: v for k, v in make_batch(1, args.size, dev, seed=1)[0].items() if k != "instances"}]
    opts = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
            for k, m in models.items()}

    def train_iter(k: str):
        def run() -> None:
            m = models[k].train()
            losses = m(train_batch)
            opts[k].zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            opts[k].step()
        return run

    def infer(k: str):
        def run() -> None:
            m = models[k].eval()
            with torch.no_grad():
                m(image)
        return run

    print(f"Faster R-CNN, {args.size} px, train batch {args.batch}, {args.rois} ROIs/image, {args.proposals} "
          f"proposals, {dev}, {torch.get_num_threads()} threads, {args.repeats} repeats", flush=True)
    from detectron2.utils.events import EventStorage

    with EventStorage(0):  # detectron2's models log training metrics into one
        t_train = interleaved_median_times({k: train_iter(k) for k in models}, args.repeats, 1, dev)
        t_infer = interleaved_median_times({k: infer(k) for k in models}, args.repeats, 1, dev)
        m_train = {k: peak_memory_mb(train_iter(k), dev) for k in models}
        m_infer = {k: peak_memory_mb(infer(k), dev) for k in models}
    setting = dict(size=args.size, batch=args.batch, rois=args.rois, proposals=args.proposals, device=dev,
                   threads=torch.get_num_threads(), repeats=args.repeats, fused_at_inference=not args.no_fuse)
    rows = []
    for k, label in (("fpn", "NASNet-A mobile FPN"), ("c4", "NASNet-A mobile C4")):
        b = f"Faster R-CNN {label} {args.size}px"
        rows += [row(f"{b} train iter", "s/iter", t_train[k], t_train["peer"], PEER, False, **setting),
                 row(f"{b} inference", "s/image", t_infer[k], t_infer["peer"], PEER, False, **setting),
                 row(f"{b} train peak mem", "MiB", m_train[k], m_train["peer"], PEER, False, **setting),
                 row(f"{b} inference peak mem", "MiB", m_infer[k], m_infer["peer"], PEER, False, **setting)]
    for r in rows:
        print_row(r)
    if not args.no_record:
        record("bench_detection" + ("_gpu" if dev.startswith("cuda") else ""), rows)


if __name__ == "__main__":
    main()
