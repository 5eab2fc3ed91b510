"""Reading a JSON input file so that every way it can be unreadable is one line naming the file and what was
expected: another text encoding (Latin-1, UTF-16 as Windows tools write it), invalid JSON, or nesting too deep for
the parser (a ``RecursionError`` otherwise)."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from nasnet_det.utils.errors import BadInputError

# byte-order marks of the encodings a JSON reader that assumes UTF-8 (pycocotools, json.load(open(...))) cannot read
_OTHER_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
               (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def read_utf8_text(path: str | Path, expected: str, error: type[ValueError] = BadInputError) -> str:
    """The text of ``path`` decoded as UTF-8 (a leading UTF-8 byte-order mark is allowed). Other encodings raise
    ``error`` naming the file, the encoding (UTF-16 / UTF-32 by their byte-order mark) or the first byte that is not
    UTF-8, and ``expected``."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        other = next((name for bom, name in _OTHER_BOMS if raw.startswith(bom)), None)
        if other is not None:
            found = f"{other} text"
        elif raw.count(b"\x00") * 4 > len(raw):  # UTF-16 without a byte-order mark: every other byte is 0
            found = "UTF-16 text (no byte-order mark)"
        else:
            found = f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        raise error(f"{path}: {found}; expected {expected} (save it as UTF-8)") from None


def load_json_text(text: str, where: str, expected: str, error: type[ValueError] = BadInputError) -> Any:
    """``json.loads(text)``; invalid or too deeply nested JSON raises ``error`` naming ``where`` and ``expected``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e}); expected {expected}") from None
    except RecursionError:  # the parser recurses once per nesting level
        raise error(f"{where}: the JSON is nested too deeply to read; expected {expected}") from None


def read_json_file(path: str | Path, expected: str, error: type[ValueError] = BadInputError) -> Any:
    """The JSON value in ``path`` (UTF-8). A file in another encoding, invalid JSON or JSON nested too deeply
    raises ``error`` with one line naming the file and ``expected`` (e.g. "a COCO detection file: an object with
    'images', 'annotations' and 'categories'"). A missing file is the ``FileNotFoundError`` of opening it."""
    return load_json_text(read_utf8_text(path, expected, error), str(path), expected, error)
