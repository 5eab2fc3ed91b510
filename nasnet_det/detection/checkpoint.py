"""detectron2's ``DetectionCheckpointer`` that refuses detector checkpoints of another NASNet.

The stock checkpointer only logs missing and shape-mismatched keys, so ``MODEL.WEIGHTS`` trained with another
genotype or N@F would "load" into a mostly random NASNet and evaluate or draw garbage without a word.
"""

from __future__ import annotations

from typing import Any

from detectron2.checkpoint import DetectionCheckpointer

from nasnet_det.models.arch import CLASSIFIER_FIELDS, COMPARED_FIELDS

# Config keys that decide the NASNet's tensors (those of the architecture record, and the layout); the
# message names them.
ARCH_KEYS = ("MODEL.BACKBONE.NAME",
             *[key for name, key in COMPARED_FIELDS.items()
               if key.startswith("MODEL.NASNET.") and name not in CLASSIFIER_FIELDS],
             "MODEL.NASNET.OUT_FEATURES")


def _is_nasnet_key(key: str) -> bool:
    # num_batches_tracked exists for BN but not FrozenBN: a NORM change is not an architecture change.
    return ".nasnet." in key and not key.endswith("num_batches_tracked")


class NASNetDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose loads raise ``ValueError`` when a NASNet tensor of the model is missing
    from the checkpoint or has another shape there. Other keys (e.g. a box predictor for another class count)
    keep detectron2's log-only behaviour."""

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._loading_path = path  # for the error message; _load_model does not see the path
        return super().load(path, *args, **kwargs)

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
            where = getattr(self, "_loading_path", "") or "the checkpoint"
            raise ValueError(f"MODEL.WEIGHTS {where} was trained with another NASNet than this config builds:\n  "
                             + "\n  ".join(lines) + "\nSet " + ", ".join(ARCH_KEYS)
                             + " to the values the checkpoint was trained with.")
        return incompatible
