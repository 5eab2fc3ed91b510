"""ImageNet-style folders: clear errors for bad layouts, corrupt images skipped and counted."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_train_helpers import tiny_cfg
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


def test_training_counts_skipped_images(tmp_path):
    out = tmp_path / "run"
    train_dir, _ = make_fake_imagenet(out / "fake_imagenet", num_classes=2, train_per_class=8,
                                      val_per_class=2, size=40)
    bad = sorted((train_dir / "n00000000").iterdir())[0]
    bad.write_bytes(b"not a jpeg at all")
    cfg = tiny_cfg(out, "DATA.DATASET", "imagenet", "DATA.FAKE_CLASSES", 2, "DATA.IMAGE_SIZE", 32,
                   "MODEL.PENULTIMATE_FILTERS", 0, "MODEL.STEM_FILTERS", 8, "SOLVER.OPTIMIZER", "rmsprop",
                   "SOLVER.LABEL_SMOOTHING", 0.1, "SOLVER.BATCH_SIZE", 4, "SOLVER.MAX_STEPS", 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Trainer(cfg).train()
    assert any(issubclass(w.category, CorruptImageWarning) for w in caught)
    # 16 images, batch 4: four steps read every training image once, the corrupt one included.
    assert result["skipped_images"] == 1
    assert result["images"] == 4
