"""Test data in one place: the real sample shipped in the package, and tiny generated COCO-format sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from nasnet_det.data.sample import cifar10_npz, coco_sample

CIFAR_NPZ = cifar10_npz()  # 2000 real CIFAR-10 training images
COCO_JSON, COCO_IMAGES = coco_sample()  # 32 real COCO photos, 209 boxes, 80 categories


def write_coco_json(path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def shapes_dataset(root: Path, n_images: int = 4, size: int = 64,
                   categories: tuple[tuple[int, str], ...] = ((4, "red"), (9, "blue")),
                   boxes_per_image: int = 2) -> tuple[Path, Path]:
    """Bright rectangles on noise, the first category red, the second blue (sparse ids by default on purpose).
    Returns (annotations json, image folder)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        for k in range(boxes_per_image):
            w, h = (int(v) for v in rng.integers(14, min(30, size - 4), 2))
            x, y = (int(v) for v in rng.integers(0, size - 30, 2))
            first = (i + k) % 2 == 0
            img[y:y + h, x:x + w] = (230, 30, 30) if first else (30, 30, 230)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": categories[0 if first else 1][0],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": size, "height": size})
    cats = [{"id": cid, "name": name} for cid, name in categories]
    return write_coco_json(root / "ann.json", images, anns, cats), root / "images"
