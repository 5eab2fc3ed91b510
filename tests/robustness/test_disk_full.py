"""A full disk ends every tool with one ``error:`` line that says so and names the file or folder (no traceback,
exit code 1), through the pipeline too (the stage's error), and the writes it cut short leave no torn file.

The full disk is real where the test may mount a small tmpfs (root); the tests that need one are skipped,
saying why, elsewhere. Writes that ``/dev/full`` (a device whose every write fails with ENOSPC) can take need
no mount.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.jobs import Jobs
from test_faults import CIFAR_TINY, CLASSIFY, SEARCH_TINY, detection_argv

REPO = Path(__file__).resolve().parents[2]
DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full on this system")


@pytest.fixture
def small_disk(tmp_path):
    """``mount(folder, size)``: a real filesystem of ``size`` (tmpfs) at ``folder``; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str = "1m") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("a small filesystem (mount -t tmpfs) needs root")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not permitted here: {proc.stderr.strip() or proc.returncode}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Leave about ``leave`` bytes free on ``folder``'s filesystem."""
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, shutil.disk_usage(folder).free - leave))


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def assert_says_disk_full(line: str, where: Path) -> None:
    assert "no space left on device" in line and str(where) in line and "is full" in line, line


JOBS = Jobs({"OMP_NUM_THREADS": "1"})  # a job server per tool (helpers.jobs), closed by conftest.py after these tests


def run_tool(entry: str, argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``entry`` (``module:function``) with ``argv`` as its own process, as the tools run it (test_faults' job
    servers: forks of a process that imported the tool once)."""
    return JOBS.run(entry, argv, timeout=timeout)


# ---- the writers, without a mount ---------------------------------------------------------------------------
def test_a_full_disk_while_creating_a_temporary_names_the_file_it_stands_for(tmp_path):
    # mkstemp fails on a disk out of inodes or blocks with the temporary's own name, which no user wrote
    from nasnet_det.utils.io import as_disk_full_error, tmp_path_for

    target = tmp_path / "metrics.jsonl"
    tmp = tmp_path_for(target)
    full = as_disk_full_error(OSError(errno.ENOSPC, "No space left on device", str(tmp)), tmp_path, folder=True)
    assert full is not None and full.filename == str(target)
    assert_says_disk_full(str(full), target)
    assert tmp.name not in str(full)


@needs_dev_full
def test_a_checkpoint_save_on_a_full_device_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    # torch.save reported a full disk as "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos"
    from nasnet_det.utils import io as io_module
    from nasnet_det.utils.io import atomic_torch_save, atomic_write, load_torch_file

    target = tmp_path / "model_0000009.pth"
    atomic_torch_save({"w": torch.ones(3)}, target)
    real_open = builtins.open

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):  # the temporary file's bytes go to /dev/full
        return real_open(DEV_FULL if ".tmp" in str(path) else path, mode, *args, **kwargs)

    monkeypatch.setattr(io_module, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(OSError) as caught:
        atomic_torch_save({"w": torch.zeros(100_000)}, target)
    assert caught.value.errno == errno.ENOSPC
    assert_says_disk_full(str(caught.value), target)
    with pytest.raises(OSError, match=r"no space left on device: cannot write .*summary.json"):
        atomic_write(tmp_path / "summary.json", "{}\n")
    monkeypatch.undo()
    assert torch.equal(load_torch_file(target)["w"], torch.ones(3))  # the old checkpoint, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary left


@needs_dev_full
def test_metrics_lines_on_a_full_device_name_the_file(tmp_path):
    from nasnet_det.classification.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.path.symlink_to(DEV_FULL)  # appends to metrics.jsonl fail as on a full disk
    with pytest.raises(OSError) as caught:
        writer.write("train", 1, loss=2.5)
    assert caught.value.errno == errno.ENOSPC
    assert_says_disk_full(str(caught.value), writer.path)


# ---- real small filesystems ----------------------------------------------------------------------------------
def test_atomic_writes_on_a_full_filesystem_name_the_file_and_leave_nothing_torn(tmp_path, small_disk):
    from nasnet_det.utils.io import atomic_torch_save, atomic_write, load_torch_file

    disk = small_disk(tmp_path / "disk", "256k")
    atomic_torch_save({"w": torch.ones(3)}, disk / "ckpt.pth")
    with pytest.raises(OSError) as caught:
        atomic_torch_save({"w": torch.zeros(200_000)}, disk / "ckpt.pth")  # 800 kB
    assert caught.value.errno == errno.ENOSPC
    assert_says_disk_full(str(caught.value), disk / "ckpt.pth")
    with pytest.raises(OSError, match=r"no space left on device: cannot write .*report.md"):
        atomic_write(disk / "report.md", "x" * 400_000)
    assert torch.equal(load_torch_file(disk / "ckpt.pth")["w"], torch.ones(3))
    assert sorted(p.name for p in disk.iterdir()) == ["ckpt.pth"]


def test_detection_training_on_a_full_disk_ends_with_one_line(tmp_path, small_disk):
    # was: 4 tracebacks and "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos"
    out = small_disk(tmp_path / "disk") / "det"  # 1 MiB: a checkpoint of the tiny detector does not fit
    proc = run_tool("nasnet_det.detection.train:train_main", detection_argv(tmp_path / "data", out))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert_says_disk_full(one_error_line(proc.stderr), out)
    assert "Traceback" not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_classification_training_on_a_full_disk_ends_with_one_line(tmp_path, small_disk):
    out = small_disk(tmp_path / "disk") / "cifar"
    proc = run_tool(CLASSIFY, ["--config-file", str(REPO / "configs" / "train" / "cifar10_smoke.yaml"),
                               "--output-dir", str(out), *CIFAR_TINY])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert_says_disk_full(one_error_line(proc.stderr), out)
    assert "Traceback" not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


@pytest.mark.parametrize("full_at", ["controller", "journal"])
def test_search_on_a_full_disk_ends_with_one_line(tmp_path, small_disk, full_at):
    # the journal: SQLite's "disk I/O error" was reported as "journal.sqlite is not a search journal"
    disk = small_disk(tmp_path / "disk", "256k")  # the journal fits, the controller checkpoint does not
    if full_at == "journal":
        fill(disk, leave=12 << 10)
    proc = run_tool("search.cli:main", [*SEARCH_TINY, "OUTPUT_DIR", str(disk / "search")])
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert_says_disk_full(line, disk / "search" / ("journal.sqlite" if full_at == "journal" else "controller_"))
    assert "Traceback" not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_the_pipeline_stage_error_says_the_disk_is_full(tmp_path, small_disk, capsys):
    # was: "stage 'detect': train_net.py exited with code 1: RuntimeError: [enforce fail at inline_container..."
    from helpers.pipeline import SMOKE, TINY

    from nasnet_det.models import create_model
    from nasnet_det.models.pretrained import save_checkpoint
    from nasnet_det.pipeline.cli import main as pipeline_main
    from nasnet_det.pipeline.config import load_pipeline_config

    out = tmp_path / "run"
    weights = save_checkpoint(create_model(load_pipeline_config(SMOKE, []), num_classes=0, genotype="nasnet_a"),
                              tmp_path / "bb.pth")
    detect = small_disk(out / "detect")  # the detection stage's folder is on a 1 MiB disk
    rc = pipeline_main(["--config-file", str(SMOKE), "--quiet", "--until", "detect", *TINY, "OUTPUT_DIR", str(out),
                        "SEARCH.GENOTYPE", "nasnet_a", "PRETRAIN.WEIGHTS", str(weights)])
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    line = one_error_line(err)
    assert "stage 'detect'" in line and "train_net.py exited with code 1" in line, line
    assert_says_disk_full(line, detect)
    assert "Traceback" not in err and "inline_container" not in line
    assert json.loads((detect / "manifest.json").read_text())["status"] == "failed"


TOOL_THEN_TORCHRUN = r"""
import sys
print("step 2: eval top-1 12.50%")
print("error: no space left on device: cannot write /data/out/checkpoints/ckpt_00000002.pth: the disk holding "
      "/data/out/checkpoints is full; free some space there", file=sys.stderr)
print("E1201 23:04:44 torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: 1) local_rank: 0")
print("Traceback (most recent call last):")
print("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ")
print("  error_file: <N/A>")
sys.exit(1)
"""


def test_the_tools_error_line_reaches_the_stage_error_past_torchruns_report(tmp_path):
    # under torchrun (pretraining) the stage error quoted "...errors.ChildFailedError:" instead of the tool's line
    from nasnet_det.pipeline.launch import StageError, run_tool

    with pytest.raises(StageError) as caught:
        run_tool("pretrain", [sys.executable, "-c", TOOL_THEN_TORCHRUN], tmp_path / "pretrain", quiet=True)
    assert "exited with code 1: error: no space left on device: cannot write /data/out/checkpoints" in str(caught.value)


def test_a_stage_log_on_a_full_disk_still_gives_the_tools_error_line(tmp_path, small_disk):
    # stage.log's write failed with a bare "[Errno 28]" and the tool was killed; now the tool runs to its end
    from nasnet_det.pipeline.launch import StageError, run_tool

    workdir = small_disk(tmp_path / "disk", "64k") / "detect"
    workdir.mkdir()
    fill(workdir.parent, leave=8 << 10)
    chatty = "import sys\nfor i in range(2000): print('iter', i, 'x' * 60)\n" \
             "print('error: the tool failed for its own reason', file=sys.stderr)\nsys.exit(3)\n"
    with pytest.raises(StageError) as caught:
        run_tool("detect", [sys.executable, "-c", chatty], workdir, quiet=True)
    message = str(caught.value)
    assert "exited with code 3: error: the tool failed for its own reason" in message, message
    assert "incomplete: no space left on device" in message, message
