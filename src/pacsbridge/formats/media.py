"""Media types and HTTP Accept lists, as DICOMweb content negotiation reads them.

See: RFC 9110 §8.3.1 (media type), §5.6.6 (parameters), §12.4.2 (quality values), §12.5.1 (Accept);
PS3.18 §8.7 (acceptable media types) and §8.3.3.1 (the `accept` query parameter).

1. Type, subtype and parameter names are case-insensitive and come back lower-cased; parameter values
   keep their case (a boundary is case-sensitive).
2. A comma inside a quoted string does not split an Accept list.
3. In an Accept list a malformed range or weight is skipped, never an error: a server may disregard
   what it cannot read (RFC 9110 §12.5.1), and one odd range must not sink a viewer's whole request.
4. q=0 means "not acceptable", so such ranges are dropped; the rest are sorted by q, ties keeping
   the client's order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pacsbridge.domain.errors import InvalidInput

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_TOKEN_RE = re.compile(_TOKEN)
# Clients write `type=application/dicom` unquoted; a "/" there is outside the grammar but unambiguous.
_LAX_TOKEN = r"[!#$%&'*+./^_`|~0-9A-Za-z-]+"
_QUOTED_STRING = r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*)"'
_MEDIA_TYPE_RE = re.compile(rf"[ \t]*({_TOKEN})/({_TOKEN})[ \t]*")
# One ";" and at most one parameter: RFC 9110 allows empty ones (";;", a trailing ";"). Spaces
# around "=" are not in the grammar either, but some clients send them.
_PARAMETER_RE = re.compile(rf";[ \t]*(?:({_TOKEN})[ \t]*=[ \t]*(?:({_LAX_TOKEN})|{_QUOTED_STRING})[ \t]*)?")
_QUOTED_PAIR_RE = re.compile(r"\\(.)")
# One element of a comma-separated list: quoted strings are taken whole, an unterminated one runs
# to the end of the header.
_LIST_ELEMENT_RE = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*(?:"|\\?$))+', re.DOTALL)
# RFC 9110 §12.4.2 allows at most three decimals; more is harmless, so it is not held against a client.
_QVALUE_RE = re.compile(r"0(?:\.[0-9]*)?|1(?:\.0*)?")
# An unescaped "+" in a URL query decodes to a space: `application/dicom json`.
_SPACED_SUBTYPE_RE = re.compile(rf"([ \t]*{_TOKEN}/{_TOKEN})((?: +{_TOKEN})+)(?=[ \t]*(?:;|$))")


def is_token(value: str) -> bool:
    """Whether `value` is an RFC 9110 token, which may stand in a header without quotes.

    See: RFC 9110 §5.6.2.
    """
    return _TOKEN_RE.fullmatch(value) is not None


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type (or one media range) into lower-cased `type/subtype` and its parameters.

    See: RFC 9110 §8.3.1, §5.6.6, §5.6.4 (quoted-string). Raises InvalidInput on anything else.
    """
    match = _MEDIA_TYPE_RE.match(value)
    if match is None:
        raise InvalidInput(f"malformed media type {value[:80]!r}: expected type/subtype")
    media_type = f"{match[1]}/{match[2]}".lower()
    params: dict[str, str] = {}
    pos = match.end()
    while pos < len(value):
        param = _PARAMETER_RE.match(value, pos)
        if param is None:
            raise InvalidInput(f"malformed media type {value[:80]!r}: unexpected text at position {pos}")
        pos = param.end()
        if param[1] is None:
            continue
        name = param[1].lower()
        if name in params:
            # Two boundaries (or two charsets) would let two readers see two different bodies.
            raise InvalidInput(f"malformed media type {value[:80]!r}: parameter {name!r} given twice")
        params[name] = param[2] if param[2] is not None else _QUOTED_PAIR_RE.sub(r"\1", param[3])
    return media_type, params


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept list: a media type or wildcard range, its parameters and its weight.

    See: RFC 9110 §12.5.1. `params` are (lower-cased name, value) pairs in the client's order,
    without `q`.
    """

    type: str
    subtype: str
    params: tuple[tuple[str, str], ...] = ()
    q: float = 1.0

    @property
    def media_type(self) -> str:
        return f"{self.type}/{self.subtype}"

    def param(self, name: str) -> str | None:
        """The value of parameter `name` (any case), or None."""
        name = name.lower()
        return next((value for key, value in self.params if key == name), None)

    def matches(self, media_type: str) -> bool:
        """Whether the concrete `media_type` falls in this range; its parameters, if any, are ignored."""
        type_, _, subtype = media_type.partition(";")[0].strip().lower().partition("/")
        if self.type == "*":
            return True
        return self.type == type_ and self.subtype in ("*", subtype)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The acceptable ranges of an Accept header, most preferred first; [] when absent or empty.

    See: RFC 9110 §12.5.1, PS3.18 §8.7. Malformed ranges are skipped (rule 3).
    """
    if not header:
        return []
    return _ranked(_list_elements(header))


def parse_accept_param(value: str) -> list[MediaRange]:
    """The `accept` query parameter: comma-separated media ranges with Accept's syntax.

    See: PS3.18 §8.3.3.1. A subtype whose "+" arrived as a space (`application/dicom json`) is
    repaired, since a media type never contains a space.
    """
    if not value:
        return []
    return _ranked(_restore_plus(element) for element in _list_elements(value))


def _list_elements(value: str) -> list[str]:
    return [match[0] for match in _LIST_ELEMENT_RE.finditer(value) if match[0].strip(" \t")]


def _restore_plus(element: str) -> str:
    match = _SPACED_SUBTYPE_RE.match(element)
    if match is None:
        return element
    return match[1] + "".join("+" + word for word in match[2].split()) + element[match.end() :]


def _ranked(elements: Iterable[str]) -> list[MediaRange]:
    ranges = [media_range for media_range in map(_media_range, elements) if media_range is not None]
    return sorted(ranges, key=lambda media_range: -media_range.q)


def _media_range(element: str) -> MediaRange | None:
    try:
        media_type, params = parse_content_type(element)
    except InvalidInput:
        return None
    type_, _, subtype = media_type.partition("/")
    if type_ == "*" and subtype != "*":
        return None
    q = 1.0
    weight = params.pop("q", None)
    if weight is not None:
        if _QVALUE_RE.fullmatch(weight) is None:
            return None
        q = float(weight)
        if q == 0:
            return None
    return MediaRange(type_, subtype, tuple(params.items()), q)
