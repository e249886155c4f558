"""Read mapping files: YAML with the line of every key, checked and compiled, one file or a folder.

See: docs/mappings.md. The only module of the package that touches files.

Rules:
1. YAML is read with the safe loader, except that dates stay text and only ``true``/``false``
   are booleans (YAML 1.1 would read ``NO``, a country, as false and ``2024-01-31`` as a date).
2. Every error reads ``<file>:<line>: <field>: <what is wrong>``; a file reports all its errors at
   once, and :func:`check_mappings` those of every file under a folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..domain.errors import MappingError
from .engine import Mapping, compile_mapping
from .matching import MatchingRules, compile_matching
from .matching import validate as validate_matching
from .schema import Loc, Where, field_name, validate

M = TypeVar("M")  # a file's validated model
T = TypeVar("T")  # what it compiles to

MATCHING_FOLDER = "matching"  # files under a folder of this name are matching files (docs/matching.md)


class _Loader(yaml.SafeLoader):
    """SafeLoader without timestamps and with YAML 1.2 booleans."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _read(path: Path, label: str) -> tuple[Any, Where, list[str]]:
    """The file's data, where each key and item is written, and problems found while reading."""
    lines: dict[Loc, int] = {}
    errors: list[str] = []
    try:
        loader = _Loader(path.read_text(encoding="utf-8"))
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        return None, Where(label), [f"{label}:{line}: (yaml): {exc.problem or exc.context}"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return None, Where(label), [f"{label}:1: (file): cannot be read ({type(exc).__name__})"]
    if node is not None:
        _walk(node, (), lines, errors, label)
    return data, Where(label, lines), errors


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], errors: list[str], label: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            at = (*loc, key)
            if key in seen:
                errors.append(f"{label}:{key_node.start_mark.line + 1}: {field_name(at)}: duplicate key")
            seen.add(key)
            lines[at] = key_node.start_mark.line + 1
            _walk(value_node, at, lines, errors, label)
    elif isinstance(node, yaml.SequenceNode):
        for n, item in enumerate(node.value):
            lines[(*loc, n)] = item.start_mark.line + 1
            _walk(item, (*loc, n), lines, errors, label)


def _compiled(path: Path, validate_as: Callable[[Any, Where], tuple[M | None, list[str]]],
              compile_as: Callable[[M, Where, list[str]], T | None]) -> tuple[T | None, list[str]]:
    """A file read, checked against its model and compiled; None with every error otherwise."""
    data, where, errors = _read(path, str(path))
    if errors:
        return None, errors
    model, errors = validate_as(data, where)
    if model is None:
        return None, errors
    return compile_as(model, where, errors), errors


def _load(path: Path) -> tuple[Mapping | None, list[str]]:
    return _compiled(path, validate, lambda model, where, errors: compile_mapping(model, path, where, errors))


def load_mapping(path: Path) -> Mapping:
    """One mapping file, compiled; MappingError listing every problem (one per line) otherwise."""
    mapping, errors = _load(path)
    if mapping is None:
        raise MappingError("\n".join(errors))
    return mapping


def _load_matching(path: Path) -> tuple[MatchingRules | None, list[str]]:
    return _compiled(path, validate_matching, compile_matching)


def load_matching(path: Path) -> MatchingRules:
    """One matching file (``mappings/matching/*.yaml``), compiled; MappingError listing every problem."""
    rules, errors = _load_matching(path)
    if rules is None:
        raise MappingError("\n".join(errors))
    return rules


def load_folder(folder: Path) -> list[Mapping]:
    """Every ``*.yaml`` of a folder in file-name order, the order :func:`choose` tries them in."""
    mappings, errors = _load_folder(folder)
    if errors:
        raise MappingError("\n".join(errors))
    return mappings


def _load_folder(folder: Path) -> tuple[list[Mapping], list[str]]:
    mappings: list[Mapping] = []
    errors: list[str] = []
    names: dict[str, Path] = {}
    for path in sorted(folder.glob("*.yaml"), key=lambda p: p.name):
        mapping, problems = _load(path)
        errors += problems
        if mapping is None:
            continue
        if mapping.name in names:
            errors.append(f"{path}:1: name: {mapping.name} is already the name of {names[mapping.name].name}")
        names[mapping.name] = path
        mappings.append(mapping)
    return mappings, errors


def check_mappings(root: Path) -> list[str]:
    """Every error of every mapping or matching file under ``root`` (an empty list when all are valid)."""
    if not root.is_dir():
        return [f"{root}: not a folder"]
    folders = sorted({p.parent for p in root.rglob("*.yaml")})
    errors: list[str] = []
    for folder in folders:
        if folder.name == MATCHING_FOLDER:
            errors += [e for path in sorted(folder.glob("*.yaml")) for e in _load_matching(path)[1]]
        else:
            errors += _load_folder(folder)[1]
    return errors
