"""scripts/setup_env.sh's torch build choice (TORCH_CUDA, TORCH_INDEX_URL), through --print-torch-plan: the pip
command for each build, a bad value in one line, the stamp hash following the choice, a build change replacing
the installed torch, the driver warning, and the script's driver table agreeing with nasnet_det/engine/devices.py.
Nothing is installed: only PyPI is reachable here, so the non-default builds cannot be downloaded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nasnet_det.engine.devices import MIN_DRIVER, TORCH_BUILDS

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "setup_env.sh"


def plan(tmp_path: Path, driver: str | None = None, installed: str | None = None, smi_exit: int = 0,
         recorded: str | None = None, **env: str):
    """Run ``setup_env.sh --print-torch-plan`` with a venv under ``tmp_path`` (holding torch ``installed``,
    a version string, when given, and ``recorded`` as its .torch-build) and a fake nvidia-smi printing ``driver``
    and exiting ``smi_exit`` (when ``driver`` is None: the machine's nvidia-smi, if any)."""
    venv, bin_dir = tmp_path / "venv", tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("TORCH_CUDA", "TORCH_INDEX_URL", "PYTHONPATH", "INSTALLER", "UV")}
    full_env.update(VENV=str(venv), **env)
    if installed is not None:
        (venv / "bin").mkdir(parents=True, exist_ok=True)
        (venv / "bin" / "python").symlink_to(sys.executable)
        site = tmp_path / "site"  # a torch distribution's metadata only: what the script reads
        dist = site / f"torch-{installed}.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {installed}\n")
        full_env["PYTHONPATH"] = str(site)
        if recorded is not None:
            (venv / ".torch-build").write_text(recorded)
    if driver is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\necho '{driver}'\nexit {smi_exit}\n")
        smi.chmod(0o755)
    full_env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"  # the fake nvidia-smi first
    proc = subprocess.run(["bash", str(SCRIPT), "--print-torch-plan"], env=full_env, capture_output=True, text=True,
                          timeout=60)
    assert not venv.exists() or installed is not None, "the plan must create nothing"
    return proc


UNINSTALL = "would run: uv pip uninstall torch torchvision"  # the default installer, uv


def pip_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if re.search(r"would run: (uv pip|python -m pip) install ", ln)]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.parametrize("build", ["cu126", "cu128", "cu130", "cpu"])
def test_each_build_installs_from_pytorchs_index(tmp_path, build):
    proc = plan(tmp_path, TORCH_CUDA=build)
    assert proc.returncode == 0, proc.stderr
    line = pip_line(proc.stdout)
    assert line.endswith(f"--index-url https://download.pytorch.org/whl/{build} torch torchvision"), line
    assert f"-c {REPO}/requirements/constraints.txt" in line
    need = TORCH_BUILDS[build]
    assert (f"needs an NVIDIA driver >= {need}" if need else "no GPU driver needed") in proc.stdout
    assert "uninstall" not in proc.stdout  # nothing installed yet


def test_default_is_the_pypi_wheel(tmp_path):
    proc = plan(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH_CUDA=pypi" in proc.stdout
    assert "--index-url" not in pip_line(proc.stdout)
    if os.uname().sysname == "Linux" and os.uname().machine == "x86_64":
        assert "CUDA 13.0 build on Linux x86_64), needs an NVIDIA driver >= 580" in proc.stdout


def test_torch_index_url_overrides_the_index(tmp_path):
    proc = plan(tmp_path, TORCH_CUDA="cu128", TORCH_INDEX_URL="https://mirror.example/whl/cu128")
    assert pip_line(proc.stdout).endswith("--index-url https://mirror.example/whl/cu128 torch torchvision")


@pytest.mark.parametrize("env, key", [({"TORCH_CUDA": "cu999"}, "TORCH_CUDA"),
                                      ({"TORCH_CUDA": "cu128", "TORCH_INDEX_URL": "mirror"}, "TORCH_INDEX_URL"),
                                      ({"INSTALLER": "conda"}, "INSTALLER")])
def test_a_bad_choice_is_one_line_and_exit_2(tmp_path, env, key):
    proc = plan(tmp_path, **env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(f"[setup_env] error: {key} must be")


def test_uv_installs_by_default_and_installer_pip_installs_as_before(tmp_path):
    uv = plan(tmp_path / "uv", installed="2.14.1", TORCH_CUDA="cu128")
    pip = plan(tmp_path / "pip", installed="2.14.1", TORCH_CUDA="cu128", INSTALLER="pip")
    assert uv.returncode == 0 and pip.returncode == 0, uv.stderr + pip.stderr
    assert "would run: uv pip install -c " in pip_line(uv.stdout) and UNINSTALL in uv.stdout
    assert "would run: python -m pip install -c " in pip_line(pip.stdout)
    assert "would run: python -m pip uninstall -y torch torchvision" in pip.stdout
    assert "uv options" not in pip.stdout
    stamp = re.compile(r"stamp hash: (\w+)")  # the installer does not change what is installed
    assert stamp.search(uv.stdout).group(1) == stamp.search(pip.stdout).group(1)


@pytest.mark.parametrize("build", ["pypi", "cu128"])
def test_uv_gets_the_indexes_find_links_and_constraints_pip_is_configured_with(tmp_path, build):
    """uv reads no pip.conf: the script hands it pip's settings, a PIP_* variable over [install] over [global]."""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://index.example/simple\nconstraint = /global/c.txt\n"
                    "find-links = /global/wheels\n[install]\nconstraint = /install/c.txt\n"
                    "find-links = /install/wheels\n")
    proc = plan(tmp_path, TORCH_CUDA=build, PIP_CONFIG_FILE=str(conf), PIP_FIND_LINKS="/env/wheels",
                PIP_EXTRA_INDEX_URL="https://a.example/simple https://b.example/simple")
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "uv options from pip config" in ln)
    options = line.split(": ", 1)[1]
    # a torch index (cu128) replaces pip's index-url for torch, as --index-url does for pip
    assert ("--index-url https://index.example/simple" in options) == (build == "pypi"), line
    assert "--extra-index-url https://a.example/simple --extra-index-url https://b.example/simple" in options
    assert "--find-links /env/wheels" in options and "/install/wheels" not in options and "/global/" not in options
    assert "--constraint /install/c.txt" in options


def test_the_stamp_follows_the_choice(tmp_path):
    def stamp(**env: str) -> str:
        return re.search(r"stamp hash: (\w+)", plan(tmp_path, **env).stdout).group(1)

    hashes = {b: stamp(TORCH_CUDA=b) for b in ("pypi", "cu126", "cu128", "cu130", "cpu")}
    assert len(set(hashes.values())) == 5
    assert stamp(TORCH_CUDA="cu128") == hashes["cu128"]
    assert stamp(TORCH_CUDA="cu128", TORCH_INDEX_URL="https://mirror.example/whl/cu128") != hashes["cu128"]


@pytest.mark.parametrize("installed, build, replaced", [
    ("2.14.1", "cu128", True),          # the PyPI wheel installed, a CUDA 12.8 build wanted
    ("2.14.1+cu128", "cu128", False),
    ("2.14.1+cu128", "pypi", True),
    ("2.14.1", "pypi", False),
])
def test_changing_the_build_replaces_the_installed_torch(tmp_path, installed, build, replaced):
    proc = plan(tmp_path, installed=installed, TORCH_CUDA=build)
    assert proc.returncode == 0, proc.stderr
    assert (UNINSTALL in proc.stdout) == replaced, proc.stdout


@pytest.mark.parametrize("driver, build, warning", [
    ("535.104.05", "cu130", "use TORCH_CUDA=cu128"),
    ("535.104.05", "cu128", None),
    ("470.256.02", "cu126", "use TORCH_CUDA=cpu"),
    ("580.65.06", "cu130", None),
])
def test_the_driver_is_printed_and_an_old_one_warned_in_one_line(tmp_path, driver, build, warning):
    proc = plan(tmp_path, driver=driver, TORCH_CUDA=build)
    assert f"NVIDIA driver {driver}" in proc.stdout
    warnings = [ln for ln in proc.stdout.splitlines() if "WARNING" in ln]
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0]
        assert f"needs an NVIDIA driver >= {TORCH_BUILDS[build]} but this machine has {driver}" in warnings[0]


def test_the_scripts_driver_table_is_devices_py():
    text = SCRIPT.read_text()

    def table(name: str) -> dict[str, int]:
        body = re.search(rf"declare -A {name}=\(([^)]*)\)", text).group(1)
        return {k: int(v) for k, v in re.findall(r"\[(\w+)\]=(\d+)", body)}

    assert table("BUILD_MIN_DRIVER") == TORCH_BUILDS
    assert {int(k): v for k, v in table("CUDA_MIN_DRIVER").items()} == MIN_DRIVER


def test_an_nvidia_smi_that_fails_is_one_line_not_a_silent_exit(tmp_path):
    """A machine whose nvidia-smi exists but cannot talk to the driver (it prints a message and exits 9)."""
    proc = plan(tmp_path, driver="NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver",
                smi_exit=9, TORCH_CUDA="cu128")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if "nvidia-smi" in ln]
    assert lines == ["[setup_env] nvidia-smi failed (exit 9): the NVIDIA driver could not be read; torch will not "
                     "see a GPU until nvidia-smi works"]
    assert "stamp hash" in proc.stdout and "WARNING" not in proc.stdout


RECORDED_CU128 = ("TORCH_CUDA=cu128\nTORCH_INDEX_URL=https://download.pytorch.org/whl/cu128\ntorch=2.14.1+cu128\n"
                  "torch.version.cuda=12.8\n")


def test_an_unset_torch_cuda_keeps_the_build_the_venv_records(tmp_path):
    """After `TORCH_CUDA=cu128 make setup`, a plain rerun (a stale stamp, bench/gpu.sh) stays on cu128."""
    kept = plan(tmp_path, installed="2.14.1+cu128", recorded=RECORDED_CU128)
    assert kept.returncode == 0, kept.stderr
    assert ("[setup_env] TORCH_CUDA unset: keeping the build recorded in "
            f"{tmp_path / 'venv' / '.torch-build'} (TORCH_CUDA=cu128); set TORCH_CUDA to change it") in kept.stdout
    assert "TORCH_CUDA=cu128, the CUDA 12.8 build" in kept.stdout and "uninstall" not in kept.stdout
    assert pip_line(kept.stdout).endswith("--index-url https://download.pytorch.org/whl/cu128 torch torchvision")
    explicit = plan(tmp_path / "b", installed="2.14.1+cu128", TORCH_CUDA="cu128")
    stamp = re.compile(r"stamp hash: (\w+)")
    assert stamp.search(kept.stdout).group(1) == stamp.search(explicit.stdout).group(1)
    changed = plan(tmp_path / "c", installed="2.14.1+cu128", recorded=RECORDED_CU128, TORCH_CUDA="pypi")
    assert UNINSTALL in changed.stdout and "keeping" not in changed.stdout
    fresh = plan(tmp_path / "d", installed="2.14.1")  # nothing recorded: the PyPI wheel
    assert "TORCH_CUDA=pypi" in fresh.stdout and "keeping" not in fresh.stdout
