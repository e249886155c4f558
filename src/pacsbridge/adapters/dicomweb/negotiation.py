"""Choose a media type and transfer syntax for a WADO-RS, QIDO-RS or rendered response.

See: PS3.18 §8.7 (media type and transfer syntax negotiation), §8.7.3.3.2 (compressed media types).

Rules:
1. The ``accept`` query parameter is looked at first, then the Accept header in q order (§8.7.8).
2. ``transfer-syntax=*`` means "as stored", except that Implicit VR Little Endian and Explicit VR Big
   Endian are never sent on the web: those become Explicit VR Little Endian (§8.7.3.5.2).
3. A range whose transfer syntax cannot be produced for every target is skipped; when none is left the
   answer is 406, never a silent substitute.
4. A missing Accept header counts as ``*/*`` unless the operator asked for the strict 2020 reading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ...domain.errors import InvalidInput, Unsupported
from ...domain.model import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from ...formats.media import MediaRange, parse_accept, parse_accept_param

ANY_TS = "*"

# Compressed bulk/frame media types and their default transfer syntax (PS3.18 Table 8.7.3-5 "D").
COMPRESSED_MEDIA: dict[str, tuple[str, frozenset[str]]] = {
    "image/jpeg": ("1.2.840.10008.1.2.4.70", frozenset({
        "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70"})),
    "image/dicom-rle": ("1.2.840.10008.1.2.5", frozenset({"1.2.840.10008.1.2.5"})),
    "image/x-dicom-rle": ("1.2.840.10008.1.2.5", frozenset({"1.2.840.10008.1.2.5"})),
    "image/jls": ("1.2.840.10008.1.2.4.80", frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})),
    "image/x-jls": ("1.2.840.10008.1.2.4.80", frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})),
    "image/jp2": ("1.2.840.10008.1.2.4.90", frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})),
    "image/jpx": ("1.2.840.10008.1.2.4.92", frozenset({"1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"})),
}
MEDIA_FOR_TS: dict[str, str] = {
    ts: media for media, (_default, syntaxes) in COMPRESSED_MEDIA.items()
    if not media.startswith("image/x-") for ts in syntaxes
}
NOT_ON_THE_WEB = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})


@dataclass(frozen=True)
class Choice:
    """What to send: the (part) media type, and the transfer syntax (``*`` = each as stored)."""

    media_type: str
    transfer_syntax: str | None
    multipart: bool


def ranges(accept_header: str | None, accept_param: str | None, strict: bool) -> list[MediaRange]:
    """The acceptable media ranges in order of preference."""
    found: list[MediaRange] = []
    if accept_param:
        found.extend(parse_accept_param(accept_param))
    found.extend(parse_accept(accept_header))
    if not found:
        if accept_header and accept_header.strip():
            raise Unsupported("nothing in the Accept header is acceptable (every range has q=0 or is malformed)")
        if strict:
            raise Unsupported("an Accept header is required (PS3.18 §8.7.5)")
        found = parse_accept("*/*")
    return found


def web_syntax(stored: str) -> str:
    """The transfer syntax an instance is sent in when any is acceptable."""
    return EXPLICIT_VR_LITTLE_ENDIAN if stored in NOT_ON_THE_WEB else stored


def _mr_type(mr: MediaRange) -> str | None:
    """The part type of a multipart range; a wildcard part type (``type="*/*"``, which
    dicomweb-client sends) counts as none, i.e. the resource's default."""
    value = mr.param("type")
    if not value or value.strip() in ("*/*", "*"):
        return None
    return value.lower()


def choose_instances(
    accept: list[MediaRange], stored: Iterable[str], can_make: Callable[[str, str], bool], single_allowed: bool
) -> Choice:
    """Study/series/instance retrieval: DICOM Part 10 instances (PS3.18 §10.4.1.1.1)."""
    stored_set = set(stored)
    for mr in accept:
        media = mr.media_type
        if media in ("multipart/related", "multipart/*", "*/*"):
            part_type = _mr_type(mr) or "application/dicom"
            if part_type != "application/dicom":
                continue
            multipart = True
        elif media == "application/dicom":
            if not single_allowed:
                continue
            multipart = False
        else:
            continue
        wanted = mr.param("transfer-syntax") or EXPLICIT_VR_LITTLE_ENDIAN
        if wanted == ANY_TS or all(s == wanted or can_make(s, wanted) for s in stored_set):
            return Choice("application/dicom", wanted, multipart)
    raise Unsupported("none of the acceptable media types or transfer syntaxes can be produced")


def choose_frames(
    accept: list[MediaRange], stored: str, can_make: Callable[[str, str], bool]
) -> Choice:
    """Frames and pixel bulk data (PS3.18 §10.4.1.1.3; §8.7.3.3)."""
    for mr in accept:
        media = mr.media_type
        part_type = _mr_type(mr) if media == "multipart/related" else media
        if media in ("*/*", "multipart/*") or (media == "multipart/related" and part_type is None):
            part_type = "application/octet-stream"
        wanted = mr.param("transfer-syntax")
        if part_type == "application/octet-stream":
            if wanted in (None, ""):
                wanted = EXPLICIT_VR_LITTLE_ENDIAN
            if wanted == ANY_TS:
                return Choice("application/octet-stream", web_syntax(stored), True)
            if wanted == stored or can_make(stored, wanted):
                return Choice("application/octet-stream", wanted, True)
            continue
        if part_type in COMPRESSED_MEDIA:
            default, allowed = COMPRESSED_MEDIA[part_type]
            if wanted in (None, "", ANY_TS):
                wanted = stored if stored in allowed else default
            if wanted in allowed and (wanted == stored or can_make(stored, wanted)):
                return Choice(part_type.replace("image/x-", "image/"), wanted, True)
    raise Unsupported("the frames cannot be produced in any acceptable media type or transfer syntax")


def choose_json(accept: list[MediaRange]) -> str:
    """QIDO-RS results and metadata: DICOM JSON (the XML form is not offered)."""
    for mr in accept:
        if mr.media_type in ("application/dicom+json", "application/json", "*/*", "application/*"):
            return "application/dicom+json"
    raise Unsupported("only application/dicom+json is offered for this resource")


RENDERED = ("image/jpeg", "image/png", "image/gif")


def choose_rendered(accept: list[MediaRange], dicom_requested_error: bool = True) -> str:
    """Rendered and thumbnail resources (PS3.18 §10.4.1.1.4)."""
    for mr in accept:
        if mr.media_type in RENDERED:
            return mr.media_type
        if mr.media_type in ("*/*", "image/*"):
            return "image/jpeg"
        if dicom_requested_error and mr.media_type in ("application/dicom", "multipart/related"):
            raise InvalidInput("DICOM media types cannot be asked of a rendered resource")
    raise Unsupported("rendered images are offered as image/jpeg, image/png and image/gif")
