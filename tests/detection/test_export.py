"""nasnet-det export: TorchScript and ONNX files of NASNet Faster R-CNN (C4, FPN) detect what the eager model does
on images of other sizes than the traced one; a file that differs fails --check; bad input is one line."""

from pathlib import Path

import onnx
import pytest
import tomllib
import torch
from detectron2.modeling import build_model
from helpers.detection import CONFIGS, tiny_cfg
from PIL import Image

import nasnet_det.detection  # noqa: F401  (registers)
from nasnet_det.detection.export_cli import main

TINY = ["MODEL.NASNET.FILTERS", "4", "MODEL.NASNET.STEM_FILTERS", "8", "INPUT.MIN_SIZE_TEST", "32",
        "INPUT.MAX_SIZE_TEST", "64"]


def photos(folder: Path) -> list[str]:
    """A landscape and a portrait image: after resizing and padding they differ in size from each other, so the
    second runs the exported graph at another size than the one it was traced at."""
    g = torch.Generator().manual_seed(0)
    paths = []
    for name, (w, h) in (("wide.png", (90, 60)), ("tall.png", (50, 80))):
        pixels = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / name)
        paths.append(str(folder / name))
    return paths


def weights(tmp_path: Path, layout: str) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"{layout}.pth"
    torch.save({"model": build_model(tiny_cfg(layout, demo_weights="")).state_dict()}, path)
    return path


def export(tmp_path, layout, fmt, *extra, check=None):
    images = photos(tmp_path) if check is None else check
    out = tmp_path / f"model.{'ts' if fmt == 'torchscript' else 'onnx'}"
    return main(["--config-file", str(CONFIGS / f"smoke-nasnet-{layout}.yaml"), "--format", fmt, "--output",
                 str(out), "--check", *images, *extra, "MODEL.WEIGHTS", str(weights(tmp_path, layout)), *TINY]), out


def _perturb_onnx_weight(out: Path) -> None:
    model = onnx.load(str(out))
    weight = next(t for t in model.graph.initializer if "box_predictor.bbox_pred.weight" in t.name)
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(model, str(out))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("layout", ["fpn", "c4"])
def test_export_passes_check_on_other_image_sizes_and_a_file_that_differs_fails(tmp_path, capsys, layout, fmt):
    rc, out = export(tmp_path, layout, fmt)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.is_file() and "check passed on 2 images" in text
    assert text.count(": agree: ") == 2 and "tall.png: agree" in text
    if (layout, fmt) == ("fpn", "onnx"):  # a weight of the exported file changed: --check fails
        _perturb_onnx_weight(out)
        rc, _ = export(tmp_path, "fpn", "onnx", "--check-existing")
        captured = capsys.readouterr()
        assert rc == 1 and ": DIFFER: " in captured.out and "check failed" in captured.err
    if (layout, fmt) == ("c4", "torchscript"):  # the eager model of another score threshold: --check fails
        rc = main(["--config-file", str(CONFIGS / "smoke-nasnet-c4.yaml"), "--format", "torchscript", "--output",
                   str(out), "--check", *photos(tmp_path), "--check-existing", "MODEL.WEIGHTS",
                   str(tmp_path / "c4.pth"), *TINY, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.3"])
        captured = capsys.readouterr()
        assert rc == 1 and ": DIFFER: " in captured.out, captured.out


def test_a_trace_image_without_detections_and_a_damaged_file_are_one_line(tmp_path, capsys):
    # no detections on the trace image: the traced graph would return none for every image, so it is refused
    rc, out = export(tmp_path, "fpn", "onnx", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.01")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "trace image gives no detections" in err and not out.exists()
    out.write_bytes(b"not a model")
    rc, _ = export(tmp_path, "fpn", "onnx", "--check-existing")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "is not an ONNX model" in err


def test_check_compares_detections_in_any_order_and_an_image_without_any_compares_nothing():
    import numpy as np

    from nasnet_det.detection.export import compare

    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20]], dtype=np.float32)
    classes, scores = np.array([1, 1]), np.array([0.5, 0.5000001], dtype=np.float32)
    # near-equal scores in the other order: the same detections
    assert compare("a", (boxes, classes, scores), (boxes[::-1], classes[::-1], scores[::-1])).agree
    moved = boxes.copy()
    moved[0, 0] += 1.0
    assert not compare("a", (boxes, classes, scores), (moved, classes, scores)).agree
    assert not compare("a", (boxes[:0], classes[:0], scores[:0]), (boxes[:0], classes[:0], scores[:0])).agree


@pytest.mark.parametrize("argv, message", [
    (["--format", "tflite"], "error: --format 'tflite' is not supported; expected one of torchscript, onnx\n"),
    (["--format", "onnx", "--check", "absent.jpg"], "error: --check image absent.jpg does not exist\n"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    rc = main(["--config-file", str(CONFIGS / "smoke-nasnet-fpn.yaml"), "--output", str(tmp_path / "m"), *argv])
    assert rc == 2 and capsys.readouterr().err == message


def test_export_command_is_declared():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["nasnet_det.commands"]["export"] == \
        "nasnet_det.detection.export_cli:main"
    assert set(pyproject["project"]["optional-dependencies"]["export"]) == {"onnx", "onnxruntime"}
