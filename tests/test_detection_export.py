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


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("layout", ["fpn", "c4"])
def test_export_passes_check_on_other_image_sizes(tmp_path, capsys, layout, fmt):
    rc, out = export(tmp_path, layout, fmt)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.is_file() and "check passed on 2 images" in text
    assert text.count(": agree: ") == 2 and "tall.png: agree" in text


def test_onnx_file_with_a_perturbed_weight_fails_check(tmp_path, capsys):
    rc, out = export(tmp_path, "fpn", "onnx")
    assert rc == 0
    model = onnx.load(str(out))
    weight = next(t for t in model.graph.initializer if "box_predictor.bbox_pred.weight" in t.name)
    values = onnx.numpy_helper.to_array(weight) * 1.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(out))
    capsys.readouterr()
    rc, _ = export(tmp_path, "fpn", "onnx", "--check-existing")
    captured = capsys.readouterr()
    assert rc == 1 and ": DIFFER: " in captured.out and "check failed" in captured.err


def test_torchscript_file_of_another_score_threshold_fails_check(tmp_path, capsys):
    rc, out = export(tmp_path, "c4", "torchscript")
    assert rc == 0
    capsys.readouterr()
    rc = main(["--config-file", str(CONFIGS / "smoke-nasnet-c4.yaml"), "--format", "torchscript", "--output",
               str(out), "--check", *photos(tmp_path), "--check-existing", "MODEL.WEIGHTS",
               str(tmp_path / "c4.pth"), *TINY, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.3"])
    captured = capsys.readouterr()
    assert rc == 1 and ": DIFFER: " in captured.out, captured.out


@pytest.mark.parametrize("argv, message", [
    (["--format", "tflite"], "error: --format 'tflite' is not supported; expected one of torchscript, onnx\n"),
    (["--format", "onnx", "--check", "absent.jpg"], "error: --check image absent.jpg does not exist\n"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    rc = main(["--config-file", str(CONFIGS / "smoke-nasnet-fpn.yaml"), "--output", str(tmp_path / "m"), *argv])
    assert rc == 2 and capsys.readouterr().err == message


def test_export_command_is_declared():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["nasnet_det.commands"]["export"] == \
        "nasnet_det.detection.export_cli:main"
    assert set(pyproject["project"]["optional-dependencies"]["export"]) == {"onnx", "onnxruntime"}
