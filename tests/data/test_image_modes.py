"""Image files in other modes than 8-bit RGB (issue 31): a 16-bit PNG was read as 99.6 % white pixels, so the
demo, ``export --check`` and the report's drawing ran the detector on a white image. Every image reader must give
the model the pixels of the image's 8-bit version (or refuse the file with one line).

The detector is not run: what the readers hand it (arrays) is compared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nasnet_det.utils.errors import BadInputError

RNG = np.random.default_rng(31)
GREY = RNG.integers(0, 256, (24, 32), dtype=np.uint8)  # every value 0..255 likely, 0 and 255 forced below
GREY[0, 0], GREY[0, 1] = 0, 255
RGB = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def grey_pair(folder: Path) -> tuple[Path, Path]:
    """The same grey picture as an 8-bit PNG and as a 16-bit PNG (v * 257: 0 -> 0, 255 -> 65535)."""
    eight, sixteen = folder / "grey8.png", folder / "grey16.png"
    Image.fromarray(GREY).save(eight)
    Image.fromarray(GREY.astype(np.uint16) * 257).save(sixteen)
    assert Image.open(sixteen).mode == "I;16"  # what PIL makes of a 16-bit grey PNG
    return eight, sixteen


def test_a_16bit_png_gives_the_export_the_pixels_of_its_8bit_version(tmp_path):
    from nasnet_det.detection.config import get_nasnet_cfg
    from nasnet_det.detection.export import preprocess

    eight, sixteen = grey_pair(tmp_path)
    cfg = get_nasnet_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 24, 32  # no resizing: the file's own pixels
    expected = preprocess(cfg, eight)
    assert expected.shape == (3, 24, 32) and torch.equal(expected[0], torch.as_tensor(GREY, dtype=torch.float32))
    assert torch.equal(preprocess(cfg, sixteen), expected)  # was 99.6 % 255


def test_a_16bit_png_gives_the_demos_detector_the_pixels_of_its_8bit_version(tmp_path, monkeypatch):
    from detectron2.structures import Boxes, Instances

    import nasnet_det.detection.demo as demo
    from nasnet_det.detection.config import get_nasnet_cfg

    eight, sixteen = grey_pair(tmp_path)
    seen: dict[str, np.ndarray] = {}

    class Recorder:  # what the demo hands DefaultPredictor, and no detections
        def __call__(self, image: np.ndarray) -> dict:
            seen[f"call{len(seen)}"] = image.copy()
            empty = Instances(image.shape[:2], pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0),
                              pred_classes=torch.zeros(0, dtype=torch.int64))
            return {"instances": empty}

    monkeypatch.setattr(demo, "build_predictor", lambda cfg, threshold: Recorder())
    cfg = get_nasnet_cfg()
    cfg.MODEL.WEIGHTS = str(eight)  # any existing file: the predictor is the recorder
    cfg.DATASETS.COCO_FILES, cfg.DATASETS.TEST, cfg.DATASETS.TRAIN = [], (), ()
    written = demo.run_demo(cfg, [str(eight), str(sixteen)], tmp_path / "drawn")
    assert len(written) == 2
    from_8bit, from_16bit = seen["call0"], seen["call1"]
    assert from_8bit.dtype == np.uint8 and from_8bit.shape == (24, 32, 3)
    assert np.array_equal(from_8bit[:, :, 0], GREY)
    assert np.array_equal(from_16bit, from_8bit)


def mode_files(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Files in the modes PIL opens them in, and the 8-bit RGB pixels each must become."""
    grey_rgb = np.repeat(GREY[:, :, None], 3, axis=2)
    files: dict[str, tuple[Path, np.ndarray]] = {}

    def save(mode: str, image: Image.Image, name: str, expected: np.ndarray) -> None:
        image.save(folder / name)
        assert Image.open(folder / name).mode == mode, (name, Image.open(folder / name).mode)
        files[mode] = (folder / name, expected)

    save("I;16", Image.fromarray(GREY.astype(np.uint16) * 257), "i16.png", grey_rgb)
    save("I", Image.fromarray(GREY.astype(np.int32) * 257), "i32.tiff", grey_rgb)  # 16-bit values in a 32-bit TIFF
    save("F", Image.fromarray(GREY.astype(np.float32) / 255), "f32.tiff", grey_rgb)  # a float image in 0..1
    save("LA", Image.fromarray(GREY).convert("LA"), "la.png", grey_rgb)
    palette = Image.fromarray(RGB).quantize(64)
    save("P", palette, "p.png", np.asarray(palette.convert("RGB")))
    cmyk = Image.fromarray(RGB).convert("CMYK")
    save("CMYK", cmyk, "cmyk.tiff", np.asarray(cmyk.convert("RGB")))
    return files


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "LA", "P", "CMYK"])
def test_every_image_mode_becomes_correct_8bit_rgb_in_the_demo_and_export(tmp_path, mode):
    from nasnet_det.detection.config import get_nasnet_cfg
    from nasnet_det.detection.demo import read_bgr8
    from nasnet_det.detection.export import preprocess

    path, expected = mode_files(tmp_path)[mode]
    bgr = read_bgr8(path)
    assert bgr.dtype == np.uint8 and np.array_equal(bgr[:, :, ::-1], expected)
    cfg = get_nasnet_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 24, 32
    channels_first = np.ascontiguousarray((expected if cfg.INPUT.FORMAT == "RGB" else expected[:, :, ::-1])
                                          .transpose(2, 0, 1))
    assert torch.equal(preprocess(cfg, path), torch.as_tensor(channels_first, dtype=torch.float32))


def test_a_16bit_png_gives_imagenet_training_the_pixels_of_its_8bit_version(tmp_path):
    from nasnet_det.data.imagenet import SkippingImageFolder

    for name, pixels in (("a8", GREY), ("b16", GREY.astype(np.uint16) * 257)):
        (tmp_path / "cls" / name).mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / "cls" / name / "x.png")
    dataset = SkippingImageFolder(tmp_path / "cls", transform=np.asarray)
    (eight, _, _), (sixteen, _, _) = dataset[0], dataset[1]
    assert np.array_equal(eight[:, :, 0], GREY) and np.array_equal(sixteen, eight)


def test_modes_without_a_correct_8bit_reading_are_one_line_naming_the_file(tmp_path):
    from nasnet_det.utils.images import read_rgb8, to_rgb8

    with pytest.raises(BadInputError, match="x.hsv: image mode HSV is not supported; expected"):
        to_rgb8(Image.fromarray(RGB).convert("HSV"), "x.hsv")
    Image.fromarray(np.full((4, 4), 70_000, np.int32)).save(tmp_path / "big.tiff")
    with pytest.raises(BadInputError, match=r"big.tiff: the I image has values 70000..70000; expected values in"):
        read_rgb8(tmp_path / "big.tiff")
