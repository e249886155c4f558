"""Source paths (what a rule reads) and target paths (where it writes), parsed once at load.

See: PS3.18 Annex F (DICOM JSON), FHIRPath §5 (collections flatten; ``[n]`` indexes the collection).

Rules:
1. A source path reads a list of values. ``$name`` first reads the named document ``name``
   (``$this`` is the current source, ``$root`` the source given to the engine); otherwise the
   path starts at the current source.
2. ``dicom`` flavour: a component that starts with an upper-case letter is a DICOM keyword, 8 hex
   digits a tag; it reads the element's ``Value`` (PN: the ``Alphabetic`` group), and a sequence
   gives its first item unless a selector says otherwise (``Seq[*]``, ``Seq[2]``). Selectors apply
   per element. Any other component (``instances``) reads a plain key, as in the ``fhir`` flavour.
3. ``fhir`` flavour: a component reads a key of every current object; lists are flattened into
   the collection, and selectors apply to the whole collection: ``[n]`` (negative from the end),
   ``[*]``, and ``[sub.path=value]`` keeping the items where the sub-path has that value.
4. Values that are None, "", [] or {} count as absent and are dropped from what a path reads.
5. A target path writes a copy of the value: ``name`` sets (as an intermediate: the object, or a sequence's first item,
   created when missing), ``name[+]`` appends a new element, ``name[-1]`` addresses the last one
   (appending when there is none), ``name[]`` (last component only) extends a list with a list.
6. ``dicom`` targets are keywords; values are written as DICOM JSON with the dictionary's VR
   (PN as ``Alphabetic``, IS/US/... as numbers, SQ from keyword -> value objects).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, tag_for_keyword

Flavour = Literal["dicom", "fhir"]
Mode = Literal["set", "append", "list", "last"]

_DOCUMENT = re.compile(r"[a-z_][a-z0-9_]*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RAW_KEY = re.compile(r"[a-z_][A-Za-z0-9_]*")
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_STEP = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_INDEX = re.compile(r"-?[0-9]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
INT_VRS = frozenset({"IS", "SL", "SS", "SV", "UL", "US", "UV"})
FLOAT_VRS = frozenset({"DS", "FD", "FL"})
WRITABLE_VRS = TEXT_VRS | INT_VRS | FLOAT_VRS | {"AT", "PN", "SQ"}


class PathError(ValueError):
    """A path that cannot be parsed, or names an unknown keyword; the message says which part."""


class WriteError(ValueError):
    """A value cannot be written where the target path says; the message never quotes the value."""


def is_empty(value: Any) -> bool:
    """No value: None, "", [] or {}."""
    return value is None or value == "" or value == [] or value == {}


def collapse(values: list[Any]) -> Any:
    """What a transform gets for one path: None, the single value, or the list of several."""
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def dicom_keyword(name: str) -> tuple[str, str]:
    """(tag as 8 hex digits, VR) of a keyword or tag; PathError when pydicom's dictionary lacks it."""
    if _HEX_TAG.fullmatch(name):
        tag = int(name, 16)
    else:
        found = tag_for_keyword(name)
        if found is None:
            raise PathError(f"unknown DICOM keyword {name}")
        tag = found
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise PathError(f"tag {tag:08X} is not in the DICOM dictionary") from None
    return f"{tag:08X}", vr.split(" or ")[0]


def _split(text: str) -> list[str]:
    """Components of a dotted path; dots inside brackets belong to a selector."""
    parts, current, depth = [], "", 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise PathError("unbalanced ]")
        if char == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise PathError("unbalanced [")
    parts.append(current)
    if any(not p for p in parts):
        raise PathError("empty component")
    return parts


# --- source paths ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Filter:
    """A ``[sub.path=value]`` selector."""

    path: SourcePath
    value: str


Selector = int | Literal["*"] | Filter


@dataclass(frozen=True)
class Step:
    """One component: a JSON key, or (``element``) a DICOM element by its tag."""

    key: str
    element: bool = False
    vr: str | None = None
    selectors: tuple[Selector, ...] = ()

    def read(self, values: list[Any]) -> list[Any]:
        out: list[Any] = []
        for value in values:
            if not isinstance(value, dict):
                continue
            found = value.get(self.key)
            if self.element:
                out += self.element_values(found)
            elif isinstance(found, list):
                out += found
            elif found is not None:
                out.append(found)
        return out if self.element else _select(out, self.selectors)

    def element_values(self, element: Any) -> list[Any]:
        if not isinstance(element, dict) or not isinstance(element.get("Value"), list):
            return []
        vr = element.get("vr", self.vr)
        items: list[Any] = element["Value"]
        if vr == "PN":
            items = [i.get("Alphabetic") if isinstance(i, dict) else i for i in items]
        if self.selectors:
            return _select(items, self.selectors)
        return items[:1] if vr == "SQ" else items


def _text_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _select(values: list[Any], selectors: tuple[Selector, ...]) -> list[Any]:
    for selector in selectors:
        if isinstance(selector, Filter):
            values = [v for v in values
                      if any(_text_of(x) == selector.value for x in selector.path.read(v, {}))]
        elif isinstance(selector, int):
            values = [values[selector]] if -len(values) <= selector < len(values) else []
    return values


@dataclass(frozen=True)
class SourcePath:
    """A parsed source path; ``document`` None reads the current source."""

    text: str
    document: str | None
    steps: tuple[Step, ...]

    def read(self, source: Any, documents: dict[str, Any]) -> list[Any]:
        """Every non-empty value the path reaches, in document order."""
        values = [source] if self.document is None else [documents[d] for d in (self.document,) if d in documents]
        for step in self.steps:
            values = step.read(values)
        return [v for v in values if not is_empty(v)]


def parse_source(text: str, flavour: Flavour) -> SourcePath:
    """A source path of the given flavour; raises PathError."""
    if not text.strip():
        raise PathError("empty path")
    parts = _split(text)
    document = None
    if parts[0].startswith("$"):
        name = parts.pop(0)[1:]
        if not _DOCUMENT.fullmatch(name):
            raise PathError(f"bad document name ${name}")
        document = None if name == "this" else name
    return SourcePath(text, document, tuple(_source_step(p, flavour) for p in parts))


def _source_step(part: str, flavour: Flavour) -> Step:
    match = _STEP.fullmatch(part)
    if not match:
        raise PathError(f"malformed component {part}")
    name = match[1]
    selectors = tuple(_selector(s, flavour) for s in re.findall(r"\[([^\]]*)\]", match[2]))
    if flavour == "dicom" and (name[:1].isupper() or _HEX_TAG.fullmatch(name)):
        tag, vr = dicom_keyword(name)
        return Step(tag, True, vr, selectors)
    if not (_RAW_KEY if flavour == "dicom" else _KEY).fullmatch(name):
        raise PathError(f"malformed component {part}")
    return Step(name, False, None, selectors)


def _selector(text: str, flavour: Flavour) -> Selector:
    if text == "*":
        return "*"
    if _INDEX.fullmatch(text):
        return int(text)
    if "=" in text:
        sub, value = text.split("=", 1)
        path = parse_source(sub, flavour)
        if path.document is not None or sub.startswith("$"):
            raise PathError(f"a filter reads the item, not a document: [{text}]")
        return Filter(path, value)
    raise PathError(f"bad selector [{text}]")


# --- target paths ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TargetStep:
    """One component of a target: a key (fhir) or a tag with its VR (dicom)."""

    key: str
    mode: Mode
    vr: str | None = None


@dataclass(frozen=True)
class TargetPath:
    """A parsed target path."""

    text: str
    flavour: Flavour
    steps: tuple[TargetStep, ...]

    def write(self, out: dict[str, Any], value: Any) -> None:
        """Write a non-empty value; raises WriteError."""
        if isinstance(value, dict | list):
            value = copy.deepcopy(value)  # the output shares nothing with the documents
        obj = out
        for step in self.steps[:-1]:
            obj = self._child(obj, step)
        last = self.steps[-1]
        if self.flavour == "dicom":
            _write_element(obj, last, value)
        else:
            _put(obj, last, value)

    def write_empty(self, out: dict[str, Any]) -> None:
        """Write a DICOM element without a value (a Type 2 attribute that is empty)."""
        obj = out
        for step in self.steps[:-1]:
            obj = self._child(obj, step)
        last = self.steps[-1]
        obj[last.key] = {"vr": last.vr}

    def _child(self, obj: dict[str, Any], step: TargetStep) -> dict[str, Any]:
        if self.flavour == "dicom":
            element = obj.setdefault(step.key, {"vr": "SQ"})
            items = element.setdefault("Value", [])
        elif step.mode == "set":
            child = obj.setdefault(step.key, {})
            if not isinstance(child, dict):
                raise WriteError(f"{step.key} holds a list: address it with [+] or [-1]")
            return child
        else:
            items = _list(obj, step.key)
        if step.mode == "append" or not items:
            items.append({})
        child = items[0] if step.mode == "set" else items[-1]
        if not isinstance(child, dict):
            raise WriteError(f"the last element of {step.key} is not an object")
        return child


def parse_target(text: str, flavour: Flavour) -> TargetPath:
    """A target path of the given flavour; raises PathError."""
    if not text.strip():
        raise PathError("empty path")
    parts = _split(text)
    steps: list[TargetStep] = []
    for n, part in enumerate(parts):
        match = re.fullmatch(r"([^\[\]]+)(\[\+\]|\[\]|\[-1\])?", part)
        if not match:
            raise PathError(f"malformed component {part} (use name, name[+], name[-1] or name[])")
        name, suffix = match[1], match[2] or ""
        mode: Mode = {"": "set", "[+]": "append", "[]": "list", "[-1]": "last"}[suffix]  # type: ignore[assignment]
        last = n == len(parts) - 1
        if mode == "list" and not last:
            raise PathError(f"{part}: [] writes a whole list, so only the last component may have it")
        if flavour == "fhir":
            if not _KEY.fullmatch(name):
                raise PathError(f"malformed component {part}")
            steps.append(TargetStep(name, mode))
            continue
        tag, vr = dicom_keyword(name)
        if not last and vr != "SQ":
            raise PathError(f"{name} is not a sequence (VR {vr}), so nothing can be written inside it")
        if vr not in WRITABLE_VRS:
            raise PathError(f"{name} has VR {vr}, which mappings cannot write")
        steps.append(TargetStep(tag, mode, vr))
    return TargetPath(text, flavour, tuple(steps))


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    found = obj.setdefault(key, [])
    if not isinstance(found, list):
        raise WriteError(f"{key} holds a single value, not a list")
    return found


def _put(obj: dict[str, Any], step: TargetStep, value: Any) -> None:
    if step.mode == "set":
        obj[step.key] = value
        return
    items = _list(obj, step.key)
    if step.mode == "append":
        items.append(value)
    elif step.mode == "list":
        items.extend(value if isinstance(value, list) else [value])
    elif items:
        items[-1] = value
    else:
        items.append(value)


def _write_element(obj: dict[str, Any], step: TargetStep, value: Any) -> None:
    vr = step.vr or "UN"
    values = value if isinstance(value, list) else [value]
    new = [sequence_item(v) for v in values] if vr == "SQ" else [dicom_value(vr, v) for v in values]
    old = (obj.get(step.key) or {}).get("Value") or []
    if step.mode == "append":
        new = old + new
    elif step.mode == "last":
        new = old[:-1] + new
    obj[step.key] = {"vr": vr, "Value": new}


def dicom_value(vr: str, value: Any) -> Any:
    """One value of an element of this VR, as DICOM JSON holds it."""
    if isinstance(value, dict | list) and not (vr == "PN" and isinstance(value, dict)):
        raise WriteError(f"a {vr} element takes text or numbers, not a structure")
    if isinstance(value, bool):
        raise WriteError(f"a {vr} element does not take true/false")
    if vr == "PN":
        return value if isinstance(value, dict) else {"Alphabetic": str(value)}
    if vr in INT_VRS:
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            return int(value)
        if isinstance(value, int):
            return value
        raise WriteError(f"a {vr} element takes an integer")
    if vr in FLOAT_VRS:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int | float):
            return value
        raise WriteError(f"a {vr} element takes a number")
    return str(value)


def sequence_item(value: Any) -> dict[str, Any]:
    """A sequence item from keyword -> value (nested objects for sequences); DICOM JSON passes through."""
    if not isinstance(value, dict):
        raise WriteError("a sequence item must be an object of keyword: value")
    item: dict[str, Any] = {}
    for name, content in value.items():
        if is_empty(content):
            continue
        if _HEX_TAG.fullmatch(name) and isinstance(content, dict) and "vr" in content:
            item[name.upper()] = content
            continue
        try:
            tag, vr = dicom_keyword(name)
        except PathError as exc:
            raise WriteError(str(exc)) from None
        values = content if isinstance(content, list) else [content]
        converted = [sequence_item(v) for v in values] if vr == "SQ" else [dicom_value(vr, v) for v in values]
        item[tag] = {"vr": vr, "Value": converted}
    return item


def sorted_dicom(obj: dict[str, Any]) -> dict[str, Any]:
    """DICOM JSON with its tags (and those of every sequence item) in ascending order (PS3.18 F.2)."""
    out: dict[str, Any] = {}
    for tag in sorted(obj):
        element = obj[tag]
        if isinstance(element, dict) and element.get("vr") == "SQ" and "Value" in element:
            element = {"vr": "SQ", "Value": [sorted_dicom(i) for i in element["Value"]]}
        out[tag] = element
    return out
