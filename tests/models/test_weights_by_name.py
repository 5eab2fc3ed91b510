"""Weights by name (``timm://``, ``pretrainedmodels://``): found in each library's own cache, converted like a file.

No test touches the network: the caches are tmp folders, Hugging Face's offline flag is on, and every socket
connection fails at once (so a download attempt is an error, not a hang)."""

from __future__ import annotations

import socket

import pytest
import torch
from detectron2.modeling import build_model
from helpers.detection import tiny_cfg

import nasnet_det.detection  # noqa: F401  (registers the backbones)
from nasnet_det.detection.train import build_nasnet_detector, validate_detection_config
from nasnet_det.detection.weights import to_detector_state_dict
from nasnet_det.models import create_model
from nasnet_det.models.hub import check_named_weights, fetch_named_weights
from nasnet_det.models.pretrained import convert_external_state_dict, load_named_weights
from nasnet_det.utils.errors import BadInputError

pretrainedmodels = pytest.importorskip("pretrainedmodels")
timm = pytest.importorskip("timm")


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """TORCH_HOME and the Hugging Face cache in tmp_path, offline, with every connection refused."""
    from huggingface_hub import constants

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads its environment once, at import: point the values it read at the tmp cache too
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def _random_bn(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # non-default statistics: a tensor left at its initialisation would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model


def _cache_cadene_mobile(tmp_path) -> dict[str, torch.Tensor]:
    """A small Cadene NASNetAMobile (f=4, stem 8) saved where torch.hub keeps pretrainedmodels' nasnetamobile."""
    from pretrainedmodels.models.nasnet_mobile import NASNetAMobile

    url = pretrainedmodels.pretrained_settings["nasnetamobile"]["imagenet"]["url"]
    state_dict = _random_bn(NASNetAMobile(num_classes=1000, stem_filters=8, penultimate_filters=96)).state_dict()
    target = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    target.parent.mkdir(parents=True)
    torch.save(state_dict, target)
    return state_dict


def _cache_timm_large(tmp_path) -> dict[str, torch.Tensor]:
    """A small timm NASNetALarge (F=96, stem 8) saved as the Hugging Face hub snapshot timm loads."""
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg
    from timm.models.nasnet import NASNetALarge

    state_dict = _random_bn(NASNetALarge(num_classes=1000, stem_size=8, num_features=96)).state_dict()
    repo = tmp_path / "hf" / "hub" / f"models--{get_pretrained_cfg('nasnetalarge').hf_hub_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    snapshot = repo / "snapshots" / commit / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(snapshot))
    return state_dict


def test_pretrainedmodels_name_loads_the_cached_file_into_a_detector(caches):
    cadene = _cache_cadene_mobile(caches)
    cfg = tiny_cfg("c4", NUM_CELLS=4, NORM="FrozenBN")
    cfg.MODEL.NASNET.WEIGHTS = "pretrainedmodels://nasnetamobile"
    validate_detection_config(cfg)  # a known name passes the up-front check without a file path
    model = build_nasnet_detector(cfg)
    own = model.state_dict()
    expected = to_detector_state_dict(model, cadene)
    assert len(expected) > 100
    for key, value in expected.items():
        assert torch.equal(own[key], value), key
    # Cadene's cell_15 (stack 3, 4th cell) is our cell_11, in the C4 ROI head
    assert torch.equal(own["roi_heads.res5.nasnet.cell_11.conv_1x1.conv.weight"],
                       cadene["cell_15.conv_1x1.conv.weight"])
    assert not torch.equal(build_model(cfg).state_dict()["roi_heads.res5.nasnet.cell_11.conv_1x1.conv.weight"],
                           cadene["cell_15.conv_1x1.conv.weight"])  # the equality above is the load's doing


def test_timm_name_loads_the_cached_hub_snapshot_into_a_classifier(caches):
    peer = _cache_timm_large(caches)
    ours = create_model("nasnet_a_large", penultimate_filters=96, stem_filters=8, num_classes=10)
    report = load_named_weights(ours, "timm://nasnetalarge")
    assert {k for k, _, _ in report.shape_mismatch} == {"last_linear.weight", "last_linear.bias"}  # 1000 vs 10
    own = ours.state_dict()
    converted = convert_external_state_dict(peer, ours)
    assert len(report.matched) == len(converted) - 2
    for key, value in converted.items():
        if not key.startswith("last_linear."):
            assert torch.equal(own[key], value), key


def test_a_name_of_another_network_is_one_line(caches):
    _cache_cadene_mobile(caches)
    ours = create_model("nasnet_a_mobile", filters=8, stem_filters=8, num_classes=1000)  # f=8, the file f=4
    with pytest.raises(BadInputError, match=r"^MODEL.NASNET.WEIGHTS pretrainedmodels://nasnetamobile does not "
                                            r"fit MODEL.NASNET .*shape mismatch [1-9]") as e:
        load_named_weights(ours, "pretrainedmodels://nasnetamobile")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["pretrainedmodels://nasnetamobile", "timm://nasnetalarge"])
def test_not_cached_offline_says_how_to_get_the_file(caches, spec):
    with pytest.raises(BadInputError) as e:
        fetch_named_weights(spec)
    message = str(e.value)
    assert "\n" not in message and "not in the cache" in message and "HF_HUB_OFFLINE" in message
    cached = caches / "torch" / "hub" / "checkpoints"
    assert f"curl -L -o {cached}/" in message and ("https://" in message or "http://" in message)


def test_not_cached_online_download_failure_is_one_line(caches, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(BadInputError, match=r"download failed \(URLError.*get it by hand: curl -L -o "):
        fetch_named_weights("pretrainedmodels://nasnetamobile")


@pytest.mark.parametrize("spec,listed", [
    ("timm://resnet50", "known: timm://nasnetalarge"),
    ("pretrainedmodels://nasnet", "known: pretrainedmodels://nasnetalarge, pretrainedmodels://nasnetamobile"),
    ("hf://nasnetalarge", "unknown weights scheme 'hf://'; known: timm://"),
    ("timm://nasnetalarge.bogus", "known: timm://nasnetalarge"),  # an unknown tag: refused here, not a traceback
    ("pretrainedmodels://nasnetamobile.x", "known: pretrainedmodels://nasnetalarge"),
])
def test_unknown_name_or_scheme_lists_what_exists(caches, spec, listed):
    with pytest.raises(BadInputError, match=f"^MODEL.NASNET.WEIGHTS '{spec}': .*{listed}"):
        check_named_weights(spec)
    cfg = tiny_cfg("c4")
    cfg.MODEL.NASNET.WEIGHTS = spec
    with pytest.raises(BadInputError, match="unknown weights scheme|has no NASNet weights"):
        validate_detection_config(cfg)


def test_classification_trainer_starts_from_a_named_file_and_refuses_unknown_names(caches):
    from nasnet_det.classification import Trainer
    from nasnet_det.classification.config import load_config

    cadene = _cache_cadene_mobile(caches)
    opts = ["OUTPUT_DIR", caches / "out", "DATA.DATASET", "imagenet", "DATA.FAKE_CLASSES", 2,
            "DATA.FAKE_TRAIN_PER_CLASS", 2, "DATA.FAKE_VAL_PER_CLASS", 1, "DATA.IMAGE_SIZE", 32, "DATA.NUM_WORKERS", 0,
            "MODEL.NASNET.PRESET", "nasnet_a_mobile", "MODEL.NASNET.PENULTIMATE_FILTERS", 96,
            "MODEL.NASNET.STEM_FILTERS", 8, "SOLVER.BATCH_SIZE", 2, "SOLVER.MAX_STEPS", 1, "TRAIN.DEVICE", "cpu",
            "TRAIN.TENSORBOARD", False, "MODEL.NASNET.WEIGHTS", "pretrainedmodels://nasnetamobile"]
    trainer = Trainer(load_config(None, [str(v) for v in opts]))
    ours = trainer.model.state_dict()["cell_11.conv_1x1.conv.weight"]  # Cadene's cell_15 (stack 3, 4th cell)
    assert torch.equal(ours, cadene["cell_15.conv_1x1.conv.weight"])
    trainer.metrics.close()
    with pytest.raises(BadInputError, match=r"^MODEL.NASNET.WEIGHTS 'timm://nasnetamobile': timm has no NASNet "
                                            r"weights named 'nasnetamobile'; known: timm://nasnetalarge"):
        load_config(None, ["MODEL.NASNET.WEIGHTS", "timm://nasnetamobile"])
