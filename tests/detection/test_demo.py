"""The demo never overwrites its inputs, never writes one name twice, and refuses another NASNet's weights."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from helpers.detection import CONFIGS, tiny_cfg
from PIL import Image

import nasnet_det.detection  # noqa: F401  (registers)
from nasnet_det.detection.demo import output_paths, run_demo


def images(folder: Path, names=("a.png", "b.png")) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (40, 32), (120, 30, 30)).save(folder / n)
    return [folder / n for n in names]


def test_output_paths_refuse_to_overwrite_inputs(tmp_path):
    paths = images(tmp_path / "in")
    assert output_paths(paths, tmp_path / "out") == [tmp_path / "out" / "a.png", tmp_path / "out" / "b.png"]
    with pytest.raises(ValueError, match=r"--output .*in would overwrite the input image .*a.png \(and 1 more\)"):
        output_paths(paths, tmp_path / "in")
    with pytest.raises(ValueError, match="would overwrite the input image"):
        output_paths(paths, tmp_path / "in" / ".." / "in")  # the same folder spelled differently


def test_output_paths_refuse_clashing_names(tmp_path):
    paths = images(tmp_path / "x") + images(tmp_path / "y", names=("a.png",))
    with pytest.raises(ValueError, match=r"share file names.*'a.png' from .*x/a.png, .*y/a.png"):
        output_paths(paths, tmp_path / "out")


def test_run_demo_checks_before_building_the_model(tmp_path):
    images(tmp_path / "in")
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS .*absent.pth does not exist"):
        run_demo(tiny_cfg(NUM_CELLS=2, demo_weights=tmp_path / "absent.pth"), [str(tmp_path / "in")], tmp_path / "out")
    (tmp_path / "det.pth").write_bytes(b"not read: the output check comes first")
    with pytest.raises(ValueError, match="would overwrite the input image"):
        run_demo(tiny_cfg(NUM_CELLS=2, demo_weights=tmp_path / "det.pth"), [str(tmp_path / "in")], tmp_path / "in")
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.png", "b.png"]


def test_run_demo_draws_and_rejects_another_nasnet(tmp_path):
    inputs = images(tmp_path / "in")
    torch.save({"model": build_model(tiny_cfg(NUM_CELLS=2, demo_weights="")).state_dict()}, tmp_path / "det.pth")
    written = run_demo(tiny_cfg(NUM_CELLS=2, demo_weights=tmp_path / "det.pth"), [str(p) for p in inputs],
                       tmp_path / "out", confidence=0.0)
    assert written == [tmp_path / "out" / "a.png", tmp_path / "out" / "b.png"]
    assert Image.open(written[0]).size == (40, 32)
    cfg = tiny_cfg(NUM_CELLS=2, demo_weights=tmp_path / "det.pth")
    cfg.MODEL.NASNET.FILTERS = 8
    with pytest.raises(ValueError, match=r"(?s)det.pth was trained with another NASNet.*MODEL.NASNET.FILTERS"):
        run_demo(cfg, [str(p) for p in inputs], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_run_demo_skips_unreadable_images_and_names_them(tmp_path, caplog):
    inputs = images(tmp_path / "in", names=("a.png", "b.png", "c.png"))
    inputs[1].write_bytes(inputs[1].read_bytes()[:40])  # truncated
    torch.save({"model": build_model(tiny_cfg(NUM_CELLS=2, demo_weights="")).state_dict()}, tmp_path / "det.pth")
    skipped: list = []
    with caplog.at_level(logging.WARNING, logger="nasnet_det"):
        written = run_demo(tiny_cfg(NUM_CELLS=2, demo_weights=tmp_path / "det.pth"), [str(tmp_path / "in")],
                           tmp_path / "out", confidence=0.0, skipped=skipped)
    assert written == [tmp_path / "out" / "a.png", tmp_path / "out" / "c.png"]
    assert skipped == [inputs[1]]
    assert caplog.text.count("skipping unreadable image") == 1 and "b.png" in caplog.text


@pytest.fixture
def restore_nasnet_det_log_handlers():
    # The demo command installs detectron2's log handler on the "nasnet_det" logger, bound to the stream
    # pytest captures for this test only; left in place it would write to a closed stream in later tests.
    logger = logging.getLogger("nasnet_det")
    handlers, propagate = list(logger.handlers), logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.propagate = propagate


@pytest.mark.usefixtures("restore_nasnet_det_log_handlers")
def test_demo_and_score_commands_report_bad_input_in_one_line(tmp_path, capsys):
    from nasnet_det.detection.cli import main

    assert main(["score", str(tmp_path / "gt.json"), str(tmp_path / "dt.json")]) == 2
    assert capsys.readouterr().err.strip() == f"error: ground-truth annotations {tmp_path / 'gt.json'} do not exist"
    assert main(["demo", "--config-file", str(CONFIGS / "smoke-nasnet-fpn.yaml"), "--input",
                 str(tmp_path / "nope.jpg"), "--output", str(tmp_path / "out")]) == 2
    assert "error: " in capsys.readouterr().err


def test_demo_samples_draw_the_top_boxes_labelled_on_four_coco_photos(tmp_path, capsys):
    from detectron2.data.detection_utils import read_image

    from nasnet_det.detection.cli import demo_main
    from nasnet_det.detection.demo import SAMPLE_IMAGES, SAMPLE_LISTING, TOP_BOXES, draw_sample_detections

    shrink = ["MODEL.NASNET.NUM_CELLS", "2", "MODEL.NASNET.FILTERS", "4", "MODEL.NASNET.STEM_FILTERS", "8",
              "INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "64"]  # as tiny_cfg(demo_weights=...)
    cfg = tiny_cfg(NUM_CELLS=2, demo_weights="")
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "det.pth")
    assert demo_main(["--config-file", str(CONFIGS / "smoke-nasnet-c4.yaml"), "--samples", "--output",
                      str(tmp_path / "out"), *shrink, "MODEL.WEIGHTS", str(tmp_path / "det.pth")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == SAMPLE_IMAGES and all(": " in line for line in printed)

    cfg.MODEL.WEIGHTS = str(tmp_path / "det.pth")
    drawn = draw_sample_detections(cfg, tmp_path / "again")
    assert len(drawn) == SAMPLE_IMAGES == 4
    assert any(boxes for _, boxes in drawn)  # an untrained detector may find nothing on some photo, not on all
    listing = json.loads((tmp_path / "again" / SAMPLE_LISTING).read_text())
    for (path, boxes), item in zip(drawn, listing):
        assert (tmp_path / "out" / path.name).is_file()  # the CLI drew the same photos
        assert len(boxes) <= TOP_BOXES and item["image"] == path.name and item["truth"]
        scores = [s for _, s, _ in boxes]
        assert scores == sorted(scores, reverse=True)
        photo = read_image(str(next((CONFIGS.parents[1] / "nasnet_det/data/sample/coco_sample/images")
                                    .glob(path.stem + ".*"))), format="RGB").astype(int)
        # the detector's top box on <photo>.png, the photo's first ground-truth box on <photo>_truth.png
        shown = [(path, boxes[0][2])] if boxes else []
        shown.append((path.with_name(item["truth_image"]), item["truth"][0]["box"]))
        if boxes:
            assert boxes[0][0] in printed[[p.split(":")[0] for p in printed].index(str(tmp_path / "out" / path.name))]
        for picture_path, (x0, y0, x1, y1) in shown:
            picture = np.asarray(Image.open(picture_path).convert("RGB")).astype(int)
            assert picture.shape == photo.shape
            changed = np.abs(picture - photo).sum(axis=2) > 0
            # the box is drawn: its outline changes pixels inside the box's extent (2 px margin for the line width)
            h, w = changed.shape
            y0, y1, x0, x1 = max(0, int(y0) - 2), min(h, int(y1) + 3), max(0, int(x0) - 2), min(w, int(x1) + 3)
            assert changed[y0:y1, x0:x1].any(), picture_path
            assert changed.mean() < 0.5  # a drawing on the photo, not another picture
