"""Export a trained NASNet Faster R-CNN to TorchScript or ONNX through detectron2's deployment path, and check
that the exported file detects what the eager model does.

Both formats trace ``detectron2.export.TracingAdapter`` around ``GeneralizedRCNN.inference(...,
do_postprocess=False)`` (as detectron2's tools/deploy/export_model.py does): the exported model takes one
preprocessed image, a float32 ``3 x H x W`` tensor in ``INPUT.FORMAT`` channel order already resized by
``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)`` (any H, W), and returns ``boxes`` (N x 4, xyxy
in that image's pixels), ``classes`` (N, int64), ``scores`` (N) and ``image_size`` (H, W).

ONNX goes through ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based exporter: torch.export (the
dynamo exporter) stops at detectron2's padding of the batch (``ImageList.from_tensors`` makes the padded size
data-dependent, and the backbone's divisibility check then guards on it), while the traced graph exports with
torchvision's symbolic functions for ``roi_align`` (ONNX RoiAlign, opset 16 for ``aligned=True``) and ``nms``
(NonMaxSuppression).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.export import TracingAdapter
from detectron2.modeling import build_model

import nasnet_det.detection.backbone  # noqa: F401  (registers the backbones)
import nasnet_det.detection.heads  # noqa: F401
from nasnet_det.detection.checkpoint import NASNetDetectionCheckpointer
from nasnet_det.utils.errors import BadInputError
from nasnet_det.utils.images import read_rgb8

logger = logging.getLogger(__name__)
FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17  # >= 16: RoiAlign with coordinate_transformation_mode (detectron2's aligned=True)
OUTPUT_NAMES = ["boxes", "classes", "scores", "image_size"]
# --check tolerance. Eager PyTorch (oneDNN), the TorchScript interpreter and onnxruntime (MLAS) sum in different
# orders and the export pads explicitly where eager pools pad implicitly: float32 rounding of ~1e-6 relative per
# op, grown through the network; measured <= 3e-4 px and <= 2e-5 in score on the smoke nets. A model that differs
# (another weight, another threshold) moves boxes by pixels or changes the detections' number or classes.
BOX_ATOL_PX = 0.05
SCORE_ATOL = 1e-3

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (N, 4), classes (N,), scores (N,)


def load_eager_model(cfg: CfgNode) -> torch.nn.Module:
    """The detector of ``cfg`` in eval mode with the trained weights of ``cfg.MODEL.WEIGHTS``."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise BadInputError("MODEL.WEIGHTS is empty: give the trained detector checkpoint to export "
                            "(e.g. MODEL.WEIGHTS output/model_final.pth)")
    if "://" not in weights and not Path(weights).is_file():
        raise FileNotFoundError(f"MODEL.WEIGHTS {weights} does not exist")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.NASNET.WEIGHTS = ""  # the detector checkpoint has all weights
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"  # exported on the CPU; the files run anywhere
    model = build_model(cfg)
    NASNetDetectionCheckpointer(model).load(weights)
    return model.eval()


def preprocess(cfg: CfgNode, path: str | Path) -> torch.Tensor:
    """The exported model's input for an image file: as ``DefaultPredictor`` prepares it (resize, channel order)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    image = convert_PIL_to_numpy(read_rgb8(path), cfg.INPUT.FORMAT)  # 16-bit and other modes: correct 8 bits
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)), dtype=torch.float32)


def _inference(model: torch.nn.Module, inputs: list[dict]) -> list[dict]:
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def eager_detections(model: torch.nn.Module, image: torch.Tensor) -> Detections:
    with torch.no_grad():
        inst = model.inference([{"image": image}], do_postprocess=False)[0]
    return inst.pred_boxes.tensor.numpy(), inst.pred_classes.numpy(), inst.scores.numpy()


def export_model(model: torch.nn.Module, image: torch.Tensor, fmt: str, output: str | Path) -> Path:
    """Trace ``model`` on ``image`` and write it to ``output`` in ``fmt`` (see the module docstring)."""
    if fmt not in FORMATS:
        raise BadInputError(f"--format {fmt!r} is not supported; expected one of {', '.join(FORMATS)}")
    output = Path(output)
    # A trace records only the branches its image takes: on an image with no detections, torchvision's NMS takes
    # its "no boxes" branch and the exported graph would return nothing for every image.
    if len(eager_detections(model, image)[0]) == 0:
        raise BadInputError("the trace image gives no detections, so the traced graph would return none for every "
                            "image; trace on an image where the model finds objects (the first --check image)")
    output.parent.mkdir(parents=True, exist_ok=True)
    # eval(): torch.onnx.export restores the adapter's training flag afterwards, recursively into the model.
    adapter = TracingAdapter(model, [{"image": image}], _inference).eval()
    try:
        with torch.no_grad():
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(adapter, (image,), check_trace=False), str(output))
            else:
                torch.onnx.export(adapter, (image,), str(output), opset_version=ONNX_OPSET, dynamo=False,
                                  input_names=["image"], output_names=OUTPUT_NAMES,
                                  dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "n"},
                                                "classes": {0: "n"}, "scores": {0: "n"}})
    except (RuntimeError, TypeError, AssertionError, torch.onnx.errors.OnnxExporterError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BadInputError(f"the model cannot be exported to {fmt}: {type(e).__name__}: {first}") from e
    return output


def load_exported(path: str | Path, fmt: str) -> Callable[[torch.Tensor], Detections]:
    """A function running the exported file on one preprocessed image."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if fmt == "torchscript":
        try:
            module = torch.jit.load(str(path))
        except RuntimeError as e:
            raise BadInputError(f"{path} is not a TorchScript file ({str(e).strip().splitlines()[0]})") from e

        def run_ts(image: torch.Tensor) -> Detections:
            with torch.no_grad():
                boxes, classes, scores, _ = module(image)
            return boxes.numpy(), classes.numpy(), scores.numpy()
        return run_ts
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BadInputError("running an ONNX file needs onnxruntime: pip install 'nasnet-det[export]'") from e
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise BadInputError(f"{path} is not an ONNX model onnxruntime can load ({type(e).__name__})") from e

        def run_onnx(image: torch.Tensor) -> Detections:
            boxes, classes, scores, _ = session.run(None, {"image": image.numpy()})
            return boxes, classes, scores
        return run_onnx
    raise BadInputError(f"--format {fmt!r} is not supported; expected one of {', '.join(FORMATS)}")


@dataclass
class Comparison:
    image: str
    eager_count: int
    exported_count: int
    box_diff_px: float  # largest |difference| of a box coordinate (nan when the counts differ)
    score_diff: float
    classes_equal: bool
    error: str = ""  # the exported model failed to run on this image

    @property
    def agree(self) -> bool:
        # an image with no detections on either side compares nothing: it does not count as agreement
        return (not self.error and self.eager_count == self.exported_count > 0 and self.classes_equal
                and self.box_diff_px <= BOX_ATOL_PX and self.score_diff <= SCORE_ATOL)

    def line(self) -> str:
        verdict = "agree" if self.agree else "DIFFER"
        if self.error:
            return f"{self.image}: {verdict}: the exported model failed on it: {self.error}"
        if self.eager_count == self.exported_count == 0:
            return f"{self.image}: {verdict}: no detections, eager or exported: nothing to compare (use images " \
                   "with objects)"
        return (f"{self.image}: {verdict}: {self.eager_count} eager / {self.exported_count} exported detections, "
                f"max |box diff| {self.box_diff_px:.2g} px (<= {BOX_ATOL_PX}), max |score diff| "
                f"{self.score_diff:.2g} (<= {SCORE_ATOL}), classes {'equal' if self.classes_equal else 'differ'}")


def _canonical(d: Detections) -> Detections:
    """Detections sorted by class, then box corners: two backends may order near-equal scores differently (the
    detector's order), which is no difference in the detections."""
    boxes, classes, scores = (np.asarray(a) for a in d)
    order = np.lexsort((scores, *boxes.reshape(-1, 4).T[::-1], classes))
    return boxes[order], classes[order], scores[order]


def compare(image: str, eager: Detections, exported: Detections) -> Comparison:
    (eb, ec, es), (xb, xc, xs) = _canonical(eager), _canonical(exported)
    same = len(eb) == len(xb)
    nan = float("nan")
    return Comparison(
        image, len(eb), len(xb),
        float(np.abs(eb - xb).max(initial=0.0)) if same else nan,
        float(np.abs(es - xs).max(initial=0.0)) if same else nan,
        same and bool(np.array_equal(ec, xc)))


def check_exported(cfg: CfgNode, model: torch.nn.Module, path: str | Path, fmt: str,
                   images: list[str]) -> list[Comparison]:
    """Run the eager ``model`` and the exported file on each image; one :class:`Comparison` per image."""
    run = load_exported(path, fmt)
    out = []
    for name in images:
        image = preprocess(cfg, name)
        eager = eager_detections(model, image)
        try:
            exported = run(image)
        except Exception as e:  # noqa: BLE001 - onnxruntime and the TorchScript interpreter raise their own types
            first = (str(e).strip().splitlines() or [""])[0]
            out.append(Comparison(str(name), len(eager[0]), -1, float("nan"), float("nan"), False,
                                  f"{type(e).__name__}: {first}"))
            continue
        out.append(compare(str(name), eager, exported))
    return out
