"""ImageNet-style folders: clear errors for bad layouts, corrupt images skipped and counted."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from helpers.train import tiny_cfg
from torch.utils.data import DataLoader

from nasnet_det.classification import Trainer
from nasnet_det.data.imagenet import (
    CorruptImageWarning,
    SkippingImageFolder,
    build_imagenet_datasets,
    check_image_folders,
    collate_skipping,
    imagenet_transforms,
    make_fake_imagenet,
)
from nasnet_det.models.pretrained import read_checkpoint


@pytest.fixture
def fake(tmp_path):
    return make_fake_imagenet(tmp_path / "fake", num_classes=3, train_per_class=4, val_per_class=2, size=40)


def test_fake_imagenet_is_real_jpegs_with_matching_classes(fake):
    train_dir, val_dir = fake
    assert check_image_folders(train_dir, val_dir) == ["n00000000", "n00000001", "n00000002"]
    files = sorted(train_dir.rglob("*.JPEG"))
    assert len(files) == 12 and files[0].read_bytes()[:2] == b"\xff\xd8"  # JPEG magic
    train, val = build_imagenet_datasets(train_dir, val_dir, image_size=32)
    img, label, skipped = val[len(val) - 1]
    assert img.shape == (3, 32, 32) and label == 2 and skipped == ()
    assert -1.0 <= float(img.min()) and float(img.max()) <= 1.0  # Inception scaling


def test_missing_and_empty_folders_give_clear_errors(tmp_path, fake):
    train_dir, val_dir = fake
    with pytest.raises(FileNotFoundError, match=r"val folder .*nowhere does not exist"):
        check_image_folders(train_dir, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no class sub-folders"):
        check_image_folders(tmp_path / "empty", val_dir)
    (val_dir / "n00000001").rename(tmp_path / "moved")
    (val_dir / "n00000001").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) hold no images \(n00000001\)"):
        check_image_folders(train_dir, val_dir)


def test_class_mismatch_between_train_and_val_names_the_classes(fake):
    train_dir, val_dir = fake
    (val_dir / "n00000002").rename(val_dir / "n99999999")
    with pytest.raises(ValueError, match=r"only in train: \['n00000002'\]; only in val: \['n99999999'\]"):
        check_image_folders(train_dir, val_dir)


def test_corrupt_jpeg_is_skipped_with_a_warning_and_counted(fake):
    train_dir, _ = fake
    bad = sorted((train_dir / "n00000001").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    ds = SkippingImageFolder(train_dir, imagenet_transforms(False, 32))
    with pytest.warns(CorruptImageWarning, match=bad.name):
        batches = list(DataLoader(ds, batch_size=4, collate_fn=collate_skipping))
    images = torch.cat([b[0] for b in batches])
    assert images.shape == (12, 3, 32, 32)  # the slot is filled by the next readable image
    assert [p for b in batches for p in b[2]] == [str(bad)]
    assert ds.skipped == [str(bad)]


def test_hidden_folders_are_not_classes_so_labels_match_between_train_and_val(fake):
    train_dir, val_dir = fake
    # Jupyter leaves .ipynb_checkpoints/ (with images) in train; torchvision would make it class 0 there.
    hidden = train_dir / ".ipynb_checkpoints"
    hidden.mkdir()
    shutil.copy(sorted((train_dir / "n00000002").iterdir())[0], hidden / "copy-checkpoint.JPEG")
    (val_dir / ".cache").mkdir()  # an empty hidden folder is no (empty) class either
    train, val = build_imagenet_datasets(train_dir, val_dir, image_size=32)
    assert train.classes == val.classes == check_image_folders(train_dir, val_dir) == \
        ["n00000000", "n00000001", "n00000002"]
    assert len(train) == 12 and len(val) == 6
    for ds in (train, val):
        assert all(Path(path).parent.name == ds.classes[label] for path, label in ds.samples)


def test_corrupt_images_are_counted_once_survive_resume_and_are_reported_by_eval(tmp_path):
    out = tmp_path / "run"
    train_dir, val_dir = make_fake_imagenet(out / "fake_imagenet", num_classes=2, train_per_class=8,
                                            val_per_class=2, size=40)
    bad = sorted((train_dir / "n00000000").iterdir())[0]
    bad.write_bytes(b"not a jpeg at all")
    sorted((val_dir / "n00000001").iterdir())[0].write_bytes(b"")
    # 16 training images, batch 4: 4 steps per epoch, so 12 steps read the corrupt image in 3 epochs. Logging
    # only at the end, the count must still reach the step-4 checkpoint and survive the resume from it.
    cfg = tiny_cfg(out, "DATA.DATASET", "imagenet", "DATA.FAKE_CLASSES", 2, "DATA.IMAGE_SIZE", 32,
                   "MODEL.NASNET.PENULTIMATE_FILTERS", 0, "MODEL.NASNET.STEM_FILTERS", 8, "SOLVER.OPTIMIZER", "rmsprop",
                   "SOLVER.LABEL_SMOOTHING", 0.1, "SOLVER.BATCH_SIZE", 4, "SOLVER.MAX_STEPS", 12,
                   "TRAIN.CHECKPOINT_PERIOD", 4, "TRAIN.LOG_PERIOD", 100, "TRAIN.EVAL_PERIOD", 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Trainer(cfg).train(interrupt_at_step=6) == {"interrupted_at_step": 6}
        assert read_checkpoint(out / "checkpoints" / "ckpt_00000004.pth")["skipped_paths"] == [str(bad)]
        result = Trainer(cfg).train()
    assert any(issubclass(w.category, CorruptImageWarning) for w in caught)
    assert result["train_skipped_images"] == 1 and result["val_skipped_images"] == 1
    assert result["images"] == 4  # the corrupt validation image's slot is filled by the next readable one
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_images"]) for r in records if r["type"] == "train"] == [(12, 1)]
    assert [(r["step"], r["skipped_images"]) for r in records if r["type"] == "eval"] == [(12, 1)]


def test_the_embedded_cifar10_sample_as_an_image_folder_is_its_real_photos(tmp_path: Path):
    import numpy as np
    from PIL import Image

    from nasnet_det.classification.config import load_config
    from nasnet_det.data.cifar import CIFAR10_CLASSES, load_cifar10_npz
    from nasnet_det.data.imagenet import make_sample_image_folder
    from nasnet_det.data.sample import cifar10_npz

    train_dir, val_dir = make_sample_image_folder(tmp_path / "s", "cifar10", 3, 2)
    assert check_image_folders(train_dir, val_dir) == sorted(CIFAR10_CLASSES)
    x, y = load_cifar10_npz(cifar10_npz())
    for split, per_class in ((train_dir, 3), (val_dir, 2)):
        files = sorted(split.glob("*/*.png"))
        assert len(files) == 10 * per_class
        for f in files[:4]:  # the sample's own pixels (lossless), in the folder of its class
            row = int(f.stem.split("_")[-1])
            assert np.array_equal(np.asarray(Image.open(f)), x[row]) and f.parent.name == CIFAR10_CLASSES[y[row]]
    with pytest.raises(ValueError, match=r"SAMPLE_TRAIN_PER_CLASS \+ DATA.SAMPLE_VAL_PER_CLASS must be <= 200"):
        make_sample_image_folder(tmp_path / "t", "cifar10", 190, 20)
    with pytest.raises(ValueError, match=r"DATA.IMAGE_SAMPLE must be one of cifar10 .*'coco'"):
        load_config(None, ["DATA.DATASET", "imagenet", "DATA.IMAGE_SAMPLE", "coco"])
    with pytest.raises(ValueError, match=r"DATA.IMAGE_SAMPLE 'cifar10' and DATA.FAKE_CLASSES 4 both choose"):
        load_config(None, ["DATA.DATASET", "imagenet", "DATA.IMAGE_SAMPLE", "cifar10", "DATA.FAKE_CLASSES", "4"])


def test_a_flat_val_folder_is_one_line_naming_data_val_dir_and_the_valprep_step(tmp_path, fake, capsys):
    from nasnet_det.classification.cli import main

    train_dir, val_dir = fake
    flat = tmp_path / "val_flat"  # ImageNet's validation archive unpacks so: images, no class folders
    flat.mkdir()
    for i, image in enumerate(sorted(val_dir.rglob("*.JPEG"))):
        shutil.copy(image, flat / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    config = Path(__file__).resolve().parents[2] / "configs/train/imagenet_smoke.yaml"
    argv = ["--config-file", str(config), "--output-dir", str(tmp_path / "run"), "DATA.TRAIN_DIR", str(train_dir),
            "DATA.VAL_DIR", str(flat)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: DATA.VAL_DIR {flat} holds 6 images directly and no class sub-folders; it must "
                          "hold one sub-folder per class, named as in DATA.TRAIN_DIR")
    assert "valprep" in err and err.count("\n") == 1 and "Traceback" not in err
