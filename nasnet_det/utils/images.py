"""Image files to correct 8-bit RGB, whatever their mode.

PIL's ``convert("RGB")`` clips the values of 16-bit and 32-bit modes (``I;16``, ``I``, ``F``) to 0..255 instead of
scaling them: a 16-bit PNG becomes an almost white image, and a detector or classifier runs on that without a
word. Here 16-bit values are scaled by 1/257 (65535 -> 255, exact for an 8-bit image stored as 16-bit), and the
modes PIL converts correctly (grey, palette, CMYK, with or without alpha) go through PIL. Alpha is dropped, as
``convert("RGB")`` and detectron2's ``read_image`` drop it. A mode whose values cannot be mapped to 0..255 without
guessing is refused with one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from nasnet_det.utils.errors import BadInputError

# modes whose conversion to RGB in PIL is exact for 8-bit data (alpha dropped)
PIL_CONVERTS = ("RGB", "L", "1", "P", "PA", "LA", "RGBA", "RGBX", "CMYK", "YCbCr")
# premultiplied alpha: PIL converts these to the plain-alpha mode first
PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}


def _to_8bit(values: np.ndarray, mode: str, name: str) -> np.ndarray:
    """Grey values of a 16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) image as uint8."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise BadInputError(f"{name}: the {mode} image holds NaN or infinite values; expected an 8-bit or 16-bit "
                            "image")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        scale = 1 / 257
    elif low >= 0 and high <= 1 and mode == "F":
        scale = 255.0  # a float image in 0..1
    elif low >= 0 and high <= 255:
        scale = 1.0  # 8-bit values stored wider (PIL's own reading of I / F)
    elif low >= 0 and high <= 65535:
        scale = 1 / 257  # 16-bit values (a 16-bit TIFF or PNG opened as I)
    else:
        raise BadInputError(f"{name}: the {mode} image has values {low:g}..{high:g}; expected values in 0..255 "
                            "(8-bit), 0..65535 (16-bit) or, for a float image, 0..1")
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def to_rgb8(image: Image.Image, name: str) -> Image.Image:
    """``image`` as an 8-bit RGB image (``name``: the file, for the error of a mode that is not supported)."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_8bit(np.asarray(image), mode, name), "L").convert("RGB")
    if mode in PREMULTIPLIED:
        image, mode = image.convert(PREMULTIPLIED[mode]), PREMULTIPLIED[mode]
    if mode not in PIL_CONVERTS:
        raise BadInputError(f"{name}: image mode {mode} is not supported; expected a grey, RGB, palette or CMYK "
                            "image (8 or 16 bits per channel, alpha allowed)")
    return image if mode == "RGB" else image.convert("RGB")


def read_rgb8(path: str | Path, exif_orientation: bool = True) -> Image.Image:
    """The image file ``path`` as 8-bit RGB (see the module docstring), turned upright by its EXIF orientation
    as detectron2's ``read_image`` does. A file PIL cannot decode raises PIL's error; a mode that cannot be
    mapped to 8 bits, ``BadInputError`` naming the file."""
    with Image.open(path) as image:
        image.load()  # decode now: a truncated file fails here, not later
        if exif_orientation:
            image = ImageOps.exif_transpose(image)
        return to_rgb8(image, str(path))
