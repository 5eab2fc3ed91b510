"""COCO-format dataset registration: sparse ids, empty images, and clear errors for bad input."""

import json
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers.data import COCO_IMAGES, COCO_JSON, write_coco_json
from PIL import Image

from nasnet_det.detection.config import get_nasnet_cfg
from nasnet_det.detection.data import (
    check_dataset_classes,
    parse_dataset_spec,
    register_coco_dataset,
    register_datasets,
)


def write_dataset(root: Path, n_images=2, categories=((3, "cat"), (7, "dog")), annotate=True, make_images=True):
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        name = f"{i}.png"
        if make_images:
            Image.new("RGB", (40, 30)).save(root / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": 40, "height": 30})
        if annotate:
            anns.append({"id": i + 1, "image_id": i + 1, "category_id": categories[0][0], "bbox": [2, 3, 10, 12],
                         "area": 120, "iscrowd": 0})
    write_coco_json(root / "ann.json", images, anns, [{"id": cid, "name": name} for cid, name in categories])
    return root / "ann.json", root / "images"


def test_sparse_ids_map_to_contiguous(tmp_path):
    j, im = write_dataset(tmp_path)
    assert register_coco_dataset("det_test_sparse", j, im) == 2
    meta = MetadataCatalog.get("det_test_sparse")
    assert meta.thing_classes == ["cat", "dog"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    records = DatasetCatalog.get("det_test_sparse")
    assert [r["annotations"][0]["category_id"] for r in records] == [0, 0]
    assert register_coco_dataset("det_test_sparse", j, im) == 2  # same files again: fine
    j2, im2 = write_dataset(tmp_path / "other")
    with pytest.raises(ValueError, match="already registered with other files"):
        register_coco_dataset("det_test_sparse", j2, im2)


def test_missing_image_files(tmp_path):
    j, im = write_dataset(tmp_path, make_images=False)
    with pytest.raises(FileNotFoundError, match=r"2 of 2 image files are missing .* 0.png, 1.png"):
        register_coco_dataset("det_test_missing", j, im)


def test_missing_json_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json do not exist"):
        register_coco_dataset("x", tmp_path / "nope.json", tmp_path)
    j, _ = write_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder .*absent"):
        register_coco_dataset("x", j, tmp_path / "absent")


def test_empty_dataset(tmp_path):
    j, im = write_dataset(tmp_path, n_images=0)
    with pytest.raises(ValueError, match="the dataset is empty"):
        register_coco_dataset("det_test_empty", j, im)


def test_unknown_category_in_annotations(tmp_path):
    j, im = write_dataset(tmp_path)
    data = json.loads(j.read_text())
    data["annotations"][0]["category_id"] = 99
    j.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category_id 99, which is not in 'categories'"):
        register_coco_dataset("det_test_badcat", j, im)


def test_category_count_must_match_model(tmp_path):
    j, im = write_dataset(tmp_path)
    register_datasets([f"det_test_classes={j}:{im}"])
    cfg = get_nasnet_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("det_test_classes",), ()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    with pytest.raises(ValueError, match="'det_test_classes' has 2 categories but MODEL.ROI_HEADS.NUM_CLASSES is 80"):
        check_dataset_classes(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    check_dataset_classes(cfg)
    cfg.DATASETS.TEST = ("never_registered",)
    with pytest.raises(KeyError, match="'never_registered' is not registered"):
        check_dataset_classes(cfg)


def test_train_and_test_classes_must_be_the_same_list(tmp_path):
    """Equal class counts are not enough: class i must be the same category in every dataset."""
    j, im = write_dataset(tmp_path / "a")
    j2, im2 = write_dataset(tmp_path / "b", categories=((3, "cat"), (7, "horse")))
    j3, im3 = write_dataset(tmp_path / "c", categories=((1, "cat"), (2, "dog")))  # other ids, same classes
    register_datasets([f"det_test_cls_a={j}:{im}", f"det_test_cls_b={j2}:{im2}", f"det_test_cls_c={j3}:{im3}"])
    cfg = get_nasnet_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("det_test_cls_a",), ("det_test_cls_c",)
    check_dataset_classes(cfg)
    cfg.DATASETS.TEST = ("det_test_cls_c", "det_test_cls_b")
    with pytest.raises(ValueError, match=r"DATASETS.TEST: dataset 'det_test_cls_b' has other categories than "
                                         r"'det_test_cls_a': class 1 is 'horse' there but 'dog'"):
        check_dataset_classes(cfg)


def test_training_set_without_annotations(tmp_path):
    j, im = write_dataset(tmp_path, annotate=False)
    register_datasets([f"det_test_noann={j}:{im}"])
    cfg = get_nasnet_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST, cfg.MODEL.ROI_HEADS.NUM_CLASSES = ("det_test_noann",), (), 2
    with pytest.raises(ValueError, match="has no annotations to train on"):
        check_dataset_classes(cfg)


def test_bad_spec():
    with pytest.raises(ValueError, match="expected NAME=ANNOTATIONS.json:IMAGE_DIR"):
        parse_dataset_spec("just/a/path.json")
    assert parse_dataset_spec("a=x/y.json:imgs") == ("a", "x/y.json", "imgs")


def test_coco_sample_registers_with_all_80_categories():
    n = register_coco_dataset("det_test_coco_sample", COCO_JSON, COCO_IMAGES)
    assert n == 32
    meta = MetadataCatalog.get("det_test_coco_sample")
    assert len(meta.thing_classes) == 80 and meta.thing_classes[0] == "person"
    assert max(meta.thing_dataset_id_to_contiguous_id) == 90
    records = DatasetCatalog.get("det_test_coco_sample")
    assert len(records) == 32 and sum(len(r["annotations"]) for r in records) == 209


def test_boxes_without_width_or_height_are_dropped_with_a_warning_that_counts_them(tmp_path, caplog):
    # [x, y, -15, h] trained as the box [x - 15, y, x, y + h]: detectron2's transforms take the corners' min/max
    import logging

    j, im = write_dataset(tmp_path, n_images=2)
    data = json.loads(j.read_text())
    data["annotations"] += [
        {"id": 7, "image_id": 1, "category_id": 3, "bbox": [30, 5, -15, 10], "area": 150, "iscrowd": 0},
        {"id": 8, "image_id": 2, "category_id": 7, "bbox": [5, 5, 8, 0], "area": 0, "iscrowd": 0}]
    j.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="nasnet_det"):
        register_coco_dataset("det_test_degenerate", j, im)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(j) in warnings[0] and "dropped 2 of 4 boxes" in warnings[0], warnings
    boxes = [a["bbox"] for r in DatasetCatalog.get("det_test_degenerate") for a in r["annotations"]]
    assert boxes == [[2, 3, 10, 12], [2, 3, 10, 12]]  # the two good boxes, and nothing else
    assert MetadataCatalog.get("det_test_degenerate").num_annotations == 2


def test_a_bbox_that_is_not_four_numbers_is_refused(tmp_path):
    j, im = write_dataset(tmp_path)
    data = json.loads(j.read_text())
    data["annotations"][1]["bbox"] = [1, 2, 3]
    j.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"ann.json: annotation 2 has bbox \[1, 2, 3\]; expected \[x, y, width"):
        register_coco_dataset("det_test_short_bbox", j, im)
