"""How every config file is read: plain YAML (``yaml.safe_load`` semantics), a key given twice in one mapping is
an error, and ``_BASE_`` files are followed with checks (a cycle, a too deep chain, a ``_BASE_`` that is not a
file name, a top level that is not a mapping, a base and a file that disagree on whether a key is a section).

A ``!!python/...`` tag would build a Python object, i.e. run code named by the file: it is refused with one
line naming the file and line, unless the environment variable :data:`ALLOW_UNSAFE_ENV` is ``1``; then the file
is loaded with PyYAML's unsafe loader and a WARNING says so. detectron2's Python configs (LazyConfig ``.py``
files) are code and no tool here reads them: they are refused with one line.

Merging follows fvcore's ``CfgNode.load_yaml_with_base`` (a ``_BASE_`` path is relative to the file naming it,
``~`` is expanded, a list of bases is merged in order, then the file's own keys), so a config reads the same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from nasnet_det.utils.errors import BadInputError

ALLOW_UNSAFE_ENV = "NASNET_DET_ALLOW_UNSAFE_YAML"
BASE_KEY = "_BASE_"
MAX_BASE_DEPTH = 64  # files in one _BASE_ chain; the deepest config of this project has 3
PYTHON_TAG = "tag:yaml.org,2002:python/"

logger = logging.getLogger(__name__)


def unsafe_yaml_allowed() -> bool:
    """Whether the user asked to load Python objects from config files (``NASNET_DET_ALLOW_UNSAFE_YAML=1``)."""
    return os.environ.get(ALLOW_UNSAFE_ENV, "").strip().lower() in ("1", "true", "yes")


def _short_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


def _walk(node: yaml.Node, path: str, seen: set[int]) -> Iterator[tuple[yaml.Node, str]]:
    """Every node of a composed document with its dotted key path (aliases visited once)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    yield node, path
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            yield from _walk(key_node, path, seen)
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            yield from _walk(value_node, f"{path}.{key}" if path else str(key), seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _walk(item, path, seen)


def _check_nodes(root: yaml.Node, filename: str) -> list[tuple[str, int]]:
    """Refuse a key given twice in one mapping (naming the key and both lines); return the Python tags found,
    with their lines."""
    python_tags: list[tuple[str, int]] = []
    for node, path in _walk(root, "", set()):
        if node.tag.startswith(PYTHON_TAG):
            python_tags.append((_short_tag(node.tag), node.start_mark.line + 1))
        if not isinstance(node, yaml.MappingNode):
            continue
        lines: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<" merge keys may repeat and are overridden by explicit keys, as YAML defines
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in lines:
                dotted = f"{path}.{key}" if path else key
                raise BadInputError(f"{filename}: key {dotted} is given twice (lines {lines[key]} and {line}); "
                                    "keep one of them")
            lines[key] = line
    return python_tags


class _PlainLoader(yaml.SafeLoader):
    """Reads a ``!!python/...`` node as the plain YAML under the tag: for readers that only need the file's keys
    (the pipeline hashing a stage's files), so that the Python objects are built only by the tool that uses them."""


def _construct_plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_PlainLoader.add_multi_constructor(PYTHON_TAG, _construct_plain)


def read_yaml(filename: str, python_objects: bool = True) -> Any:
    """One YAML file as plain data (``None`` when empty); see the module docstring for what is refused.
    ``python_objects=False`` (with the switch on) reads ``!!python/...`` nodes as plain YAML, running nothing."""
    if filename.endswith(".py"):
        raise BadInputError(f"{filename}: a Python config (detectron2 LazyConfig) is code, and this project's tools "
                            "read YAML configs only; use a .yaml config (see configs/)")
    try:
        root = _compose(filename)
    except UnicodeDecodeError as e:
        raise BadInputError(f"{filename} is not a text file in UTF-8 ({e.reason} at byte {e.start}); expected a "
                            "YAML config") from None
    if root is None:
        return None
    python_tags = _check_nodes(root, filename)
    if not python_tags:
        return _construct(yaml.SafeLoader, root)
    tag, line = python_tags[0]
    if not unsafe_yaml_allowed():
        raise BadInputError(f"{filename} line {line}: the tag {tag} would build a Python object (run code named "
                            f"by the file); configs are read as plain YAML. Remove the tag, or set "
                            f"{ALLOW_UNSAFE_ENV}=1 to load a file you trust")
    if not python_objects:
        return _construct(_PlainLoader, root)
    logger.warning("%s: loading Python objects (%s at line %d) because %s=1 is set; this runs code named by the "
                   "file: use it only with files you trust", filename, tag, line, ALLOW_UNSAFE_ENV)
    return _construct(yaml.UnsafeLoader, root)


def _compose(filename: str) -> yaml.Node | None:
    """The document's nodes (syntax errors are YAMLErrors naming the file and line), nothing constructed yet."""
    with _open(filename) as stream:
        loader = yaml.SafeLoader(stream)
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()


def _construct(loader_class: type, root: yaml.Node) -> Any:
    """The data of a composed (and checked) document, built by ``loader_class``'s constructors."""
    loader = loader_class("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _open(filename: str):
    if filename.startswith(("https://", "http://")):  # fvcore reads such _BASE_ files too
        from iopath.common.file_io import g_pathmgr

        return g_pathmgr.open(filename, "r")
    return open(filename, encoding="utf-8")


@dataclass
class ConfigTree:
    """A config file merged with its ``_BASE_`` files (``merged``, without ``_BASE_``), and every file of the
    tree with its own keys, bases first (the order they are merged in; a base used twice is listed twice)."""

    merged: dict[str, Any]
    files: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def load_config_tree(filename: str | os.PathLike, python_objects: bool = True) -> ConfigTree:
    """``filename`` and its ``_BASE_`` files, read with :func:`read_yaml` and merged as fvcore merges them;
    :class:`BadInputError` / ``FileNotFoundError`` / ``yaml.YAMLError`` with one line naming the file(s)."""
    tree = ConfigTree({}, [])
    tree.merged = _load(str(filename), (), tree.files, python_objects)[0]
    return tree


def _load(filename: str, chain: tuple[str, ...], files: list[tuple[str, dict[str, Any]]],
          python_objects: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """``filename`` merged with its bases, and which file set each dotted key of it."""
    data = read_yaml(filename, python_objects)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInputError(f"{filename}: expected a mapping of config keys (KEY: value lines) at the top level, "
                            f"got a {type(data).__name__}")
    bases = _base_files(filename, data.pop(BASE_KEY)) if BASE_KEY in data else []
    chain = (*chain, _identity(filename))
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for shown, base in bases:
        if _identity(base) in chain:
            names = " -> ".join([*(os.path.basename(c) for c in chain), os.path.basename(base)])
            raise BadInputError(f"{filename}: _BASE_ {shown!r} forms a cycle ({names}); a config cannot be its "
                                "own base")
        if len(chain) >= MAX_BASE_DEPTH:
            raise BadInputError(f"{filename}: _BASE_ {shown!r} makes a chain of more than {MAX_BASE_DEPTH} files "
                                f"(from {chain[0]}); expected at most {MAX_BASE_DEPTH}")
        base_data, base_origin = _load(base, chain, files, python_objects)
        _merge_into(base_data, base_origin, merged, origin)
    files.append((filename, data))
    _merge_into(data, {key: filename for key in _dotted_keys(data)}, merged, origin)
    return merged, origin


def _identity(filename: str) -> str:
    return filename if "://" in filename else os.path.realpath(filename)


def _base_files(filename: str, value: Any) -> list[tuple[str, str]]:
    """``(as written, path)`` of each base ``value`` names, resolved as fvcore resolves them."""
    names = value if isinstance(value, list) else [value]
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise BadInputError(f"{filename}: _BASE_ must be a YAML file name (relative to this file's folder) or a "
                            f"list of them, got {value!r}")
    resolved = []
    for name in names:
        path = os.path.expanduser(name) if name.startswith("~") else name
        if not path.startswith(("/", "https://", "http://")):
            path = os.path.join(os.path.dirname(filename), path)
        if "://" not in path:
            if os.path.isdir(path):
                raise BadInputError(f"{filename}: _BASE_ {name!r} is a folder ({path}); expected a YAML file")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{filename}: _BASE_ {name!r} does not exist ({path})")
        resolved.append((name, path))
    return resolved


def _dotted_keys(data: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in data.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _dotted_keys(value, f"{prefix}{key}.")


def _merge_into(src: dict[str, Any], src_origin: dict[str, str], dst: dict[str, Any], dst_origin: dict[str, str],
                prefix: str = "") -> None:
    """fvcore's merge: ``src`` wins; a section of ``src`` is merged into the same section of ``dst``."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key in dst:
            if not isinstance(dst[key], dict):
                raise BadInputError(f"{src_origin.get(dotted, '?')}: {dotted} is a section of keys there, but "
                                    f"{dst_origin.get(dotted, '?')} sets {dotted} to the value {dst[key]!r}; a "
                                    "config and its _BASE_ files must agree on what a key is")
            _merge_into(value, src_origin, dst[key], dst_origin, f"{dotted}.")
            continue
        dst[key] = value
        for k in [k for k in dst_origin if k == dotted or k.startswith(f"{dotted}.")]:
            del dst_origin[k]
        dst_origin.update({k: v for k, v in src_origin.items() if k == dotted or k.startswith(f"{dotted}.")})
