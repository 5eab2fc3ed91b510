#!/usr/bin/env bash
# Create / update the project virtualenv (.venv) and install everything nasnet-det needs:
#   1. pinned torch + torchvision          (requirements/constraints.txt), the CUDA build TORCH_CUDA names
#   2. this package, editable, with extras  (pip install -e .[test,ray,export])
#   3. detectron2: official source first; if that is unreachable, the PyPI republish
#      sal-detectron2 (pure Python, its compiled _C extension removed)
#   4. the bytecode of everything installed and of this repository, compiled once
#   5. a smoke check (imports, torchvision.ops.nms, a detectron2 Faster R-CNN training forward)
# The packages are installed with uv (`uv pip install`, the same wheels from the same indexes as pip, downloaded
# in parallel: a fresh setup takes about half as long); uv is taken from PATH or installed into the venv with pip.
# uv does not read pip's configuration, so the index, extra indexes, find-links and constraint files pip is
# configured with (pip.conf, PIP_* variables: `pip config list`) are handed to it, with pip's choice among them
# (the best version over all indexes: --index-strategy unsafe-best-match). INSTALLER=pip installs with pip as before,
# and pip is used when uv cannot be installed. detectron2's official source build stays with pip (a compile).
#
# Idempotent: a stamp (.venv/.installed) holds a hash of pyproject.toml, this script, the constraints file
# and the torch build chosen (TORCH_CUDA, TORCH_INDEX_URL); when it matches, nothing is reinstalled and the
# script exits in seconds. Changing TORCH_CUDA replaces torch and torchvision.
#
# Which torch build (the pinned versions either way):
#   TORCH_CUDA=pypi    (default) the wheel on PyPI, what `pip install torch` gets: on Linux x86_64 a CUDA 13.0
#                      build, which needs an NVIDIA driver >= 580 (older drivers: torch.cuda.is_available() is
#                      False and every `auto` device runs on the CPU)
#   TORCH_CUDA=cu126 | cu128   CUDA 12.6 / 12.8 builds, NVIDIA driver >= 525
#   TORCH_CUDA=cu130           CUDA 13.0 build from PyTorch's index, NVIDIA driver >= 580
#   TORCH_CUDA=cpu             CPU-only build (smaller download, no CUDA)
#   TORCH_INDEX_URL=URL        where torch/torchvision come from (default for cuXXX / cpu: PyTorch's wheel index
#                              https://download.pytorch.org/whl/<build>; for pypi: pip's configured index)
# The build installed (torch.__version__, torch.version.cuda) is printed and recorded in .venv/.torch-build;
# when nvidia-smi exists the driver is printed, with a one-line warning if the build needs a newer one.
# TORCH_CUDA unset: the build recorded in .venv/.torch-build is kept (with its TORCH_INDEX_URL unless that is
# set), so after `TORCH_CUDA=cu128 make setup` a later `make setup` or `bash bench/gpu.sh` stays on cu128; with
# nothing recorded, pypi. The script says which it used.
#
#   scripts/setup_env.sh --print-torch-plan   print the torch build, the install commands it would run and the
#                                             stamp hash, then exit (installs nothing, creates nothing)
#
# Other environment knobs:
#   VENV=path          venv location (default: <repo>/.venv)
#   PYTHON=python3     interpreter used to create the venv
#   INSTALLER=uv|pip   what installs the packages (default uv; pip when uv cannot be installed)
#   UV=path            the uv binary to use (default: uv on PATH, else one installed into the venv)
#   FORCE=1            ignore the stamp and redo every step
#   FORCE_D2=1         reinstall detectron2 even if it is already importable
#   D2_FALLBACK_ONLY=1 skip the official-source attempt for detectron2
#   SKIP_VERIFY=1      skip the final smoke check
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.installed"
CONSTRAINTS="$ROOT/requirements/constraints.txt"
D2_SOURCE_FILE="$VENV/.detectron2-source"
D2_GIT_URL="https://github.com/facebookresearch/detectron2.git"
D2_FALLBACK_SPEC="sal-detectron2==0.7.2"
D2_FALLBACK_DIR="$VENV/detectron2-fallback"
D2_PTH_NAME="detectron2-fallback.pth"

TORCH_BUILD_FILE="$VENV/.torch-build"

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1
INSTALLER="${INSTALLER:-uv}"

START=$SECONDS
log() { printf '[setup_env] %s\n' "$*"; }
fail() { printf '[setup_env] error: %s\n' "$*" >&2; exit 2; }

PLAN_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --print-torch-plan) PLAN_ONLY=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) fail "unknown argument '$arg' (expected --print-torch-plan or --help)" ;;
    esac
done

# --------------------------------------------------------------------------- which torch build
# Oldest NVIDIA driver of each build, and of each CUDA major version: the same numbers as
# nasnet_det/engine/devices.py TORCH_BUILDS / MIN_DRIVER (which cannot be imported before torch is installed;
# tests/project/test_setup_env.py checks that the tables agree).
declare -A BUILD_MIN_DRIVER=([cu126]=525 [cu128]=525 [cu130]=580 [cpu]=0)
declare -A CUDA_MIN_DRIVER=([11]=450 [12]=525 [13]=580)
PYPI_LINUX_X86_64_BUILD=cu130   # what PyPI's torch wheel is built with on Linux x86_64

# TORCH_CUDA unset: the build this venv was set up with (.venv/.torch-build), else the PyPI wheel.
if [[ -z "${TORCH_CUDA:-}" && -f "$TORCH_BUILD_FILE" ]]; then
    RECORDED_CUDA="$(sed -n 's/^TORCH_CUDA=//p' "$TORCH_BUILD_FILE" | head -n1)"
    RECORDED_INDEX="$(sed -n 's/^TORCH_INDEX_URL=//p' "$TORCH_BUILD_FILE" | head -n1)"
    case "$RECORDED_CUDA" in
        pypi|cu126|cu128|cu130|cpu)
            TORCH_CUDA=$RECORDED_CUDA
            if [[ -z "${TORCH_INDEX_URL:-}" && -n "$RECORDED_INDEX" && "$RECORDED_INDEX" != PyPI ]]; then
                TORCH_INDEX_URL=$RECORDED_INDEX
            fi
            log "TORCH_CUDA unset: keeping the build recorded in $TORCH_BUILD_FILE (TORCH_CUDA=$TORCH_CUDA);" \
                "set TORCH_CUDA to change it" ;;
        *) log "TORCH_CUDA unset and $TORCH_BUILD_FILE records no known build ('$RECORDED_CUDA'): using pypi" ;;
    esac
fi
TORCH_CUDA="${TORCH_CUDA:-pypi}"
case "$TORCH_CUDA" in
    pypi)
        TORCH_INDEX="${TORCH_INDEX_URL:-}"
        if [[ "$(uname -s)-$(uname -m)" == Linux-x86_64 ]]; then
            BUILD_FOR_DRIVER=$PYPI_LINUX_X86_64_BUILD
            BUILD_DESC="the PyPI wheel (a CUDA 13.0 build on Linux x86_64)"
        else
            BUILD_FOR_DRIVER=""
            BUILD_DESC="the PyPI wheel for $(uname -s) $(uname -m)"
        fi ;;
    cu126|cu128|cu130|cpu)
        TORCH_INDEX="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/$TORCH_CUDA}"
        BUILD_FOR_DRIVER=$TORCH_CUDA
        if [[ $TORCH_CUDA == cpu ]]; then
            BUILD_DESC="the CPU-only build"
        else
            BUILD_DESC="the CUDA ${TORCH_CUDA:2:2}.${TORCH_CUDA:4} build"
        fi ;;
    *) fail "TORCH_CUDA must be one of pypi (default), cu126, cu128, cu130, cpu; got '$TORCH_CUDA'" ;;
esac
case "$INSTALLER" in
    uv) INSTALL_CMD="uv pip install"; UNINSTALL_CMD="uv pip uninstall" ;;
    pip) INSTALL_CMD="python -m pip install"; UNINSTALL_CMD="python -m pip uninstall -y" ;;
    *) fail "INSTALLER must be uv (default) or pip; got '$INSTALLER'" ;;
esac
if [[ -n "$TORCH_INDEX" && ! "$TORCH_INDEX" =~ ^(https?|file):// ]]; then
    fail "TORCH_INDEX_URL must be the http(s):// or file:// URL of a pip index, got '$TORCH_INDEX'"
fi
NEED_DRIVER=""
[[ -n "$BUILD_FOR_DRIVER" ]] && NEED_DRIVER="${BUILD_MIN_DRIVER[$BUILD_FOR_DRIVER]}"
TORCH_PIP_ARGS=(-c "$CONSTRAINTS")
[[ -n "$TORCH_INDEX" ]] && TORCH_PIP_ARGS+=(--index-url "$TORCH_INDEX")
TORCH_PIP_ARGS+=(torch torchvision)

# The build installed now, from torch's version label (2.14.1+cu128 -> cu128; no label: the PyPI wheel).
installed_torch_build() {
    [[ -x "$PY" ]] || { echo none; return; }
    "$PY" -c '
from importlib.metadata import PackageNotFoundError, version
try:
    v = version("torch")
except PackageNotFoundError:
    v = ""
print((v.split("+", 1)[1] if "+" in v else "pypi") if v else "none")' 2>/dev/null || echo none
}

# When nvidia-smi answers: the driver, and one warning line if it is older than the build needs ($1).
check_driver() {
    local need="$1" driver major fits="" rc=0
    command -v nvidia-smi >/dev/null 2>&1 || return 0
    # nvidia-smi exits non-zero (9: no driver loaded) on a machine whose driver is broken or missing: say so
    # rather than let `set -e` end the script without a word.
    driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ')" \
        || rc=$?
    if (( rc )) || [[ ! "$driver" =~ ^[0-9]+(\.[0-9]+)*$ ]]; then
        if (( rc )); then
            log "nvidia-smi failed (exit $rc): the NVIDIA driver could not be read; torch will not see a GPU" \
                "until nvidia-smi works"
        else
            log "nvidia-smi found no GPU / driver${driver:+ (it said: $driver)}"
        fi
        return 0
    fi
    log "NVIDIA driver $driver"
    major="${driver%%.*}"
    [[ -n "$need" && "$need" -gt 0 && "$major" =~ ^[0-9]+$ ]] || return 0
    if (( major < need )); then
        for b in cu130 cu128 cu126; do
            if (( BUILD_MIN_DRIVER[$b] <= major )); then fits=$b; break; fi
        done
        log "WARNING: TORCH_CUDA=$TORCH_CUDA ($BUILD_DESC) needs an NVIDIA driver >= $need but this machine has" \
            "$driver: torch.cuda.is_available() will be False and every auto device will run on the CPU;" \
            "update the driver or use TORCH_CUDA=${fits:-cpu}"
    fi
}

compute_hash() {
    { cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" "$CONSTRAINTS"
      printf 'TORCH_CUDA=%s\nTORCH_INDEX=%s\n' "$TORCH_CUDA" "$TORCH_INDEX"; } | sha256sum | cut -d' ' -f1
}
HASH="$(compute_hash)"
INSTALLED_BUILD="$(installed_torch_build)"
REPLACE_TORCH=0
[[ "$INSTALLED_BUILD" != none && "$INSTALLED_BUILD" != "$TORCH_CUDA" ]] && REPLACE_TORCH=1

# pip's configuration as uv options: $1 = with (1) or without (0) pip's index-url (a torch index replaces it).
# A key set in several places counts as pip counts it: a PIP_* variable over [install] over [global].
# Read with the venv's pip once it exists (a venv may hold its own pip.conf), before that with $PYTHON's.
pip_config_as_uv_args() {
    local py="$PY"
    [[ -x "$py" ]] || py="${PYTHON:-python3}"
    "$py" -m pip config list 2>/dev/null | "$py" -c '
import ast, sys
rank = {":env:": 3, "install": 2, "global": 1}
found = {}
for line in sys.stdin:
    key, _, raw = line.rstrip("\n").partition("=")
    section, _, name = key.partition(".")
    if section in rank and raw and rank[section] >= found.get(name, (0, ""))[0]:
        found[name] = (rank[section], str(ast.literal_eval(raw)))
flags = {"extra-index-url": "--extra-index-url", "find-links": "--find-links", "constraint": "--constraint"}
if sys.argv[1] == "1":
    flags["index-url"] = "--index-url"
for name, flag in flags.items():
    for value in found.get(name, (0, ""))[1].split():
        print(flag)
        print(value)
if "cert" in found:
    print("CERT=" + found["cert"][1])
' "$1"
}

if (( PLAN_ONLY )); then
    need_text=""
    if [[ -n "$NEED_DRIVER" ]]; then
        if (( NEED_DRIVER > 0 )); then need_text=", needs an NVIDIA driver >= $NEED_DRIVER"; else need_text=", no GPU driver needed"; fi
    fi
    log "torch plan: TORCH_CUDA=$TORCH_CUDA, $BUILD_DESC$need_text"
    log "index: ${TORCH_INDEX:-PyPI (or the index pip is configured with)}"
    if (( REPLACE_TORCH )); then
        log "installed now: $INSTALLED_BUILD, to be replaced"
        log "would run: $UNINSTALL_CMD torch torchvision"
    else
        log "installed now: $INSTALLED_BUILD"
    fi
    log "would run: $INSTALL_CMD ${TORCH_PIP_ARGS[*]}"
    if [[ $INSTALLER == uv ]]; then
        log "uv options from pip config (torch; the other installs add its index-url if any):" \
            "$(pip_config_as_uv_args "$([[ -n "$TORCH_INDEX" ]] && echo 0 || echo 1)" | grep -v '^CERT=' | paste -sd' ')"
    fi
    log "stamp hash: $HASH"
    check_driver "$NEED_DRIVER"
    exit 0
fi

# --------------------------------------------------------------------------- no-op fast path
if [[ "${FORCE:-0}" != 1 && -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
    touch "$STAMP"   # keep make's mtime check happy after e.g. a fresh checkout
    log "environment up to date ($VENV; $(grep -s '^torch' "$TORCH_BUILD_FILE" | paste -sd' ' || true);" \
        "detectron2: $(cat "$D2_SOURCE_FILE" 2>/dev/null || echo unknown)); nothing to do"
    exit 0
fi

# --------------------------------------------------------------------------- venv
if [[ ! -x "$PY" ]]; then
    log "creating virtualenv $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
"$PY" - <<'EOF'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"nasnet-det needs Python >= 3.10, the venv has {sys.version.split()[0]}")
EOF
rm -f "$STAMP"

# --------------------------------------------------------------------------- installer
UV_BIN=""
UV_ARGS=()        # pip's configuration, for every uv install
UV_TORCH_ARGS=()  # the same, less pip's index-url when TORCH_INDEX replaces it
if [[ $INSTALLER == uv ]]; then
    if [[ -n "${UV:-}" ]]; then
        UV_BIN=$UV
    elif command -v uv >/dev/null 2>&1; then
        UV_BIN="$(command -v uv)"
    elif [[ -x "$VENV/bin/uv" ]]; then
        UV_BIN="$VENV/bin/uv"
    elif "$PY" -m pip install -q uv; then
        UV_BIN="$VENV/bin/uv"
    fi
    if [[ -z "$UV_BIN" ]] || ! "$UV_BIN" --version >/dev/null 2>&1; then
        log "uv could not be installed (pip install uv failed, or '${UV_BIN:-uv}' does not run): installing with pip"
        INSTALLER=pip
    fi
fi
if [[ $INSTALLER == uv ]]; then
    while IFS= read -r arg; do
        if [[ $arg == CERT=* ]]; then
            # pip's cert option, for uv's TLS (uv reads SSL_CERT_FILE) unless the environment already names one
            [[ -n "${SSL_CERT_FILE:-}" ]] || export SSL_CERT_FILE="${arg#CERT=}"
        else
            UV_ARGS+=("$arg")
        fi
    done < <(pip_config_as_uv_args 1)
    while IFS= read -r arg; do
        [[ $arg == CERT=* ]] || UV_TORCH_ARGS+=("$arg")
    done < <(pip_config_as_uv_args "$([[ -n "$TORCH_INDEX" ]] && echo 0 || echo 1)")
    log "installing with $("$UV_BIN" --version) ($UV_BIN)${UV_ARGS[*]:+; from pip config: ${UV_ARGS[*]}}"
fi

# pkg_install [uv-config-args...] -- ARGS: install ARGS (pip's syntax, which uv shares) into the venv.
pkg_install() {
    local config=()
    while [[ $1 != -- ]]; do config+=("$1"); shift; done
    shift
    if [[ $INSTALLER == uv ]]; then
        "$UV_BIN" pip install --python "$PY" --index-strategy unsafe-best-match ${config[@]+"${config[@]}"} "$@"
    else
        "$PY" -m pip install "$@"
    fi
}
pip_install() { pkg_install ${UV_ARGS[@]+"${UV_ARGS[@]}"} -- -c "$CONSTRAINTS" "$@"; }

# --------------------------------------------------------------------------- torch
log "torch: TORCH_CUDA=$TORCH_CUDA, $BUILD_DESC, from ${TORCH_INDEX:-PyPI}"
check_driver "$NEED_DRIVER"
[[ $INSTALLER == pip ]] && pip_install --upgrade pip
if (( REPLACE_TORCH )); then
    # The pin (torch==2.14.1) matches every build, so pip would keep the installed one: remove it first.
    log "replacing the installed torch build ($INSTALLED_BUILD) with $TORCH_CUDA"
    if [[ $INSTALLER == uv ]]; then
        "$UV_BIN" pip uninstall --python "$PY" torch torchvision
    else
        "$PY" -m pip uninstall -y torch torchvision
    fi
fi
pkg_install ${UV_TORCH_ARGS[@]+"${UV_TORCH_ARGS[@]}"} -- "${TORCH_PIP_ARGS[@]}"
# setuptools<81: detectron2 imports pkg_resources, which newer setuptools no longer ships.
pip_install "setuptools<81" wheel
TORCH_INFO="$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda or "none")')" \
    || fail "torch was installed but does not import in $VENV (the traceback is above)"
read -r TORCH_VERSION TORCH_BUILT_CUDA <<<"$TORCH_INFO"
printf 'TORCH_CUDA=%s\nTORCH_INDEX_URL=%s\ntorch=%s\ntorch.version.cuda=%s\n' "$TORCH_CUDA" "${TORCH_INDEX:-PyPI}" \
    "$TORCH_VERSION" "$TORCH_BUILT_CUDA" > "$TORCH_BUILD_FILE"
log "installed torch $TORCH_VERSION (CUDA: $TORCH_BUILT_CUDA); recorded in $TORCH_BUILD_FILE"
if [[ -z "$NEED_DRIVER" && "$TORCH_BUILT_CUDA" != none ]]; then  # the build was not known before installing
    check_driver "${CUDA_MIN_DRIVER[${TORCH_BUILT_CUDA%%.*}]:-}"
fi

# --------------------------------------------------------------------------- this package
log "installing nasnet-det (editable) with extras [test,ray,export]"
pip_install -e "$ROOT[test,ray,export]"

# --------------------------------------------------------------------------- detectron2
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    || fail "$PY could not name its site-packages folder (the error is above)"

d2_importable() { "$PY" -c 'import detectron2, detectron2.modeling, detectron2.config' >/dev/null 2>&1; }

remove_d2_fallback() {
    rm -f "$SITE/$D2_PTH_NAME"
    rm -rf "$D2_FALLBACK_DIR"
}

install_d2_official() {
    [[ "${D2_FALLBACK_ONLY:-0}" == 1 ]] && return 1
    command -v git >/dev/null 2>&1 || { log "git not found"; return 1; }
    # Quick reachability probe, so an unreachable host costs seconds, not minutes.
    GIT_TERMINAL_PROMPT=0 timeout 30 git ls-remote "$D2_GIT_URL" HEAD >/dev/null 2>&1 || return 1
    remove_d2_fallback
    # The host answered: build from source (compiles the C++ ops; can take a while on 2 cores).
    GIT_TERMINAL_PROMPT=0 timeout "${D2_BUILD_TIMEOUT:-1800}" \
        "$PY" -m pip install -c "$CONSTRAINTS" --timeout 20 --retries 0 \
        --no-build-isolation "git+$D2_GIT_URL"
}

install_d2_fallback() {
    remove_d2_fallback
    # The republish ships only a cp310 wheel (tag cp310-none-any): it is installed into a separate
    # directory with --python-version 3.10, and its _C*.so (built for CPython 3.10) is deleted.
    pkg_install ${UV_ARGS[@]+"${UV_ARGS[@]}"} -- --no-deps --target "$D2_FALLBACK_DIR" \
        --python-version 3.10 --only-binary=:all: "$D2_FALLBACK_SPEC"
    find "$D2_FALLBACK_DIR/detectron2" -maxdepth 1 -name '_C*.so' -print -delete
    # The wheel also ships a top-level `tools` package: it would shadow this repo's tools/.
    rm -rf "$D2_FALLBACK_DIR/tools" "$D2_FALLBACK_DIR/bin"
    printf '%s\n' "$D2_FALLBACK_DIR" > "$SITE/$D2_PTH_NAME"
    # detectron2's runtime dependencies (its METADATA Requires-Dist, plus fvcore/iopath which the
    # official setup.py lists). numpy<2 from that METADATA is deliberately NOT applied: torch
    # 2.14 brings numpy 2.x and the smoke check below runs detectron2 against it.
    pip_install fvcore iopath "pycocotools>=2.0.2" "omegaconf>=2.1,<2.4" "hydra-core>=1.1" \
        "termcolor>=1.1" "yacs>=0.1.8" tabulate cloudpickle matplotlib "tqdm>4.29.0" tensorboard \
        "Pillow>=7.1" packaging black "setuptools<81"
}

if [[ "${FORCE_D2:-0}" != 1 && -f "$D2_SOURCE_FILE" ]] && d2_importable; then
    log "detectron2: already installed ($(cat "$D2_SOURCE_FILE")), keeping it (FORCE_D2=1 reinstalls)"
else
    if install_d2_official; then
        echo "detectron2: installed from official source"
        echo "official git+$D2_GIT_URL" > "$D2_SOURCE_FILE"
    else
        echo "detectron2: official source unreachable, using PyPI republish $D2_FALLBACK_SPEC (pure Python, no C++ ops)"
        install_d2_fallback
        echo "fallback $D2_FALLBACK_SPEC (pure Python, _C removed) at $D2_FALLBACK_DIR" > "$D2_SOURCE_FILE"
    fi
fi

# --------------------------------------------------------------------------- bytecode
# Every tool, worker and test process imports torch, torchvision and detectron2. uv, unlike pip, writes no bytecode
# when it installs, and where PYTHONDONTWRITEBYTECODE is set (as on the development machine) Python never caches
# any: each process then compiled them from source again (`import torch` 3.7 s instead of 2.0-2.3 s there). Compiled
# once here (what is already compiled is skipped); a file that does not compile is left to fail at its import.
COMPILE_DIRS=("$SITE")
for d in "$D2_FALLBACK_DIR" "$ROOT/nasnet_det" "$ROOT/search" "$ROOT/tools" "$ROOT/tests"; do
    [[ -d $d ]] && COMPILE_DIRS+=("$d")
done
COMPILE_START=$SECONDS
# some packages ship files that are not Python 3 (test data, templates): those are all it skips
COMPILE_SKIPPED=""
"$PY" -m compileall -qq -j 0 "${COMPILE_DIRS[@]}" >/dev/null 2>&1 ||
    COMPILE_SKIPPED=" (compileall exit $?: some files do not compile; \`$PY -m compileall -q DIR\` names them)"
log "compiled the bytecode of site-packages, detectron2 and this repository in" \
    "$((SECONDS - COMPILE_START))s$COMPILE_SKIPPED"

# --------------------------------------------------------------------------- smoke check
if [[ "${SKIP_VERIFY:-0}" != 1 ]]; then
    log "smoke check"
    "$PY" - <<'EOF'
import math
import time

import fvcore  # noqa: F401
import pycocotools  # noqa: F401
import torch
import torchvision
from torchvision.ops import nms

import detectron2
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"detectron2 {detectron2.__version__} ({detectron2.__file__})")

boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
assert keep.tolist() == [0, 2], keep
print(f"torchvision.ops.nms ok: keep={keep.tolist()}")

try:
    from detectron2 import _C  # noqa: F401
    print("detectron2._C: present")
except ImportError as e:
    print(f"detectron2._C: absent ({e})")

t0 = time.time()
torch.manual_seed(0)
cfg = get_cfg()  # default config = Faster R-CNN R50-C4 (GeneralizedRCNN + Res5ROIHeads)
cfg.MODEL.DEVICE = "cpu"
cfg.MODEL.WEIGHTS = ""
model = build_model(cfg)
model.train()
inst = Instances((64, 64))
inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 48.0]]))
inst.gt_classes = torch.tensor([0])
batch = [{"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64, "instances": inst}]
with EventStorage():
    losses = model(batch)
summary = {k: round(float(v), 4) for k, v in losses.items()}
assert all(math.isfinite(v) for v in summary.values()), summary
print(f"detectron2 Faster R-CNN (R50-C4 default cfg, cpu) train forward ok in {time.time() - t0:.1f}s: {summary}")

# Ops that need the C++ extension: report which work here (none are used by R50-C4/FPN Faster R-CNN).
from detectron2 import layers

def _check(name, fn):
    try:
        fn()
        print(f"  {name}: ok")
    except Exception as e:  # noqa: BLE001
        print(f"  {name}: unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")

rb = torch.tensor([[10.0, 10.0, 8.0, 6.0, 0.0], [11.0, 10.0, 8.0, 6.0, 10.0]])
print("C++-backed detectron2 ops:")
_check("nms_rotated", lambda: layers.nms_rotated(rb, torch.tensor([0.9, 0.8]), 0.5))
_check("pairwise_iou_rotated", lambda: layers.rotated_boxes.pairwise_iou_rotated(rb, rb))
_check("ROIAlignRotated", lambda: layers.ROIAlignRotated((2, 2), 1.0, 0)(
    torch.rand(1, 1, 16, 16), torch.tensor([[0.0, 8.0, 8.0, 4.0, 4.0, 0.0]])))
_check("DeformConv", lambda: layers.DeformConv(1, 1, 3, padding=1)(
    torch.rand(1, 1, 8, 8), torch.zeros(1, 18, 8, 8)))
_check("ModulatedDeformConv", lambda: layers.ModulatedDeformConv(1, 1, 3, padding=1)(
    torch.rand(1, 1, 8, 8), torch.zeros(1, 18, 8, 8), torch.ones(1, 9, 8, 8)))
EOF
    "$PY" -c "import nasnet_det; print('nasnet_det importable from', nasnet_det.__file__)" \
        || log "WARNING: nasnet_det is installed but does not import (see the traceback above)"
fi

echo "$HASH" > "$STAMP"
log "done in $((SECONDS - START))s (detectron2: $(cat "$D2_SOURCE_FILE"))"
