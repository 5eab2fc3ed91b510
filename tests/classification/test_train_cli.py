"""The training command line: a smoke run writes its outputs; bad input gives one clear error line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nasnet_det.classification.cli import main
from nasnet_det.models.pretrained import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = ["MODEL.NASNET.NUM_CELLS", "1", "MODEL.NASNET.FILTERS", "4", "DATA.SOURCE", "synthetic:48",
        "DATA.VAL_SIZE", "16",
        "DATA.NUM_WORKERS", "0", "SOLVER.MAX_STEPS", "4", "SOLVER.BATCH_SIZE", "8", "TRAIN.DEVICE", "cpu",
        "TRAIN.CHECKPOINT_PERIOD", "2", "TRAIN.EVAL_PERIOD", "2", "TRAIN.LOG_PERIOD", "1",
        "TRAIN.EVAL_BATCH_SIZE", "16"]


def test_cli_smoke_run_writes_metrics_checkpoint_plot_and_backbone(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "--output-dir", str(out), *TINY])
    assert rc == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["type"] == "eval"] == [2, 4]
    assert (out / "checkpoints" / "ckpt_00000004.pth").is_file()
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    model, payload = load_checkpoint(out / "model_final.pth")
    assert payload["step"] == 4 and "optimizer" not in payload and model.num_cells == 1
    assert "top-1 error" in capsys.readouterr().out
    # Running again resumes the finished run instead of retraining it.
    assert main(["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "--output-dir", str(out),
                 *TINY]) == 0
    assert (out / "metrics.jsonl").read_text().splitlines() == [json.dumps(r) for r in records]  # no eval row again
    capsys.readouterr()
    assert main(["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "--output-dir", str(out),
                 "--eval-only", *TINY]) == 0
    assert "(16 images)" in capsys.readouterr().out


def test_cli_exports_a_backbone(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "--output-dir", str(out),
                 *TINY, "SOLVER.MAX_STEPS", "1"]) == 0
    assert main(["--export-backbone", str(out / "checkpoints" / "ckpt_00000001.pth"), str(tmp_path / "b.pth")]) == 0
    load_checkpoint(tmp_path / "b.pth")


@pytest.mark.parametrize("argv, message", [
    (["--config-file", "nope.yaml"], "config file nope.yaml does not exist"),
    (["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "SOLVER.NOT_A_KEY", "1"], "NOT_A_KEY"),
    (["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "TRAIN.AMP", "fp8"], "TRAIN.AMP must be"),
    (["--config-file", str(REPO / "configs/train/imagenet_smoke.yaml"), "DATA.TRAIN_DIR", "/no/such/train",
      "DATA.VAL_DIR", "/no/such/val"], "train folder /no/such/train does not exist"),
    (["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "DATA.SOURCE", "npz:/no/such.npz"],
     "/no/such.npz does not exist"),
    (["--export-backbone", "/no/ckpt.pth", "out.pth"], "checkpoint /no/ckpt.pth does not exist"),
    (["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "--resume", *TINY], "cannot resume"),
    (["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "TRAIN.KEEP_CHECKPOINTS", "0"],
     "TRAIN.KEEP_CHECKPOINTS must be >= 1, got 0"),
    (["--config-file", str(REPO / "configs/train/imagenet_smoke.yaml"), "DATA.IMAGE_SIZE", "16"],
     "DATA.IMAGE_SIZE must be >= 32, got 16"),
    (["--config-file", str(REPO / "configs/train/imagenet_smoke.yaml"), "DATA.VAL_CROP_FRACTION", "1.2"],
     "DATA.VAL_CROP_FRACTION must be in (0.0, 1.0], got 1.2"),
    (["--config-file", str(REPO / "configs/train/imagenet_smoke.yaml"), "DATA.MIN_CROP_AREA", "0.0"],
     "DATA.MIN_CROP_AREA must be in (0.0, 1.0], got 0.0"),
    (["--config-file", str(REPO / "configs/train/imagenet_smoke.yaml"), "SOLVER.WARMUP_FACTOR", "-0.5"],
     "SOLVER.WARMUP_FACTOR must be in [0.0, 1.0], got -0.5"),
    # A flag after the overrides (argparse hands it to them): named, not "an odd number of overrides".
    (["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "SOLVER.MAX_STEPS", "2", "--eval-only"],
     "--eval-only comes after the KEY VALUE overrides"),
    (["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "SOLVER.MAX_STEPS", "2", "--no-resume",
      "--resume"], "--no-resume comes after the KEY VALUE overrides"),
])
def test_cli_bad_input_is_one_clear_error(argv, message, capsys, tmp_path):
    assert main([*argv, "OUTPUT_DIR", str(tmp_path)] if "--config-file" in argv else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_cli_npz_without_the_expected_keys_is_one_clear_error(tmp_path, capsys):
    npz = tmp_path / "images.npz"
    np.savez(npz, images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.zeros(4, np.uint8))
    argv = ["--config-file", str(REPO / "configs/train/cifar10_smoke.yaml"), "--output-dir", str(tmp_path / "run"),
            *TINY, "DATA.SOURCE", f"npz:{npz}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {npz}: missing key(s) ['x_train', 'y_train']") and "Traceback" not in err


@pytest.mark.parametrize("config, classes, params", [
    ("cifar10_nasnet_a_6x768.yaml", 10, 3_346_538),
    ("imagenet_nasnet_a_mobile.yaml", 1000, 5_289_978),
    ("imagenet_nasnet_a_large.yaml", 1000, 88_753_150),
])
def test_paper_scale_configs_build_the_published_networks(config, classes, params):
    from nasnet_det.classification.config import load_config
    from nasnet_det.classification.trainer import build_model

    cfg = load_config(REPO / "configs/train" / config)
    model = build_model(cfg, classes, cfg.DATA.IMAGE_SIZE if cfg.DATA.DATASET == "imagenet" else 32)
    # Published counts exclude the aux head, which only exists during training.
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux_head.")) == params
    assert model.aux_head is not None
