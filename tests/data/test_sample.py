"""The real data sample embedded in the package: what the smoke configs, make run and the tests train on."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from nasnet_det.data import load_cifar_source
from nasnet_det.data.sample import cifar10_npz, coco_sample

REPO = Path(__file__).resolve().parents[2]


def test_cifar_sample_is_balanced_and_loads_as_builtin_source():
    x, y = load_cifar_source("npz:builtin")
    assert x.shape == (2000, 32, 32, 3) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [200] * 10
    assert cifar10_npz().is_file() and cifar10_npz().stat().st_size < 8_000_000
    assert len({img.tobytes() for img in x}) == len(x)  # no duplicates


def test_coco_sample_boxes_fit_their_images_and_score_ap_1_against_themselves():
    from PIL import Image
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    json_file, images = coco_sample()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_file))
    assert len(gt.imgs) == 32 and len(gt.cats) == 80
    for img in gt.imgs.values():
        with Image.open(images / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
        for ann in gt.imgToAnns[img["id"]]:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0
            assert x + w <= img["width"] + 0.01 and y + h <= img["height"] + 0.01
    dets = [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=1.0)
            for a in gt.dataset["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] > 0.99


def test_smoke_configs_use_the_embedded_sample_not_shared():
    smoke = [REPO / "configs/search/smoke.yaml", *REPO.glob("configs/train/*smoke*.yaml"),
             *REPO.glob("configs/detection/smoke-*.yaml")]
    assert len(smoke) >= 4
    for f in smoke:
        live = "\n".join(line.split("#")[0] for line in f.read_text().splitlines())
        assert "shared/" not in live, f


def test_detection_config_registers_coco_sample_by_name():
    from detectron2.data import DatasetCatalog

    from nasnet_det.detection.config import get_nasnet_cfg
    from nasnet_det.detection.data import check_dataset_classes, register_builtin_datasets

    cfg = get_nasnet_cfg()
    cfg.merge_from_file(str(REPO / "configs/detection/smoke-nasnet-c4.yaml"))
    register_builtin_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    check_dataset_classes(cfg)
    assert len(DatasetCatalog.get("coco_sample_train")) == 32


def test_person_sample_is_the_person_boxes_of_the_coco_sample_and_registers_as_one_class():
    """coco_sample/person.json (the set the smoke pipeline's detector fits) is exactly person_subset of
    annotations.json: every person box, on every photo that has one, nothing else."""
    import json

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from nasnet_det.data.sample import coco_sample_person, person_subset
    from nasnet_det.detection.data import register_builtin_datasets

    full = json.loads(coco_sample()[0].read_text())
    person = json.loads(coco_sample_person()[0].read_text())
    expected = person_subset(full)
    for key in ("images", "annotations", "categories"):
        assert person[key] == expected[key], key
    assert (len(person["images"]), len(person["annotations"])) == (13, 56)
    assert coco_sample_person()[1] == coco_sample()[1]
    register_builtin_datasets(["coco_sample_person"])
    assert MetadataCatalog.get("coco_sample_person").thing_classes == ["person"]
    records = DatasetCatalog.get("coco_sample_person")
    assert len(records) == 13 and sum(len(r["annotations"]) for r in records) == 56
    assert {a["category_id"] for r in records for a in r["annotations"]} == {0}
