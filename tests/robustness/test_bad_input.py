"""Bad input to every tool ends with exit code 2 and one ``error:`` line naming the file or key (no traceback).

Table-driven: each case is (tool, argv builder, text the message must contain). The CLIs run in-process
(``main(argv)``) and fail before any training starts, so the table stays fast.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers.data import shapes_dataset
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SEARCH_CFG = str(REPO / "configs" / "search" / "smoke.yaml")
CIFAR_CFG = str(REPO / "configs" / "train" / "cifar10_smoke.yaml")
IMAGENET_CFG = str(REPO / "configs" / "train" / "imagenet_smoke.yaml")
DET_CFG = str(REPO / "configs" / "detection" / "smoke-nasnet-c4.yaml")
PIPELINE_CFG = str(REPO / "configs" / "pipeline" / "smoke.yaml")


class Files:
    """Bad (and a few good) input files, made once per test in tmp_path."""

    def __init__(self, root: Path):
        self.root = root
        self.bad_yaml = root / "bad.yaml"
        self.bad_yaml.write_text("MODEL:\n  NASNET:\n    FILTERS: [4\n  oops: : :\n")
        self.unknown_key_yaml = root / "unknown.yaml"
        self.unknown_key_yaml.write_text("NOT_A_SECTION:\n  FOO: 1\n")
        self.a_file = root / "a_file"
        self.a_file.write_text("I am a file, not a folder\n")
        good = root / "good.npz"
        rng = np.random.default_rng(0)
        np.savez(good, x_train=rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8),
                 y_train=rng.integers(0, 10, 20))
        self.truncated_npz = root / "truncated.npz"
        self.truncated_npz.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        self.keyless_npz = root / "keyless.npz"
        np.savez(self.keyless_npz, images=np.zeros((2, 32, 32, 3), np.uint8))
        self.text_pth = root / "notes.pth"
        self.text_pth.write_text("these are not weights\n")
        import torch

        torch.save({"model": {"w": torch.zeros(1000)}}, root / "full.pth")
        self.truncated_pth = root / "truncated.pth"
        self.truncated_pth.write_bytes((root / "full.pth").read_bytes()[:300])
        self.empty_pth = root / "empty.pth"
        self.empty_pth.write_bytes(b"")
        # a tiny COCO dataset (2 images, 2 classes) for detection
        shapes_dataset(root, n_images=2, size=48, categories=((1, "a"), (2, "b")), boxes_per_image=1)
        self.name = f"badin_{abs(hash(str(root)))}"  # detectron2's catalog is per process: one name per test
        self.dataset = f"{self.name}={root / 'ann.json'}:{root / 'images'}"
        self.broken_image_dir = root / "broken_images"
        self.broken_image_dir.mkdir()
        (self.broken_image_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        # ImageNet folders whose classes differ
        for split, classes in (("train", ("cat", "dog")), ("val", ("cat", "eel"))):
            for c in classes:
                (root / "inet" / split / c).mkdir(parents=True)
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                    root / "inet" / split / c / "0.jpg")
        (root / "empty_class" / "train" / "cat").mkdir(parents=True)
        # detections for `nasnet-det detect score` (against ann.json): a good one, broken ones, a file not JSON
        self.not_json = root / "not_json.json"
        self.not_json.write_text("{oops")
        det = {"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "score": 0.5}
        self.dets = root / "dets.json"
        self.dets.write_text(json.dumps([det]))
        self.dets_without_score = root / "dets_noscore.json"
        self.dets_without_score.write_text(json.dumps([det, {k: v for k, v in det.items() if k != "score"}]))
        self.dets_unknown_image = root / "dets_unknown_image.json"
        self.dets_unknown_image.write_text(json.dumps([dict(det, image_id=77)]))
        self.dets_short_box = root / "dets_short_box.json"
        self.dets_short_box.write_text(json.dumps([dict(det, bbox=[1, 2, 3])]))
        # a search output folder whose journal is garbage
        self.damaged_search = root / "damaged_search"
        self.damaged_search.mkdir()
        (self.damaged_search / "journal.sqlite").write_bytes(b"not a database\n" * 64)
        self.made_by_config = root / "made_by_config"  # the folder a config's Python tag would create
        self.bad_files()

    def bad_files(self) -> None:
        """Genotype, COCO and weight files that a new user met (issue 31): each must be one line."""
        import json

        import torch

        root = self.root
        cell = {"blocks": [[0, 1, "identity", "identity", "add"]]}
        self.g_list = root / "g_list.json"  # a block input given as a list
        self.g_list.write_text(json.dumps({"normal": {"blocks": [[[0], 1, "identity", "identity", "add"]]},
                                           "reduce": cell}))
        self.g_latin1 = root / "g_latin1.json"
        self.g_latin1.write_bytes(json.dumps({"name": "café", "normal": cell, "reduce": cell},
                                             ensure_ascii=False).encode("latin-1"))
        self.g_deep = root / "g_deep.json"
        self.g_deep.write_text("[" * 100_000 + "]" * 100_000)
        good = json.loads((root / "ann.json").read_text())

        def coco(name: str, data, encoding: str = "utf-8") -> str:
            (root / name).write_bytes(json.dumps(data).encode(encoding))
            return f"{self.name}={root / name}:{root / 'images'}"

        def changed(edit) -> dict:
            data = json.loads(json.dumps(good))
            edit(data)
            return data

        self.coco = {
            "cat-without-id": coco("cat_no_id.json", changed(lambda d: d["categories"][1].pop("id"))),
            "image-without-file-name": coco("no_file_name.json", changed(lambda d: d["images"][1].pop("file_name"))),
            "top-level-list": coco("top_list.json", [good]),
            "utf16": coco("utf16.json", good, "utf-16"),
            "duplicate-annotation-ids": coco("dup_ann_ids.json", changed(
                lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]))),
            "segmentation-only": coco("segm_only.json", changed(lambda d: d["annotations"][0].pop("bbox"))),
            "duplicate-image-ids": coco("dup_image_ids.json", changed(lambda d: d["images"][1].update(
                id=d["images"][0]["id"]))),  # was: 2 images registered, 1 loaded, AP printed, exit 0
        }
        (root / "images16").mkdir()  # the dataset's pictures as 16-bit PNGs: trained on as white images
        for image in good["images"]:
            grey = np.asarray(Image.open(root / "images" / image["file_name"]).convert("L"), np.uint16) * 257
            Image.fromarray(grey).save(root / "images16" / image["file_name"])
        self.coco["16-bit-images"] = f"{self.name}={root / 'ann.json'}:{root / 'images16'}"
        self.dets_json = root / "dets_empty.json"
        self.dets_json.write_text("[]")
        self.backbone_pth = root / "backbone.pth"  # what nasnet-det train / --export-backbone writes
        torch.save({"format": "nasnet-det/v1", "arch": {"num_cells": 1}, "state_dict": {"conv0.conv.weight":
                                                                                      torch.zeros(1)}},
                   self.backbone_pth)
        self.timm_pth = root / "timm_nasnet.pth"  # an ImageNet classifier's state dict
        torch.save({"conv0.conv.weight": torch.zeros(1), "cell_0.comb_iter_0_left.weight": torch.zeros(1),
                    "last_linear.weight": torch.zeros(1)}, self.timm_pth)
        self.not_an_image = root / "photo.jpg"
        self.not_an_image.write_text("not a picture\n")

    def config(self, name: str, text: str) -> str:
        """A config file ``name`` with ``text`` (made when a case is built); its path."""
        (self.root / name).write_text(text)
        return str(self.root / name)

    def python_tag(self) -> str:
        return self.config("tag.yaml", f"SOLVER:\n  X: !!python/object/apply:os.mkdir ['{self.made_by_config}']\n")

    def chain(self, length: int) -> str:
        """chain0.yaml -> chain1.yaml -> ... (each the _BASE_ of the one before)."""
        for i in range(length):
            self.config(f"chain{i}.yaml", f"_BASE_: chain{i + 1}.yaml\n")
        self.config(f"chain{length}.yaml", "{}\n")
        return str(self.root / "chain0.yaml")


# Config files every config loader must refuse with one line naming the file (and key): (case id suffix, how to
# make the file, text the line must contain). Old code: a Python tag ran, a repeated key was taken silently, a
# _BASE_ cycle or a deep chain was a RecursionError, a _BASE_ number an AttributeError, _BASE_ "" "Is a directory"
# without the key, a list at the top level a TypeError, a base's SOLVER: 5 an AssertionError.
BAD_CONFIGS: list[tuple[str, Callable[[Files], str], str]] = [
    ("python-tag", Files.python_tag, "tag.yaml line 2"),
    ("repeated-key", lambda f: f.config("dup.yaml", "SOLVER:\n  BATCH_SIZE: 0\n  BATCH_SIZE: 8\n"),
     "SOLVER.BATCH_SIZE is given twice (lines 2 and 3)"),
    ("repeated-key-in-base", lambda f: (f.config("dupbase.yaml", "A: 1\nA: 2\n"),
                                        f.config("child.yaml", "_BASE_: dupbase.yaml\n"))[1], "dupbase.yaml"),
    ("base-is-itself", lambda f: f.config("self.yaml", "_BASE_: self.yaml\n"), "cycle"),
    ("base-cycle", lambda f: (f.config("b.yaml", "_BASE_: a.yaml\n"), f.config("a.yaml", "_BASE_: b.yaml\n"))[1],
     "a.yaml -> b.yaml -> a.yaml"),
    ("base-chain-600", lambda f: f.chain(600), "more than 64 files"),
    ("base-number", lambda f: f.config("num.yaml", "_BASE_: 5\n"), "_BASE_ must be a YAML file name"),
    ("base-empty", lambda f: f.config("emptybase.yaml", "_BASE_: ''\n"), "_BASE_ must be a YAML file name"),
    ("top-level-list", lambda f: f.config("list.yaml", "- a\n- b\n"), "list.yaml: expected a mapping"),
    ("base-value-vs-section", lambda f: (f.config("scalar.yaml", "SOLVER: 5\n"),
                                         f.config("sect.yaml", "_BASE_: scalar.yaml\nSOLVER:\n  X: 2\n"))[1],
     "scalar.yaml sets SOLVER to the value 5"),
    ("python-config", lambda f: f.config("lazy.py", "model = dict()\n"), "lazy.py: a Python config"),
    ("not-utf8", lambda f: ((f.root / "latin1.yaml").write_bytes(b"A: caf\xe9\n"), str(f.root / "latin1.yaml"))[1],
     "latin1.yaml is not a text file in UTF-8"),
]


def search(f: Files, *args: str) -> tuple[Callable[[list[str]], int], list[str]]:
    from search.cli import main

    return main, ["--no-progress", "--config-file", SEARCH_CFG, *args]


def train(f: Files, config: str, *args: str) -> tuple[Callable[[list[str]], int], list[str]]:
    from nasnet_det.classification.cli import main

    return main, ["--config-file", config, *args]


def detect(f: Files, *args: str, opts: tuple[str, ...] = ()) -> tuple[Callable[[list[str]], int], list[str]]:
    from nasnet_det.detection.train import train_main

    base = ["DATASETS.COCO_FILES", "[]", "DATASETS.TRAIN", f"('{f.name}',)", "DATASETS.TEST", f"('{f.name}',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.NASNET.FILTERS", "4", "OUTPUT_DIR", str(f.root / "det_out")]
    return train_main, ["--config-file", DET_CFG, "--dataset", f.dataset, *args, *base, *opts]


def demo(f: Files, *args: str, opts: tuple[str, ...] = ()) -> tuple[Callable[[list[str]], int], list[str]]:
    from nasnet_det.detection.cli import demo_main

    base = ["DATASETS.COCO_FILES", f"['{f.dataset}']", "DATASETS.TEST", f"('{f.name}',)", "MODEL.ROI_HEADS.NUM_CLASSES",
            "2", "MODEL.NASNET.FILTERS", "4"]
    return demo_main, [*args, *base, *opts]


def score(f: Files, gt: Path, detections: Path, backend: str) -> tuple[Callable[[list[str]], int], list[str]]:
    from nasnet_det.detection.cli import score_main

    return score_main, [str(gt), str(detections), "--backend", backend]


def detect_on(f: Files, spec: str, *args: str, opts: tuple[str, ...] = ()) -> tuple[Callable[[list[str]], int],
                                                                                   list[str]]:
    """Detection training / evaluation on the dataset ``spec`` (NAME=JSON:IMAGES) instead of the good one."""
    main, argv = detect(f, *args, opts=opts)
    return main, [spec if a == f.dataset else a for a in argv]


def score_coco(f: Files, gt: str) -> tuple[Callable[[list[str]], int], list[str]]:
    from nasnet_det.detection.cli import score_main

    return score_main, [gt.split("=", 1)[1].rpartition(":")[0], str(f.dets_json)]


def export(f: Files, *args: str) -> tuple[Callable[[list[str]], int], list[str]]:
    from nasnet_det.detection.export_cli import main

    return main, ["--config-file", DET_CFG, *args]


def profile(f: Files, *args: str) -> tuple[Callable[[list[str]], int], list[str]]:
    from nasnet_det.cli import main

    return main, ["profile", "--checked-only", *args]


def demo_images(f: Files, *opts: str) -> tuple[Callable[[list[str]], int], list[str]]:
    """The demo on the good dataset's images, with config overrides ``opts``."""
    return demo(f, "--config-file", DET_CFG, "--input", str(f.root / "images"), "--output", str(f.root / "drawn"),
                opts=opts)


def pipeline(f: Files, *args: str) -> tuple[Callable[[list[str]], int], list[str]]:
    from nasnet_det.pipeline.cli import main

    return main, ["--config-file", PIPELINE_CFG, "--quiet", *args]


@dataclass
class Case:
    id: str
    build: Callable[[Files], tuple[Callable[[list[str]], int], list[str]]]
    expect: Callable[[Files], str | tuple[str, ...]]  # text(s) the error message must contain (a file or a key, ...)


def plan(f: Files, *args: str) -> tuple[Callable[[list[str]], int], list[str]]:
    from nasnet_det.pipeline.plan_cli import main

    return main, ["--config-file", PIPELINE_CFG, *args]


def _entry_points(make: Callable[[Files], str]) -> dict[str, Callable[[Files], tuple]]:
    """The bad config ``make`` writes, given to every tool that reads a config (and to a pipeline stage)."""
    return {
        "cifar": lambda f: train(f, make(f)),
        "detect": lambda f: (detect(f)[0], ["--config-file", make(f)]),
        "search": lambda f: (search(f)[0], ["--no-progress", "--config-file", make(f)]),
        "pipeline": lambda f: (pipeline(f)[0], ["--config-file", make(f), "--quiet"]),
        "pipeline-stage": lambda f: pipeline(f, "--output-dir", str(f.root / "run"), "SEARCH.CONFIG_FILE", make(f)),
        "plan": lambda f: (plan(f)[0], ["--config-file", make(f)]),
        "plan-stage": lambda f: plan(f, "DETECT.CONFIG_FILE", make(f)),
    }


CONFIG_CASES = [
    # every entry point x every bad config file (item 31: each is a class, fixed for every loader)
    *(Case(f"{tool}-{bad}", build, lambda f, text=text: text)
      for bad, make, text in BAD_CONFIGS for tool, build in _entry_points(make).items()),
    # values that failed inside torch in its own words ("num_workers option should be non-negative"), no key named
    Case("cifar-num-workers-negative", lambda f: train(f, CIFAR_CFG, "DATA.NUM_WORKERS", "-1"),
         lambda f: "DATA.NUM_WORKERS"),
    Case("cifar-base-lr-negative", lambda f: train(f, CIFAR_CFG, "SOLVER.BASE_LR", "-0.1"), lambda f: "SOLVER.BASE_LR"),
    Case("cifar-momentum-negative", lambda f: train(f, CIFAR_CFG, "SOLVER.MOMENTUM", "-0.5"),
         lambda f: "SOLVER.MOMENTUM"),
    Case("cifar-weight-decay-negative", lambda f: train(f, CIFAR_CFG, "SOLVER.WEIGHT_DECAY", "-0.001"),
         lambda f: "SOLVER.WEIGHT_DECAY"),
    Case("cifar-null-value", lambda f: train(f, f.config("null.yaml", "SOLVER:\n  MAX_STEPS: null\n")),
         lambda f: "SOLVER.MAX_STEPS"),
    Case("detect-num-workers-negative", lambda f: detect(f, opts=("DATALOADER.NUM_WORKERS", "-1")),
         lambda f: "DATALOADER.NUM_WORKERS"),
    Case("detect-base-lr-negative", lambda f: detect(f, opts=("SOLVER.BASE_LR", "-0.1")), lambda f: "SOLVER.BASE_LR"),
    Case("detect-momentum-negative", lambda f: detect(f, opts=("SOLVER.MOMENTUM", "-0.5")),
         lambda f: "SOLVER.MOMENTUM"),
    Case("detect-weight-decay-negative", lambda f: detect(f, opts=("SOLVER.WEIGHT_DECAY", "-0.001")),
         lambda f: "SOLVER.WEIGHT_DECAY"),
    Case("search-controller-lr-inf", lambda f: (search(f)[0], ["--no-progress", "--config-file", f.config(
        "inf.yaml", f"_BASE_: {SEARCH_CFG}\nCONTROLLER:\n  LR: .inf\n")]), lambda f: "CONTROLLER.LR"),
    Case("search-child-lr-negative", lambda f: search(f, "CHILD.LR", "-0.1"), lambda f: "CHILD.LR"),
    # an odd override count names the user's last key, not a value a tool appends
    Case("cifar-tool-odd-overrides", lambda f: (_tool_main("train_cifar"), ["--config-file", CIFAR_CFG,
                                                                             "SOLVER.MAX_STEPS"]),
         lambda f: "'SOLVER.MAX_STEPS' has no value"),
    Case("imagenet-tool-odd-overrides", lambda f: (_tool_main("pretrain_imagenet"), ["--config-file", IMAGENET_CFG,
                                                                                      "SOLVER.MAX_STEPS"]),
         lambda f: "'SOLVER.MAX_STEPS' has no value"),
    Case("pipeline-odd-overrides", lambda f: pipeline(f, "OUTPUT_DIR"), lambda f: "'OUTPUT_DIR' has no value"),
    Case("plan-odd-overrides", lambda f: plan(f, "OUTPUT_DIR"), lambda f: "'OUTPUT_DIR' has no value"),
]


def _tool_main(name: str) -> Callable[[list[str]], int]:
    """``main`` of tools/NAME.py as ``python tools/NAME.py ARGV`` runs it (``sys.argv`` set, ``SystemExit`` caught)."""
    import runpy
    import sys

    def run(argv: list[str]) -> int:
        old = sys.argv
        sys.argv = [str(REPO / "tools" / f"{name}.py"), *argv]
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as e:
            return int(e.code or 0)
        finally:
            sys.argv = old
        return 0

    return run


CASES = [
    # ---- search CLI
    Case("search-missing-config", lambda f: (search(f)[0], ["--config-file", str(f.root / "nope.yaml")]),
         lambda f: "nope.yaml"),
    Case("search-yaml-syntax", lambda f: (search(f)[0], ["--config-file", str(f.bad_yaml)]), lambda f: "bad.yaml"),
    Case("search-unknown-key", lambda f: search(f, "SEARCH.NOT_A_KEY", "1"), lambda f: "SEARCH.NOT_A_KEY"),
    Case("search-unknown-key-in-file", lambda f: (search(f)[0], ["--config-file", str(f.unknown_key_yaml)]),
         lambda f: "NOT_A_SECTION"),
    Case("search-option-after-overrides", lambda f: search(f, "SEARCH.BUDGET", "4", "--fresh"), lambda f: "--fresh"),
    Case("search-output-dir-is-file", lambda f: search(f, "OUTPUT_DIR", str(f.a_file)), lambda f: "a_file"),
    Case("search-odd-overrides", lambda f: search(f, "SEARCH.BUDGET"), lambda f: "KEY VALUE"),
    Case("search-damaged-journal", lambda f: search(f, "OUTPUT_DIR", str(f.damaged_search)),
         lambda f: f"{f.damaged_search / 'journal.sqlite'} is not a readable search journal"),
    Case("search-damaged-journal-way-out", lambda f: search(f, "OUTPUT_DIR", str(f.damaged_search)),
         lambda f: "rerun with SEARCH.DAMAGED_JOURNAL restart"),
    Case("search-damaged-journal-choice", lambda f: search(f, "SEARCH.DAMAGED_JOURNAL", "sometimes"),
         lambda f: "SEARCH.DAMAGED_JOURNAL"),
    Case("search-ray-address-nothing-answers",
         lambda f: search(f, "OUTPUT_DIR", str(f.root / "s_ray"), "WORKERS.BACKEND", "ray", "WORKERS.RAY_ADDRESS",
                          "127.0.0.1:1"), lambda f: "WORKERS.RAY_ADDRESS '127.0.0.1:1': nothing accepts a connection"),
    # ---- train CLI, CIFAR
    Case("cifar-missing-config", lambda f: train(f, str(f.root / "nope.yaml")), lambda f: "nope.yaml"),
    Case("cifar-yaml-syntax", lambda f: train(f, str(f.bad_yaml)), lambda f: "bad.yaml"),
    Case("cifar-unknown-key", lambda f: train(f, CIFAR_CFG, "SOLVER.NOT_A_KEY", "1"), lambda f: "SOLVER.NOT_A_KEY"),
    Case("cifar-unknown-key-in-file", lambda f: train(f, str(f.unknown_key_yaml)), lambda f: "NOT_A_SECTION"),
    Case("cifar-option-after-overrides", lambda f: train(f, CIFAR_CFG, "SOLVER.MAX_STEPS", "2", "--no-resume"),
         lambda f: "--no-resume"),
    Case("cifar-output-dir-is-file", lambda f: train(f, CIFAR_CFG, "--output-dir", str(f.a_file / "sub")),
         lambda f: "a_file"),
    Case("cifar-truncated-npz", lambda f: train(f, CIFAR_CFG, "--output-dir", str(f.root / "o1"), "DATA.SOURCE",
                                                f"npz:{f.truncated_npz}"), lambda f: "truncated.npz"),
    Case("cifar-npz-without-keys", lambda f: train(f, CIFAR_CFG, "--output-dir", str(f.root / "o2"), "DATA.SOURCE",
                                                   f"npz:{f.keyless_npz}"), lambda f: "x_train"),
    Case("cifar-batch-size-0", lambda f: train(f, CIFAR_CFG, "SOLVER.BATCH_SIZE", "0"), lambda f: "SOLVER.BATCH_SIZE"),
    Case("cifar-truncated-weights", lambda f: train(f, CIFAR_CFG, "--output-dir", str(f.root / "o6"), "DATA.SOURCE",
                                                    "synthetic:32", "DATA.VAL_SIZE", "8", "SOLVER.BATCH_SIZE", "8",
                                                    "MODEL.NASNET.WEIGHTS", str(f.truncated_pth)),
         lambda f: "truncated.pth"),
    Case("cifar-export-text-checkpoint", lambda f: (train(f, CIFAR_CFG)[0], ["--export-backbone", str(f.text_pth),
                                                                              str(f.root / "bb.pth")]),
         lambda f: "notes.pth"),
    Case("cifar-bad-source", lambda f: train(f, CIFAR_CFG, "DATA.SOURCE", "tape:/dev/st0"), lambda f: "tape"),
    # ---- train CLI, ImageNet
    Case("imagenet-missing-train-dir", lambda f: train(f, IMAGENET_CFG, "--output-dir", str(f.root / "o3"),
                                                       "DATA.TRAIN_DIR", str(f.root / "no_train"), "DATA.VAL_DIR",
                                                       str(f.root / "no_val")), lambda f: "no_train"),
    Case("imagenet-class-mismatch", lambda f: train(f, IMAGENET_CFG, "--output-dir", str(f.root / "o4"),
                                                    "DATA.TRAIN_DIR", str(f.root / "inet" / "train"), "DATA.VAL_DIR",
                                                    str(f.root / "inet" / "val")), lambda f: "eel"),
    Case("imagenet-empty-class", lambda f: train(f, IMAGENET_CFG, "--output-dir", str(f.root / "o5"),
                                                 "DATA.TRAIN_DIR", str(f.root / "empty_class" / "train"),
                                                 "DATA.VAL_DIR", str(f.root / "inet" / "val")), lambda f: "cat"),
    Case("imagenet-output-dir-is-file", lambda f: train(f, IMAGENET_CFG, "OUTPUT_DIR", str(f.a_file)),
         lambda f: "a_file"),
    Case("imagenet-bad-optimizer", lambda f: train(f, IMAGENET_CFG, "SOLVER.OPTIMIZER", "adamw"),
         lambda f: "SOLVER.OPTIMIZER"),
    # ---- detection training / evaluation
    Case("detect-missing-config", lambda f: (detect(f)[0], ["--config-file", str(f.root / "nope.yaml")]),
         lambda f: "nope.yaml"),
    Case("detect-yaml-syntax", lambda f: (detect(f)[0], ["--config-file", str(f.bad_yaml)]), lambda f: "bad.yaml"),
    Case("detect-unknown-key", lambda f: detect(f, opts=("MODEL.NASNET.NOT_A_KEY", "1")),
         lambda f: "MODEL.NASNET.NOT_A_KEY"),
    Case("detect-unknown-key-in-file", lambda f: (detect(f)[0], ["--config-file", str(f.unknown_key_yaml)]),
         lambda f: "NOT_A_SECTION"),
    Case("detect-option-after-overrides", lambda f: detect(f, opts=("--eval-only",)), lambda f: "--eval-only"),
    Case("detect-odd-overrides", lambda f: detect(f, opts=("SOLVER.MAX_ITER",)), lambda f: "SOLVER.MAX_ITER"),
    Case("detect-batch-size-0", lambda f: detect(f, opts=("SOLVER.IMS_PER_BATCH", "0")),
         lambda f: "SOLVER.IMS_PER_BATCH"),
    Case("detect-output-dir-is-file", lambda f: detect(f, opts=("OUTPUT_DIR", str(f.a_file))), lambda f: "a_file"),
    Case("detect-output-dir-under-file", lambda f: detect(f, opts=("OUTPUT_DIR", str(f.a_file / "out"))),
         lambda f: "a_file"),
    Case("detect-missing-weights", lambda f: detect(f, opts=("MODEL.WEIGHTS", str(f.root / "gone.pth"))),
         lambda f: "gone.pth"),
    Case("detect-eval-truncated-weights", lambda f: detect(f, "--eval-only", opts=("MODEL.WEIGHTS",
                                                                                   str(f.truncated_pth))),
         lambda f: "truncated.pth"),
    Case("detect-eval-empty-weights", lambda f: detect(f, "--eval-only", opts=("MODEL.WEIGHTS", str(f.empty_pth))),
         lambda f: "empty.pth"),
    Case("detect-eval-text-weights", lambda f: detect(f, "--eval-only", opts=("MODEL.WEIGHTS", str(f.text_pth))),
         lambda f: "notes.pth"),
    Case("detect-truncated-nasnet-weights", lambda f: detect(f, opts=("MODEL.NASNET.WEIGHTS", str(f.truncated_pth))),
         lambda f: "MODEL.NASNET.WEIGHTS"),
    Case("detect-text-nasnet-weights", lambda f: detect(f, opts=("MODEL.NASNET.WEIGHTS", str(f.text_pth))),
         lambda f: "notes.pth"),
    Case("detect-unregistered-dataset", lambda f: detect(f, opts=("DATASETS.TRAIN", "('nowhere',)")),
         lambda f: "nowhere"),
    Case("detect-resume-and-no-resume", lambda f: detect(f, "--resume", "--no-resume"), lambda f: "--no-resume"),
    # sizes detectron2 takes without a word: MIN_SIZE_TRAIN 0 trained at full size
    Case("detect-min-size-train-0", lambda f: detect(f, opts=("INPUT.MIN_SIZE_TRAIN", "(0,)")),
         lambda f: "INPUT.MIN_SIZE_TRAIN"),
    Case("detect-max-size-train-0", lambda f: detect(f, opts=("INPUT.MAX_SIZE_TRAIN", "0")),
         lambda f: "INPUT.MAX_SIZE_TRAIN"),
    Case("detect-min-size-test-negative", lambda f: detect(f, opts=("INPUT.MIN_SIZE_TEST", "-1")),
         lambda f: "INPUT.MIN_SIZE_TEST"),
    Case("detect-max-size-test-0", lambda f: detect(f, opts=("INPUT.MAX_SIZE_TEST", "0")),
         lambda f: "INPUT.MAX_SIZE_TEST"),
    # evaluated an untrained detector with only an INFO line
    Case("detect-eval-only-without-weights", lambda f: detect(f, "--eval-only"), lambda f: "MODEL.WEIGHTS"),
    # ---- detection demo
    Case("demo-missing-input", lambda f: demo(f, "--config-file", DET_CFG, "--input", str(f.root / "nothing*.jpg"),
                                              "--output", str(f.root / "drawn"), opts=("MODEL.WEIGHTS",
                                                                                       str(f.root / "full.pth"))),
         lambda f: "nothing*.jpg"),
    Case("demo-yaml-syntax", lambda f: demo(f, "--config-file", str(f.bad_yaml), "--input", str(f.root / "images"),
                                            "--output", str(f.root / "drawn")), lambda f: "bad.yaml"),
    Case("demo-output-is-file", lambda f: demo(f, "--config-file", DET_CFG, "--input", str(f.root / "images"),
                                               "--output", str(f.a_file), opts=("MODEL.WEIGHTS",
                                                                                str(f.root / "full.pth"))),
         lambda f: "a_file"),
    Case("demo-truncated-weights", lambda f: demo(f, "--config-file", DET_CFG, "--input", str(f.root / "images"),
                                                  "--output", str(f.root / "drawn"),
                                                  opts=("MODEL.WEIGHTS", str(f.truncated_pth))),
         lambda f: "truncated.pth"),
    Case("demo-unknown-key", lambda f: demo(f, "--config-file", DET_CFG, "--input", str(f.root / "images"),
                                            "--output", str(f.root / "drawn"), opts=("MODEL.NOPE", "1")),
         lambda f: "MODEL.NOPE"),
    Case("demo-only-unreadable-images", lambda f: demo(f, "--config-file", DET_CFG, "--input",
                                                       str(f.broken_image_dir), "--output", str(f.root / "drawn"),
                                                       opts=("MODEL.WEIGHTS", str(f.root / "det.pth"))),
         lambda f: "broken.jpg"),
    # ---- detection score, with the fastest backend (auto) and with pycocotools: each reads the files itself
    *[case for backend in ("auto", "pycocotools") for case in (
        Case(f"score-gt-not-json-{backend}", lambda f, b=backend: score(f, f.not_json, f.dets, b),
             lambda f: "not_json.json"),
        Case(f"score-detections-not-json-{backend}",
             lambda f, b=backend: score(f, f.root / "ann.json", f.not_json, b), lambda f: "not_json.json"),
        # hotcoco scored a detection without "score" as 1; pycocotools stopped with a bare KeyError
        Case(f"score-detection-without-score-{backend}",
             lambda f, b=backend: score(f, f.root / "ann.json", f.dets_without_score, b),
             lambda f: "dets_noscore.json: detection 1 must be a dict with keys"),
        Case(f"score-unknown-image-{backend}",
             lambda f, b=backend: score(f, f.root / "ann.json", f.dets_unknown_image, b),
             lambda f: "dets_unknown_image.json"),
        Case(f"score-short-box-{backend}", lambda f, b=backend: score(f, f.root / "ann.json", f.dets_short_box, b),
             lambda f: "dets_short_box.json: detection 0 has bbox [1, 2, 3]"),
    )],
    # ---- issue 31: genotype files (TypeError: unhashable type 'list', UnicodeDecodeError, RecursionError)
    Case("cifar-genotype-input-is-a-list", lambda f: train(f, CIFAR_CFG, "--output-dir", str(f.root / "o7"),
                                                           "MODEL.NASNET.GENOTYPE", str(f.g_list)),
         lambda f: ("g_list.json", "input_1=[0]", "expected an integer")),
    Case("cifar-genotype-latin1", lambda f: train(f, CIFAR_CFG, "--output-dir", str(f.root / "o8"),
                                                  "MODEL.NASNET.GENOTYPE", str(f.g_latin1)),
         lambda f: ("g_latin1.json", "not UTF-8", "expected a genotype JSON")),
    Case("cifar-genotype-nested-100k-deep", lambda f: train(f, CIFAR_CFG, "--output-dir", str(f.root / "o9"),
                                                            "MODEL.NASNET.GENOTYPE", str(f.g_deep)),
         lambda f: ("g_deep.json", "nested too deeply", "expected a genotype JSON")),
    Case("detect-genotype-input-is-a-list", lambda f: detect(f, opts=("MODEL.NASNET.GENOTYPE", str(f.g_list))),
         lambda f: ("g_list.json", "input_1")),
    Case("pipeline-genotype-input-is-a-list", lambda f: pipeline(f, "OUTPUT_DIR", str(f.root / "pipe"),
                                                                 "SEARCH.GENOTYPE", str(f.g_list)),
         lambda f: ("SEARCH.GENOTYPE", "g_list.json", "input_1")),
    Case("pipeline-genotype-latin1", lambda f: pipeline(f, "OUTPUT_DIR", str(f.root / "pipe"), "SEARCH.GENOTYPE",
                                                        str(f.g_latin1)), lambda f: ("g_latin1.json", "UTF-8")),
    # ---- issue 31: COCO files, for training, evaluation, the demo and `detect score`
    *[Case(f"detect-coco-{kind}", lambda f, kind=kind: detect_on(f, f.coco[kind]),
           lambda f, expect=expect: expect) for kind, expect in (
        ("cat-without-id", ("cat_no_id.json", "categories[1] has no 'id'", "expected")),
        ("image-without-file-name", ("no_file_name.json", "image 2 has no 'file_name'", "expected")),
        ("top-level-list", ("top_list.json", "top level is a JSON list", "expected")),
        ("utf16", ("utf16.json", "UTF-16", "expected")),
        ("duplicate-annotation-ids", ("dup_ann_ids.json", "annotations[1] has id 1", "unique")),
        ("segmentation-only", ("segm_only.json", "annotation 1 has no 'bbox'", "expected")),
        ("duplicate-image-ids", ("dup_image_ids.json", "images[1] has id 1", "unique")),
        ("16-bit-images", ("ann.json", "0.png", "I;16", "expected 8-bit images")))],
    *[Case(f"detect-eval-coco-{kind}", lambda f, kind=kind: detect_on(f, f.coco[kind], "--eval-only", opts=(
        "MODEL.WEIGHTS", str(f.root / "full.pth"))), lambda f, expect=expect: expect) for kind, expect in (
        ("image-without-file-name", ("no_file_name.json", "file_name")),
        ("duplicate-annotation-ids", ("dup_ann_ids.json", "unique")),
        ("segmentation-only", ("segm_only.json", "bbox")),
        ("duplicate-image-ids", ("dup_image_ids.json", "unique")),
        ("16-bit-images", ("ann.json", "I;16")))],
    Case("detect-score-coco-duplicate-image-ids", lambda f: score_coco(f, f.coco["duplicate-image-ids"]),
         lambda f: ("dup_image_ids.json", "unique")),
    Case("detect-score-coco-top-level-list", lambda f: score_coco(f, f.coco["top-level-list"]),
         lambda f: ("top_list.json", "top level")),
    Case("demo-coco-duplicate-image-ids", lambda f: demo_images(f, "DATASETS.COCO_FILES",
                                                                f"['{f.coco['duplicate-image-ids']}']",
                                                                "MODEL.WEIGHTS", str(f.root / "full.pth")),
         lambda f: ("dup_image_ids.json", "unique")),
    # ---- issue 31: weights ("Unsupported type found in checkpoint! format: <class 'str'>", a URLError traceback)
    Case("detect-backbone-as-model-weights", lambda f: detect(f, opts=("MODEL.WEIGHTS", str(f.backbone_pth))),
         lambda f: ("MODEL.WEIGHTS", "backbone.pth", "MODEL.NASNET.WEIGHTS")),
    Case("detect-eval-backbone-as-model-weights", lambda f: detect(f, "--eval-only", opts=("MODEL.WEIGHTS",
                                                                                        str(f.backbone_pth))),
         lambda f: ("MODEL.WEIGHTS", "backbone.pth", "MODEL.NASNET.WEIGHTS")),
    Case("detect-eval-timm-state-dict-as-model-weights", lambda f: detect(f, "--eval-only", opts=(
        "MODEL.WEIGHTS", str(f.timm_pth))), lambda f: ("MODEL.WEIGHTS", "timm_nasnet.pth", "MODEL.NASNET.WEIGHTS")),
    Case("demo-backbone-as-model-weights", lambda f: demo_images(f, "MODEL.WEIGHTS", str(f.backbone_pth)),
         lambda f: ("MODEL.WEIGHTS", "backbone.pth", "MODEL.NASNET.WEIGHTS")),
    Case("detect-eval-unreachable-url-weights", lambda f: detect(f, "--eval-only", opts=(
        "MODEL.WEIGHTS", "http://127.0.0.1:9/x.pth")),
         lambda f: ("MODEL.WEIGHTS", "http://127.0.0.1:9/x.pth", "download failed")),
    # ---- issue 31: export
    Case("export-check-not-an-image", lambda f: export(f, "--format", "onnx", "--output", str(f.root / "m.onnx"),
                                                       "--check", str(f.not_an_image), "MODEL.WEIGHTS",
                                                       str(f.root / "full.pth")),
         lambda f: ("--check", "photo.jpg", "not a readable image")),
    # a relative --output / --check that looks like a config key was taken for one ("expected one argument")
    Case("export-output-named-like-a-key", lambda f: export(f, "--format", "bogus", "--output", "MODEL.onnx",
                                                            "MODEL.WEIGHTS", str(f.root / "full.pth")),
         lambda f: ("--format 'bogus'",)),
    Case("export-check-named-like-a-key", lambda f: export(f, "--format", "onnx", "--output", str(f.root / "m.onnx"),
                                                           "--check", "INPUT.JPG", "MODEL.WEIGHTS",
                                                           str(f.root / "full.pth")),
         lambda f: ("--check image INPUT.JPG does not exist",)),
    # ---- issue 31: profile --json into a place it cannot write: a traceback after 30-55 s of work
    Case("profile-json-under-a-file", lambda f: profile(f, "--json", str(f.a_file / "profile.json")),
         lambda f: ("--json", "a_file")),
    Case("profile-json-is-a-folder", lambda f: profile(f, "--json", str(f.root)), lambda f: ("--json", "folder")),
    # ---- the pipeline (was a FileExistsError traceback from its lock)
    Case("pipeline-output-dir-is-file", lambda f: pipeline(f, "OUTPUT_DIR", str(f.a_file)), lambda f: "a_file"),
    Case("pipeline-ray-address-nothing-answers",
         lambda f: pipeline(f, "OUTPUT_DIR", str(f.root / "p_ray"), "PIPELINE.BACKEND", "ray", "PIPELINE.RAY.ADDRESS",
                            "127.0.0.1:1"),
         lambda f: "PIPELINE.RAY.ADDRESS '127.0.0.1:1': nothing accepts a connection"),
    Case("pipeline-output-dir-under-file", lambda f: pipeline(f, "--output-dir", str(f.a_file / "run")),
         lambda f: "a_file"),
    *CONFIG_CASES,
]


@pytest.fixture
def restore_logging():
    """detectron2's setup_logger binds handlers to the captured streams of this test; drop them afterwards."""
    loggers = [logging.getLogger(n) for n in ("", "detectron2", "nasnet_det", "fvcore", "d2", "search")]
    before = {lg.name: (list(lg.handlers), lg.propagate, lg.level) for lg in loggers}
    yield
    for lg in loggers:
        lg.handlers[:], lg.propagate, lg.level = before[lg.name][0], before[lg.name][1], before[lg.name][2]


def _det_checkpoint(f: Files) -> None:
    """A real detector checkpoint of the demo's config, for the case whose only fault is its images."""
    import torch
    from detectron2.modeling import build_model

    import nasnet_det.detection.backbone  # noqa: F401
    import nasnet_det.detection.heads  # noqa: F401
    from nasnet_det.detection.config import get_nasnet_cfg

    cfg = get_nasnet_cfg()
    cfg.merge_from_file(DET_CFG)
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.NASNET.FILTERS", "4", "DATASETS.COCO_FILES", "[]"])
    torch.save({"model": build_model(cfg).state_dict()}, f.root / "det.pth")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_clear_line(case: Case, tmp_path, capsys, monkeypatch, restore_logging):
    monkeypatch.chdir(REPO)  # the configs' relative paths are the repository's (none is read: every case fails first)
    f = Files(tmp_path)
    if case.id == "demo-only-unreadable-images":
        _det_checkpoint(f)
    if case.id.startswith("profile-"):  # the output is checked before any (30-55 s of) profiling
        import nasnet_det.models.profile

        monkeypatch.setattr(nasnet_det.models.profile, "profile_row",
                            lambda row: pytest.fail("profiled before checking the --json path"))
    main, argv = case.build(f)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code}, stderr:\n{err[-2000:]}"
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err[-2000:]
    expected = case.expect(f)
    for text in (expected,) if isinstance(expected, str) else expected:
        assert text in error_lines[0], error_lines[0]
    assert not f.made_by_config.exists(), "a config file ran code"


def test_at_least_30_cases():
    assert len(CASES) >= 30
    tools = {c.id.split("-")[0] for c in CASES}
    assert tools == {"search", "cifar", "imagenet", "detect", "demo", "pipeline", "plan", "export", "profile",
                     "score"}


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir(tmp_path, capsys, restore_logging):
    from nasnet_det.utils.errors import check_output_dir

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="locked"):
            check_output_dir(locked / "out")
        with pytest.raises(PermissionError, match="not writable"):
            check_output_dir(locked)
    finally:
        locked.chmod(0o700)


def test_nan_loss_ends_detection_training_with_one_line(tmp_path, capsys, monkeypatch, restore_logging):
    from nasnet_det.detection.train import train_main

    monkeypatch.chdir(REPO)
    f = Files(tmp_path)
    _, argv = detect(f, opts=("DATASETS.TEST", "()", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
                              "MODEL.PIXEL_STD", "[1e-40, 1e-40, 1e-40]"))  # inputs overflow: the loss is NaN
    assert train_main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "training diverged" in lines[0] and "NaN" in lines[0], err[-2000:]
    assert "Traceback" not in err


def test_eval_only_with_an_explicit_empty_model_weights_warns_and_evaluates(tmp_path, caplog, monkeypatch,
                                                                         restore_logging):
    from nasnet_det.detection.train import train_main

    monkeypatch.chdir(REPO)
    f = Files(tmp_path)
    _, argv = detect(f, "--eval-only", opts=("MODEL.WEIGHTS", ""))  # asked for on purpose
    with caplog.at_level(logging.WARNING, logger="nasnet_det"):
        assert train_main(argv) == 0
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "randomly initialised" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert (f.root / "det_out" / "inference" / f.name / "coco_metrics.json").is_file()


def test_input_sizes_keep_detectron2s_meanings():
    from nasnet_det.detection.config import get_nasnet_cfg, validate_input_sizes
    from nasnet_det.utils.errors import BadInputError

    cfg = get_nasnet_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 0  # detectron2: no resizing at test time
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = (640, 800), "range"
    validate_input_sizes(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (800, 640)
    with pytest.raises(BadInputError, match="INPUT.MIN_SIZE_TRAIN .*MIN <= MAX"):
        validate_input_sizes(cfg)


def test_nan_loss_ends_classification_training_with_one_line(tmp_path, capsys, monkeypatch, restore_logging):
    # The classification CLI had its own copy of the bad-input handler, without the NaN case: a traceback.
    from nasnet_det.classification.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["--config-file", CIFAR_CFG, "--output-dir", str(tmp_path / "out"), "MODEL.NASNET.NUM_CELLS", "1",
                 "MODEL.NASNET.FILTERS", "4", "DATA.SOURCE", "synthetic:32", "DATA.VAL_SIZE", "8",
                 "DATA.NUM_WORKERS", "0", "SOLVER.MAX_STEPS", "3", "SOLVER.BATCH_SIZE", "8", "TRAIN.DEVICE", "cpu",
                 "SOLVER.BASE_LR", "1e30"])
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "training diverged" in lines[0] and "nan" in lines[0], err[-2000:]
    assert "Traceback" not in err
