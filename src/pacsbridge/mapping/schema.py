"""The shape of a mapping file, checked by pydantic before the engine compiles it.

See: docs/mappings.md (the reference of every key). Meaning (paths, transforms, conditions) is
checked by the engine's compiler; here only keys and types, with errors located by :class:`Where`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

Loc = tuple[str | int, ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RuleModel(_Strict):
    """One rule as written; ``model_fields_set`` tells a ``value: null`` from no ``value``."""

    target: StrictStr
    from_: StrictStr | list[StrictStr] | None = Field(default=None, alias="from")
    value: Any = None
    transform: StrictStr | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    per_value: StrictBool = False
    when: dict[str, Any] | None = None
    default: Any = None
    required: StrictBool = False
    each: StrictStr | None = None
    rules: list[RuleModel] | None = None


class SectionModel(_Strict):
    """A named sub-output: a list of objects, one per item of ``each`` (one object without it)."""

    each: StrictStr | None = None
    rules: list[RuleModel]


class MappingModel(_Strict):
    """A whole mapping file."""

    name: StrictStr = Field(pattern=r"^[a-z0-9-]+$")
    version: StrictInt
    source: Literal["dicom", "fhir"]
    target: Literal["dicom", "fhir"]
    description: StrictStr = ""
    when: dict[str, Any] | None = None
    rules: list[RuleModel] = Field(default_factory=list)
    sections: dict[str, SectionModel] = Field(default_factory=dict)


def field_name(loc: Loc) -> str:
    """``('rules', 3, 'from', 1)`` as ``rules[3].from[1]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(file)"


@dataclass(frozen=True)
class Where:
    """A file and the line of every key and list item in it, for messages ``file:line: field: what``."""

    file: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def line(self, loc: Loc) -> int:
        """The line of ``loc``, or of its nearest written parent (a missing key has no line)."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.lines:
                return self.lines[loc[:n]]
        return 1

    def error(self, loc: Loc, what: str) -> str:
        return f"{self.file}:{self.line(loc)}: {field_name(loc)}: {what}"

    def known(self, loc: Loc) -> Loc:
        """The longest prefix of ``loc`` that is written in the file."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.lines:
                return loc[:n]
        return ()


M = TypeVar("M", bound=BaseModel)


def validate_as(model: type[M], data: Any, where: Where) -> tuple[M | None, list[str]]:
    """A file's ``model`` (a mapping or a matching file), or the located messages of everything wrong
    with its shape."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        errors: dict[Loc, str] = {}
        for error in exc.errors():
            loc: Loc = tuple(error["loc"])
            known = where.known(loc)
            if error["type"] == "missing" and len(loc) == len(known) + 1:
                known = loc  # name the missing key itself
            what = _MESSAGES.get(error["type"], error["msg"])
            # A union (``from``: text or list) fails once per member: its first complaint is enough.
            errors.setdefault(known, where.error(known, what))
        return None, list(errors.values())


_MESSAGES = {"extra_forbidden": "unknown key", "missing": "required key missing"}


def validate(data: Any, where: Where) -> tuple[MappingModel | None, list[str]]:
    """A mapping file's model, or the located messages of everything wrong with its shape."""
    return validate_as(MappingModel, data, where)
