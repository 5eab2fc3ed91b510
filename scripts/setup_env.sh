#!/usr/bin/env bash
# Create / update the project virtualenv (.venv) and install everything nasnet-det needs:
#   1. pinned torch + torchvision          (requirements/constraints.txt)
#   2. this package, editable, with extras  (pip install -e .[test,ray,export])
#   3. detectron2: official source first; if that is unreachable, the PyPI republish
#      sal-detectron2 (pure Python, its compiled _C extension removed)
#   4. a smoke check (imports, torchvision.ops.nms, a detectron2 Faster R-CNN training forward)
#
# Idempotent: a stamp (.venv/.installed) holds a hash of pyproject.toml, this script and the
# constraints file; when it matches, nothing is reinstalled and the script exits in seconds.
#
# Environment knobs:
#   VENV=path          venv location (default: <repo>/.venv)
#   PYTHON=python3     interpreter used to create the venv
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

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

START=$SECONDS
log() { printf '[setup_env] %s\n' "$*"; }

compute_hash() {
    cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1
}
HASH="$(compute_hash)"

# --------------------------------------------------------------------------- no-op fast path
if [[ "${FORCE:-0}" != 1 && -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
    touch "$STAMP"   # keep make's mtime check happy after e.g. a fresh checkout
    log "environment up to date ($VENV, detectron2: $(cat "$D2_SOURCE_FILE" 2>/dev/null || echo unknown)); nothing to do"
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
pip_install() { "$PY" -m pip install -c "$CONSTRAINTS" "$@"; }

# --------------------------------------------------------------------------- torch
log "installing pinned torch/torchvision (+ setuptools<81, pip, wheel)"
pip_install --upgrade pip
# setuptools<81: detectron2 imports pkg_resources, which newer setuptools no longer ships.
pip_install torch torchvision "setuptools<81" wheel

# --------------------------------------------------------------------------- this package
log "installing nasnet-det (editable) with extras [test,ray,export]"
pip_install -e "$ROOT[test,ray,export]"

# --------------------------------------------------------------------------- detectron2
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

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
    "$PY" -m pip install --no-deps --target "$D2_FALLBACK_DIR" \
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

# --------------------------------------------------------------------------- smoke check
if [[ "${SKIP_VERIFY:-0}" != 1 ]]; then
    log "smoke check"
    "$PY" -c "import torch, torchvision, detectron2; from detectron2.modeling import build_model; from detectron2.config import get_cfg; import fvcore, pycocotools"
    "$PY" - <<'EOF'
import math
import time

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
