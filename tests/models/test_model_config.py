"""MODEL.NASNET: presets and explicit keys, renamed keys, the architecture record, and one network for
classification, detection and the search."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasnet_det.classification.config import load_config
from nasnet_det.genotypes import NASNET_A
from nasnet_det.models import NASNetArch, create_model
from nasnet_det.models.config import PRESETS, preset_node
from nasnet_det.models.pretrained import read_arch, save_checkpoint
from nasnet_det.space import Genotype

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_explicit_keys_win_over_the_preset_in_files_and_overrides(tmp_path):
    _write(tmp_path / "base.yaml", "MODEL:\n  NASNET:\n    DROP_PATH_KEEP_PROB: 0.9\n")
    child = _write(tmp_path / "child.yaml", "_BASE_: base.yaml\nMODEL:\n  NASNET:\n    PRESET: nasnet_a_large\n"
                                            "    NUM_CELLS: 4\n")
    n = load_config(child, ["MODEL.NASNET.BN_EPS", "0.01"]).MODEL.NASNET
    large = PRESETS["nasnet_a_large"].values
    # preset values where nothing is explicit ...
    assert (n.PRESET, n.PENULTIMATE_FILTERS, n.STEM_FILTERS, n.SKIP_REDUCTION_LAYER_INPUT) == \
        ("nasnet_a_large", large["PENULTIMATE_FILTERS"], 96, True)
    # ... explicit keys of the file, of its _BASE_ (read before the preset named by the child) and of the
    # overrides win
    assert (n.NUM_CELLS, n.DROP_PATH_KEEP_PROB, n.BN_EPS) == (4, 0.9, 0.01)
    # an override naming the preset after an explicit key: the key still wins; f alone replaces the preset's F
    n = load_config(None, ["MODEL.NASNET.STEM_FILTERS", "40", "MODEL.NASNET.FILTERS", "8",
                           "MODEL.NASNET.PRESET", "nasnet_a_mobile"]).MODEL.NASNET
    assert (n.NUM_CELLS, n.STEM_FILTERS, n.FILTERS, n.PENULTIMATE_FILTERS, n.DROPOUT) == (4, 40, 8, 0, 0.5)
    with pytest.raises(ValueError, match="MODEL.NASNET.PRESET: unknown model 'nasnet_a_huge'"):
        load_config(None, ["MODEL.NASNET.PRESET", "nasnet_a_huge"])


def test_a_file_sizing_by_one_of_f_and_F_overrides_its_bases_size(tmp_path):
    # cifar10_smoke.yaml sets F=0 and f=4; a file on top that sets only F (or only f) resizes it, as the same
    # key given as an override does
    smoke = REPO / "configs/train/cifar10_smoke.yaml"
    by_F = _write(tmp_path / "by_F.yaml", f"_BASE_: {smoke}\nMODEL:\n  NASNET:\n    PENULTIMATE_FILTERS: 192\n")
    for cfg in (load_config(by_F), load_config(smoke, ["MODEL.NASNET.PENULTIMATE_FILTERS", "192"])):
        assert (cfg.MODEL.NASNET.PENULTIMATE_FILTERS, cfg.MODEL.NASNET.FILTERS, cfg.MODEL.NASNET.NUM_CELLS) == \
            (192, 0, 1)
    # through a list of bases, and a base-of-a-base that sizes by F under a file that sizes by f
    _write(tmp_path / "other.yaml", "SEED: 3\n")
    by_f = _write(tmp_path / "by_f.yaml", "_BASE_: [by_F.yaml, other.yaml]\nMODEL:\n  NASNET:\n    FILTERS: 6\n")
    n = load_config(by_f).MODEL.NASNET
    assert (n.PENULTIMATE_FILTERS, n.FILTERS, load_config(by_f).SEED) == (0, 6, 3)
    # a file that sets both keeps both (and a bad pair is still an error)
    both = _write(tmp_path / "both.yaml", f"_BASE_: {smoke}\nMODEL:\n  NASNET:\n    PENULTIMATE_FILTERS: 192\n"
                                          "    FILTERS: 6\n")
    with pytest.raises(ValueError, match="set exactly one of MODEL.NASNET.PENULTIMATE_FILTERS"):
        load_config(both)


def test_search_children_sized_by_F_say_how_to_size_them_by_f():
    from search.config import load_cfg

    with pytest.raises(ValueError, match="sized by f \\(set MODEL.NASNET.FILTERS, which zeroes PENULTIMATE_FILTERS"):
        load_cfg(None, ["MODEL.NASNET.PRESET", "nasnet_a_cifar"])
    n = load_cfg(None, ["MODEL.NASNET.PRESET", "nasnet_a_cifar", "MODEL.NASNET.FILTERS", "8"]).MODEL.NASNET
    assert (n.NUM_CELLS, n.FILTERS, n.PENULTIMATE_FILTERS, n.DROP_PATH_KEEP_PROB) == (6, 8, 0, 0.6)


def test_large_pretraining_and_large_detection_configs_describe_the_same_backbone():
    from nasnet_det.config import load_cfg
    from nasnet_det.detection.config import get_nasnet_cfg

    pretrained = NASNetArch.from_cfg(load_config(REPO / "configs/train/imagenet_nasnet_a_large.yaml"))
    for name in ("faster_rcnn_nasnet_a_large_c4_800.yaml", "faster_rcnn_nasnet_a_large_c4_1200.yaml",
                 "faster_rcnn_nasnet_a_large_fpn_800.yaml"):
        detector = NASNetArch.from_cfg(load_cfg(get_nasnet_cfg(), str(REPO / "configs/detection" / name)),
                                       num_classes=0)
        assert pretrained.differences(detector, ignore=("num_classes", "aux_head")) == [], name


def test_old_keys_name_the_new_ones(tmp_path, capsys):
    from nasnet_det.classification.cli import main as train_main
    from search.config import load_cfg
    from search.reward import ChildEvaluator

    with pytest.raises(ValueError, match="MODEL.NUM_CELLS was renamed to MODEL.NASNET.NUM_CELLS"):
        load_config(None, ["MODEL.NUM_CELLS", "2"])
    with pytest.raises(ValueError, match="TRAIN.CHANNELS_LAST was renamed to MODEL.NASNET.CHANNELS_LAST"):
        load_config(None, ["TRAIN.CHANNELS_LAST", "False"])
    assert load_config(None, ["MODEL.NASNET.CHANNELS_LAST", "False"]).MODEL.NASNET.CHANNELS_LAST is False
    old = _write(tmp_path / "old.yaml", "MODEL:\n  WEIGHTS: x.pth\n")
    with pytest.raises(ValueError, match="old.yaml: MODEL.WEIGHTS was renamed to MODEL.NASNET.WEIGHTS"):
        load_config(old)
    assert train_main(["--config-file", str(old), "--output-dir", str(tmp_path / "out")]) == 2
    assert "MODEL.WEIGHTS was renamed to MODEL.NASNET.WEIGHTS" in capsys.readouterr().err
    with pytest.raises(ValueError, match="CHILD.FILTERS was renamed to MODEL.NASNET.FILTERS"):
        load_cfg(None, ["CHILD.FILTERS", "4"])
    old = _write(tmp_path / "search.yaml", "CHILD:\n  NUM_CELLS: 2\n")
    with pytest.raises(ValueError, match="search.yaml: CHILD.NUM_CELLS was renamed to MODEL.NASNET.NUM_CELLS"):
        load_cfg(str(old))
    with pytest.raises(ValueError, match="CHILD.NUM_CELLS was renamed to MODEL.NASNET.NUM_CELLS"):
        ChildEvaluator({**dict(load_cfg().CHILD), "NUM_CELLS": 2}, None)


def test_detection_cli_rejects_old_and_unknown_keys_with_exit_2(tmp_path, capsys):
    from nasnet_det.detection.train import train_main

    smoke = str(REPO / "configs/detection/smoke-nasnet-c4.yaml")
    old = _write(tmp_path / "old.yaml", f"_BASE_: {smoke}\nMODEL:\n  NUM_CELLS: 1\n")
    for argv, message in [
            (["--config-file", str(old)], "old.yaml: MODEL.NUM_CELLS was renamed to MODEL.NASNET.NUM_CELLS"),
            (["--config-file", smoke, "MODEL.GENOTYPE", "nasnet_a"],
             "bad override: MODEL.GENOTYPE was renamed to MODEL.NASNET.GENOTYPE"),
            (["--config-file", smoke, "MODEL.NASNET.BOGUS", "1"],
             "bad override: Non-existent key: MODEL.NASNET.BOGUS")]:
        assert train_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    # invalid YAML too, in all three loaders
    broken = _write(tmp_path / "broken.yaml", "MODEL:\n  NASNET: [1, 2\n")
    assert train_main(["--config-file", str(broken)]) == 2
    assert "broken.yaml is not valid YAML" in capsys.readouterr().err
    from search.config import load_cfg
    for load in (load_config, load_cfg):
        with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
            load(str(broken))


def test_arch_record_equality_and_differences(tmp_path):
    model = create_model("nasnet_a_mobile", num_cells=1, filters=8, stem_filters=8, num_classes=5)
    arch = NASNetArch.from_model(model)
    # create_model overrides any NASNet argument of a preset, the dataset (the stem) included
    assert not create_model("nasnet_a_mobile", dataset="cifar", num_cells=1, filters=4).imagenet_stem
    assert read_arch(save_checkpoint(model, tmp_path / "m.pth")) == arch
    assert create_model(arch).arch == model.arch  # the nasnet-det/v1 record round-trips
    assert create_model(model.arch).arch == model.arch  # ... as the record or its dict
    renamed = Genotype(NASNET_A.normal, NASNET_A.reduce, name="renamed")
    assert NASNetArch.from_dict({**model.arch, "genotype": renamed.to_dict()}) == arch  # cells, not names
    # a record that leaves the stem width to the default equals one that states it
    default_stem = NASNetArch.from_dict({**model.arch, "stem_filters": None})
    assert default_stem == NASNetArch.from_dict({**model.arch, "stem_filters": 96})
    assert default_stem != arch
    other = NASNetArch.from_dict({**model.arch, "filters": 12, "pad_mode": "timm", "num_classes": 10,
                                  "drop_path_keep_prob": 0.5})  # drop path is training, not the network
    assert other.differences(arch) == [
        "filters: checkpoint 12 vs config 8 (MODEL.NASNET.FILTERS / PENULTIMATE_FILTERS)",
        "pad_mode: checkpoint timm vs config tf (MODEL.NASNET.PAD_MODE)",
        "num_classes: checkpoint 10 vs config 5 (the number of classes)"]
    assert other.differences(arch, ignore=("num_classes",), names=("old", "new"))[0] == \
        "filters: old 12 vs new 8 (MODEL.NASNET.FILTERS / PENULTIMATE_FILTERS)"
    assert NASNetArch.from_dict({**model.arch, "in_chans": 1}).differences(arch) == [
        "in_chans: checkpoint 1 vs config 3 (input channels; detection: len(MODEL.PIXEL_MEAN))"]
    swapped = Genotype(NASNET_A.normal, NASNET_A.normal, name="swapped")
    text = NASNetArch.from_dict({**model.arch, "genotype": swapped.to_dict()}).differences(arch)
    assert len(text) == 1 and text[0].startswith("genotype: checkpoint 'swapped' [")
    assert text[0].endswith("vs config 'nasnet_a' [ad9cafe8] (MODEL.NASNET.GENOTYPE)")


SAME_NODE = ["MODEL.NASNET.PRESET", "search_child_tiny", "MODEL.NASNET.NUM_CELLS", "2",
             "MODEL.NASNET.FILTERS", "8", "MODEL.NASNET.STEM_FILTERS", "16", "MODEL.NASNET.PAD_MODE", "timm"]


def _shapes(model, skip=("last_linear.", "aux_head.")) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(skip)}


def test_classification_detection_and_search_build_one_network_from_one_node():
    from nasnet_det.classification.trainer import build_model
    from nasnet_det.config import load_cfg as load_detection_cfg
    from nasnet_det.detection.backbone import detector_nasnet
    from nasnet_det.detection.config import get_nasnet_cfg
    from search.config import load_cfg
    from search.reward import build_child

    # CIFAR: a classification run and a search child
    classifier = build_model(load_config(None, SAME_NODE), 10, 32)
    child = build_child(NASNET_A, load_cfg(None, SAME_NODE).MODEL.NASNET)
    assert NASNetArch.from_model(classifier) == NASNetArch.from_model(child)
    assert _shapes(classifier, ()) == _shapes(child, ())
    # ImageNet: pretraining and the detector's backbone (no classifier)
    imagenet = ["DATA.DATASET", "imagenet", "DATA.FAKE_CLASSES", "3"]
    pretrain = build_model(load_config(None, SAME_NODE + imagenet), 3, 64)
    backbone = detector_nasnet(load_detection_cfg(get_nasnet_cfg(), None, SAME_NODE))
    assert NASNetArch.from_model(pretrain).differences(NASNetArch.from_model(backbone),
                                                       ignore=("num_classes", "aux_head")) == []
    assert _shapes(pretrain) == _shapes(backbone)
    assert backbone.arch["pad_mode"] == "timm" and backbone.arch["stem_filters"] == 16
    # the node alone (as the search ships it to its workers) builds the same network
    assert _shapes(create_model(dict(preset_node("search_child_tiny")), dataset="cifar", num_classes=10)) == \
        _shapes(build_child(NASNET_A, preset_node("search_child_tiny")))
