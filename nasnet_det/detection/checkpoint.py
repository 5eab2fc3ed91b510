"""detectron2's ``DetectionCheckpointer`` made crash-safe and strict about the NASNet it loads.

- Saves are atomic: ``model_*.pth``, ``model_final.pth`` and ``last_checkpoint`` are written to a temporary
  name and renamed, so a kill during a save leaves the previous files intact (stale temporaries are removed
  when the next run starts).
- A damaged file (truncated, empty, not a checkpoint) is named; resuming falls back to the newest intact
  checkpoint in OUTPUT_DIR.
- The stock checkpointer only logs missing and shape-mismatched keys, so ``MODEL.WEIGHTS`` trained with
  another genotype or N@F would "load" into a mostly random NASNet and evaluate or draw garbage without a word.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from nasnet_det.engine.checkpoint import LAST_CHECKPOINT, CrashSafeCheckpointer
from nasnet_det.models.arch import CLASSIFIER_FIELDS, COMPARED_FIELDS
from nasnet_det.models.pretrained import FORMAT as BACKBONE_FORMAT
from nasnet_det.utils.errors import BadInputError
from nasnet_det.utils.io import DamagedFileError, load_torch_file

logger = logging.getLogger(__name__)
FINAL_CHECKPOINT = "model_final.pth"
_PERIODIC = re.compile(r"^model_(\d+)\.pth$")

# Config keys that decide the NASNet's tensors (those of the architecture record, and the layout); the
# message names them.
ARCH_KEYS = ("MODEL.BACKBONE.NAME",
             *[key for name, key in COMPARED_FIELDS.items()
               if key.startswith("MODEL.NASNET.") and name not in CLASSIFIER_FIELDS],
             "MODEL.NASNET.OUT_FEATURES")


# the top-level modules of a classification NASNet (ours, timm's, pretrainedmodels'); a detector's keys start with
# backbone. / proposal_generator. / roi_heads.
_CLASSIFIER_MODULE = re.compile(r"^(module\.)?(conv0|cell_stem_[01]|cell_\d+|reduction_cell_\d+|last_linear|aux_head)"
                                r"\.")
_DETECTOR_MODULE = re.compile(r"^(module\.)?(backbone|proposal_generator|roi_heads)\.")


def looks_like_backbone(state: Any) -> bool:
    """Whether ``state`` is the state dict of an ImageNet / CIFAR NASNet classifier rather than of a detector."""
    if not isinstance(state, dict) or not state:
        return False
    keys = [k for k in state if isinstance(k, str)]
    return any(_CLASSIFIER_MODULE.match(k) for k in keys) and not any(_DETECTOR_MODULE.match(k) for k in keys)


def _is_nasnet_key(key: str) -> bool:
    # num_batches_tracked exists for BN but not FrozenBN: a NORM change is not an architecture change.
    return ".nasnet." in key and not key.endswith("num_batches_tracked")


class NASNetDetectionCheckpointer(CrashSafeCheckpointer, DetectionCheckpointer):
    """``DetectionCheckpointer`` whose loads raise ``ValueError`` when a NASNet tensor of the model is missing
    from the checkpoint or has another shape there. Other keys (e.g. a box predictor for another class count)
    keep detectron2's log-only behaviour. Saves are the engine's atomic ones (:class:`CrashSafeCheckpointer`)."""

    loaded_path: str = ""  # the checkpoint resume_or_load resumed from
    loading_path: str = ""  # the file being loaded, for the error message (_load_model does not see it)
    role = "MODEL.WEIGHTS"  # how error messages call the file being loaded

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"MODEL.WEIGHTS {path} does not exist")
        # DetectionCheckpointer keeps per-load state that a failed load leaves set, failing every later load
        # (the fallback past a damaged checkpoint): each load runs on a shallow copy, which shares the model and
        # the checkpointables, so what it restores lands here and what it leaves behind is dropped with it.
        attempt = copy.copy(self)
        attempt.loading_path = path
        try:
            return super(NASNetDetectionCheckpointer, attempt).load(path, *args, **kwargs)
        except OSError as e:  # URLError, HTTPError, timeouts, refused connections of the download
            if "://" not in path:
                raise
            reason = getattr(e, "reason", None) or e.strerror or e
            raise BadInputError(f"{self.role} {path}: the download failed ({type(e).__name__}: {reason}); check the "
                                "URL and the network, or download the file and give its path") from None

    def write(self, path: Path, states: dict[str, Any], extra: dict[str, Any]) -> None:
        self.logger.info("Saving checkpoint to %s", path)
        super().write(path, states, extra)

    # ---- reads that name a damaged file and fall back ---------------------------------------------------
    # _load_file / _load_model are fvcore Checkpointer's documented extension points (detectron2's own
    # DetectionCheckpointer overrides the same two), not private state.
    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith((".pkl", ".pyth")):
            try:
                return super()._load_file(filename)
            except DamagedFileError:
                raise
            except Exception as e:  # pickle / format errors of detectron2's other formats
                raise DamagedFileError(f"{filename} is not a readable checkpoint: {type(e).__name__}: {e}") from e
        loaded = load_torch_file(filename, self.role)
        if not isinstance(loaded, dict):
            raise DamagedFileError(f"checkpoint {filename} holds a {type(loaded).__name__}, not a dict of "
                                   "weights ({'model': state_dict, ...} or a state dict)")
        if loaded.get("format") == BACKBONE_FORMAT or looks_like_backbone(loaded.get("model", loaded)):
            raise BadInputError(f"{self.role} {filename} looks like an ImageNet NASNet backbone (a classification "
                                "checkpoint), not a detector checkpoint; give it as MODEL.NASNET.WEIGHTS "
                                "(MODEL.WEIGHTS is a trained detector, e.g. output/model_final.pth, or empty)")
        if "model" not in loaded:
            loaded = {"model": loaded}
        if not isinstance(loaded["model"], dict):
            raise DamagedFileError(f"checkpoint {filename}: its 'model' entry is a {type(loaded['model']).__name__}, "
                                   "not a state dict")
        # detectron2 would stop at the first one with "Unsupported type found in checkpoint!", naming no file
        other = next((k for k, v in loaded["model"].items() if not isinstance(v, (torch.Tensor, np.ndarray))), None)
        if other is not None:
            kind = type(loaded["model"][other]).__name__
            raise DamagedFileError(f"checkpoint {filename}: weight {other!r} is a {kind}, not a tensor; "
                                   "expected a detector checkpoint ({'model': state_dict, ...} or a "
                                   "state dict)")
        return loaded

    def resume_candidates(self) -> list[str]:
        """Checkpoints in ``save_dir``, newest first (by modification time, then iteration): ``model_final.pth``,
        ``model_NNNNNNN.pth`` and the file ``last_checkpoint`` names. The newest is usually the tagged one; it is
        not when a kill came between a checkpoint's rename and the tag's."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        names = [n for n in os.listdir(self.save_dir) if n == FINAL_CHECKPOINT or _PERIODIC.match(n)]
        tagged = os.path.basename(self.get_checkpoint_file()) if self.has_tag() else ""
        if tagged and tagged not in names and os.path.isfile(os.path.join(self.save_dir, tagged)):
            names.append(tagged)

        def newest_first(name: str) -> tuple[float, int]:
            m = _PERIODIC.match(name)
            order = int(m.group(1)) if m else (1 << 62 if name == FINAL_CHECKPOINT else -1)
            return (-os.path.getmtime(os.path.join(self.save_dir, name)), -order)

        return [os.path.join(self.save_dir, n) for n in sorted(names, key=newest_first)]

    def has_tag(self) -> bool:
        return bool(self.save_dir) and os.path.isfile(os.path.join(self.save_dir, LAST_CHECKPOINT))

    def has_checkpoint(self) -> bool:
        """A ``last_checkpoint`` tag or any ``model_*.pth`` (a kill between the save and the tag)."""
        return bool(self.resume_candidates())

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """fvcore's ``resume_or_load``, but a damaged newest checkpoint is named and the next intact one used."""
        self.loaded_path = ""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        damaged = []
        for candidate in self.resume_candidates():
            try:
                self.role = "checkpoint"
                loaded = self.load(candidate)
                self.loaded_path = candidate
            except DamagedFileError as e:
                logger.warning("%s; resuming from an earlier checkpoint instead", e)
                damaged.append(candidate)
                continue
            finally:
                self.role = "MODEL.WEIGHTS"
            if damaged:
                logger.warning("resumed from %s (skipped damaged %s)", candidate, ", ".join(damaged))
            return loaded
        raise DamagedFileError(f"OUTPUT_DIR {self.save_dir}: every checkpoint is damaged ({', '.join(damaged)}); "
                               "delete them or rerun with --no-resume to start over")

    def _load_model(self, checkpoint: Any):
        incompatible = super()._load_model(checkpoint)
        shapes = [(k, a, b) for k, a, b in incompatible.incorrect_shapes if _is_nasnet_key(k)]
        # fvcore drops a reshaped tensor before loading, so it is also listed as missing: count it once.
        reshaped = {k for k, _, _ in shapes}
        missing = [k for k in incompatible.missing_keys if _is_nasnet_key(k) and k not in reshaped]
        if missing or shapes:
            unexpected = [k for k in incompatible.unexpected_keys if _is_nasnet_key(k)]
            lines = []
            if missing:
                lines.append(f"{len(missing)} NASNet tensors of the model are missing from the checkpoint, "
                             f"e.g. {', '.join(missing[:3])}")
            if shapes:
                lines.append(f"{len(shapes)} have another shape, e.g. " + ", ".join(
                    f"{k} {tuple(a)} in the checkpoint vs {tuple(b)} in the model" for k, a, b in shapes[:3]))
            if unexpected:
                lines.append(f"{len(unexpected)} NASNet tensors of the checkpoint are not in the model, "
                             f"e.g. {', '.join(unexpected[:3])}")
            where = self.loading_path or "the checkpoint"
            raise ValueError(f"MODEL.WEIGHTS {where} was trained with another NASNet than this config builds:\n  "
                             + "\n  ".join(lines) + "\nSet " + ", ".join(ARCH_KEYS)
                             + " to the values the checkpoint was trained with.")
        return incompatible
