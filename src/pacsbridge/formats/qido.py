"""QIDO-RS query parameters to and from the domain ``Query``.

See: PS3.18 §8.3.4 (query parameters), PS3.4 §C.2.2.2 (matching types).

Rules:
1. A match key is an 8-hex tag (any case) or a keyword; ``Seq.Attr`` (either form) reaches one level
   into a sequence, and all keys into one sequence form one SEQUENCE match. A bare sequence key with
   an empty value is universal. Each attribute may be a match key once (§8.3.4.1).
2. The kind follows from value and VR: empty -> universal; UI -> UID list (``,`` or ``\\``);
   DA/TM/DT with ``-`` -> range; ``*``/``?`` -> wildcard on string VRs only, a lone ``*`` universal;
   anything else -> single value, checked against its VR (dates, times, numbers).
3. Private and unknown tags have VR UN and are single-value keys; binary VRs cannot be matched.
4. ``limit``/``offset``/``fuzzymatching``/``includefield`` are recognised in any case; an invalid
   value is ``InvalidInput`` (400). Names that are neither these nor attributes are ignored
   (§8.3, listed in ``extra["ignored"]``).
5. Errors name the parameter, never its value: query values may be patient data.
6. A '+' of a UTC offset that a client left unencoded arrives as a space (form decoding); it is
   put back in DT values and TimezoneOffsetFromUTC.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence

from pydicom.datadict import dictionary_VR, tag_for_keyword

from ..domain.errors import InvalidInput
from ..domain.model import Level
from ..domain.query import NUMERIC_VRS, RANGE_VRS, WILDCARD_VRS, Match, MatchKind, Query

TIMEZONE_OFFSET_TAG = "00080201"
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
INTEGER_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "SV", "UV"})

_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UNSIGNED = re.compile(r"[0-9]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
_TIME = re.compile(r"([0-9]{2})(?::?([0-9]{2})(?::?([0-9]{2})(?:\.[0-9]{1,6})?)?)?")
_DATETIME = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.[0-9]{1,6})?)?)?)?)?)?"
    r"([+-][0-9]{4})?"
)
_OFFSET = re.compile(r"[+-]([0-9]{2})([0-9]{2})")
_KNOWN_VRS = frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL",
    "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US",
    "UT", "UV",
})


# --- parsing -----------------------------------------------------------------------------------

def parse_qido(
    params: Sequence[tuple[str, str]],
    level: Level,
    *,
    default_limit: int | None = None,
    max_limit: int = 1000,
) -> Query:
    """The Query a QIDO-RS request's (already percent-decoded) parameters ask for.

    See: PS3.18 §8.3.4. Raises ``InvalidInput`` for an invalid value of a known parameter.
    """
    builder = _QueryBuilder()
    for name, value in params:
        lowered = name.lower()
        if lowered in ("limit", "offset", "fuzzymatching"):
            builder.single_param(lowered, value)
        elif lowered == "includefield":
            builder.includefield(value)
        else:
            builder.attribute(name, value)

    extra: dict[str, object] = {}
    limit = default_limit if default_limit is None else min(default_limit, max_limit)
    if "limit" in builder.singles:
        limit = _non_negative("limit", builder.singles["limit"])
        if limit > max_limit:
            limit = max_limit
            extra["limit_capped"] = True
    offset = _non_negative("offset", builder.singles["offset"]) if "offset" in builder.singles else 0
    fuzzy = False
    if "fuzzymatching" in builder.singles:
        flag = builder.singles["fuzzymatching"].strip().lower()
        if flag not in ("true", "false"):
            raise InvalidInput("fuzzymatching must be true or false")
        fuzzy = flag == "true"
    if builder.timezone_offset is not None:
        extra["timezone_offset"] = builder.timezone_offset
    if builder.ignored:
        extra["ignored"] = builder.ignored
    return Query(
        level=level,
        matches=builder.matches(),
        includefields=tuple(builder.includefields),
        include_all=builder.include_all,
        limit=limit,
        offset=offset,
        fuzzy=fuzzy,
        extra=extra,
    )


def resolve_attribute(name: str) -> tuple[str, str] | None:
    """``(tag, vr)`` of a keyword or 8-hex tag, or None if it names no attribute.

    Private and unknown tags are UN; an ambiguous dictionary VR (``US or SS``) becomes its first.
    """
    if _HEX_TAG.fullmatch(name):
        tag = int(name, 16)
    else:
        found = tag_for_keyword(name)
        if found is None:
            return None
        tag = found
    if (tag >> 16) & 1:
        return f"{tag:08X}", "UN"
    try:
        vr = dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return f"{tag:08X}", "UN"
    return f"{tag:08X}", vr if vr in _KNOWN_VRS else "UN"


class _QueryBuilder:
    def __init__(self) -> None:
        self.singles: dict[str, str] = {}
        self.includefields: list[str] = []
        self.include_all = False
        self.timezone_offset: str | None = None
        self.ignored: list[str] = []
        # top-level tag -> its Match, or (for sequences) the item matches collected so far
        self.keys: dict[str, Match | dict[str, Match]] = {}

    def single_param(self, name: str, value: str) -> None:
        if name in self.singles:
            raise InvalidInput(f"{name} is given more than once")
        self.singles[name] = value

    def includefield(self, value: str) -> None:
        for raw in value.split(","):
            field = raw.strip()
            if not field:
                continue
            if field.lower() == "all":
                self.include_all = True
                continue
            resolved = [resolve_attribute(part) for part in field.split(".")]
            if any(r is None for r in resolved):
                raise InvalidInput("includefield names an unknown attribute")
            top = resolved[0]
            assert top is not None
            if top[0] not in self.includefields:
                self.includefields.append(top[0])

    def attribute(self, name: str, value: str) -> None:
        parts = name.split(".")
        resolved = [resolve_attribute(part) for part in parts]
        if any(r is None for r in resolved):
            self.ignored.append(name)  # PS3.18 §8.3: unknown parameters are ignored
            return
        if len(resolved) > 2:
            raise InvalidInput(f"{name}: matching deeper than one sequence level is not supported")
        (tag, vr), *inner = [r for r in resolved if r is not None]
        if not inner:
            if tag == TIMEZONE_OFFSET_TAG:
                self.timezone(name, value)
                return
            self.top_level(name, tag, vr, value)
            return
        if vr != "SQ":
            raise InvalidInput(f"{name}: {parts[0]} is not a sequence")
        inner_tag, inner_vr = inner[0]
        entry = self.keys.setdefault(tag, {})
        if isinstance(entry, Match):
            if entry.kind is not MatchKind.UNIVERSAL:
                raise InvalidInput(f"{name}: {parts[0]} is given more than once")
            entry = self.keys[tag] = {}  # a bare universal key gives way to item keys
        if inner_tag in entry:
            raise InvalidInput(f"{name} is given more than once")
        entry[inner_tag] = _match(name, inner_tag, inner_vr, value)

    def top_level(self, name: str, tag: str, vr: str, value: str) -> None:
        if vr == "SQ":
            if value:
                raise InvalidInput(f"{name}: a sequence is matched through its item attributes")
            if tag in self.keys:
                if isinstance(self.keys[tag], dict):
                    return  # item keys already say more than a bare universal key
                raise InvalidInput(f"{name} is given more than once")
            self.keys[tag] = Match(tag=tag, vr=vr, kind=MatchKind.UNIVERSAL)
            return
        if tag in self.keys:
            raise InvalidInput(f"{name} is given more than once")
        self.keys[tag] = _match(name, tag, vr, value)

    def timezone(self, name: str, value: str) -> None:
        if self.timezone_offset is not None:
            raise InvalidInput(f"{name} is given more than once")
        value = _restore_plus(value).strip()
        if not value:
            return
        if not _valid_offset(value):
            raise InvalidInput(f"{name} must be +HHMM or -HHMM")
        self.timezone_offset = value

    def matches(self) -> tuple[Match, ...]:
        out: list[Match] = []
        for tag, entry in self.keys.items():
            if isinstance(entry, Match):
                out.append(entry)
            else:
                out.append(Match(tag=tag, vr="SQ", kind=MatchKind.SEQUENCE, items=tuple(entry.values())))
        return tuple(out)


def _match(name: str, tag: str, vr: str, value: str) -> Match:
    """One (non-sequence-path) match key; ``name`` is the parameter, for error messages."""
    if value == "":
        return Match(tag=tag, vr=vr, kind=MatchKind.UNIVERSAL)
    if vr == "SQ":
        raise InvalidInput(f"{name}: a sequence is matched through its item attributes")
    if vr == "UI":
        uids = tuple(uid.strip() for uid in re.split(r"[,\\]", value))
        if not all(len(uid) <= 64 and _UID.fullmatch(uid) for uid in uids):
            raise InvalidInput(f"{name} must be a comma-separated list of UIDs")
        return Match(tag=tag, vr=vr, kind=MatchKind.UID_LIST, values=uids)
    wildcard = "*" in value or "?" in value
    if vr in RANGE_VRS:
        if wildcard:
            raise InvalidInput(f"{name}: wildcards are not allowed for VR {vr}")
        value = value.strip()
        return _date_time_match(name, tag, vr, value.replace(" ", "+") if vr == "DT" else value)
    if wildcard:
        if vr not in WILDCARD_VRS:
            raise InvalidInput(f"{name}: wildcards are not allowed for VR {vr}")
        if not value.strip("*"):
            return Match(tag=tag, vr=vr, kind=MatchKind.UNIVERSAL)
        return Match(tag=tag, vr=vr, kind=MatchKind.WILDCARD, value=value)
    if vr in NUMERIC_VRS:
        value = value.strip()
        pattern = _INTEGER if vr in INTEGER_VRS else _DECIMAL
        if not pattern.fullmatch(value):
            raise InvalidInput(f"{name} must be a number")
    elif vr in BINARY_VRS:
        raise InvalidInput(f"{name}: attributes of VR {vr} cannot be matched by value")
    elif vr == "AT":
        value = value.strip().upper()
        if not _HEX_TAG.fullmatch(value):
            raise InvalidInput(f"{name} must be a tag of 8 hex digits")
    return Match(tag=tag, vr=vr, kind=MatchKind.SINGLE, value=value)


def _date_time_match(name: str, tag: str, vr: str, value: str) -> Match:
    valid = _VALIDATORS[vr]
    if valid(value):
        return Match(tag=tag, vr=vr, kind=MatchKind.SINGLE, value=value)
    # DT values may themselves hold a '-' (a UTC offset): take the first split that gives two
    # well-formed (or open) bounds.
    for i, ch in enumerate(value):
        if ch != "-":
            continue
        low, high = value[:i], value[i + 1:]
        if (not low or valid(low)) and (not high or valid(high)):
            if not low and not high:
                return Match(tag=tag, vr=vr, kind=MatchKind.UNIVERSAL)
            return Match(tag=tag, vr=vr, kind=MatchKind.RANGE, low=low or None, high=high or None)
    raise InvalidInput(f"{name} must be a {vr} value or range")


def _valid_date(text: str) -> bool:
    found = _DATE.fullmatch(text)
    if not found:
        return False
    year, month, day = (int(g) for g in found.groups())
    return 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year or 1, month)[1]


def _valid_time(text: str) -> bool:
    found = _TIME.fullmatch(text)
    return found is not None and _clock_ok(found.group(1), found.group(2), found.group(3))


def _clock_ok(hour: str | None, minute: str | None, second: str | None) -> bool:
    return (
        (hour is None or int(hour) < 24)
        and (minute is None or int(minute) < 60)
        and (second is None or int(second) <= 60)  # 60: leap second (PS3.5 Table 6.2-1)
    )


def _valid_datetime(text: str) -> bool:
    found = _DATETIME.fullmatch(text)
    if not found:
        return False
    year, month, day, hour, minute, second, offset = found.groups()
    if month is not None and not 1 <= int(month) <= 12:
        return False
    if day is not None and not 1 <= int(day) <= calendar.monthrange(int(year) or 1, int(month))[1]:
        return False
    return _clock_ok(hour, minute, second) and (offset is None or _valid_offset(offset))


def _valid_offset(text: str) -> bool:
    found = _OFFSET.fullmatch(text)
    if not found:
        return False
    hours, minutes = int(found.group(1)), int(found.group(2))
    return minutes < 60 and (hours < 14 or (hours == 14 and minutes == 0))


_VALIDATORS = {"DA": _valid_date, "TM": _valid_time, "DT": _valid_datetime}


def _restore_plus(value: str) -> str:
    """A ``+HHMM`` offset sent unencoded arrives as `` HHMM`` (form decoding turns '+' into ' ')."""
    return "+" + value[1:] if len(value) == 5 and value[0] == " " and value[1:].isdigit() else value


def _non_negative(name: str, value: str) -> int:
    value = value.strip()
    if not _UNSIGNED.fullmatch(value):
        raise InvalidInput(f"{name} must be a non-negative integer")
    return int(value)


# --- encoding ----------------------------------------------------------------------------------

def encode_qido(query: Query) -> list[tuple[str, str]]:
    """QIDO-RS parameters for a Query, tags in 8-hex form; ``parse_qido`` reads them back.

    See: PS3.18 §8.3.4. ``includefield`` is one comma-separated parameter, because some servers
    keep only the last of repeated parameters.
    """
    params: list[tuple[str, str]] = []
    for match in query.matches:
        if match.kind is MatchKind.SEQUENCE and match.items:
            params.extend((f"{match.tag}.{item.tag}", _encode_value(item)) for item in match.items)
        else:
            params.append((match.tag, _encode_value(match)))
    timezone_offset = query.extra.get("timezone_offset")
    if isinstance(timezone_offset, str):
        params.append((TIMEZONE_OFFSET_TAG, timezone_offset))
    fields = (["all"] if query.include_all else []) + list(query.includefields)
    if fields:
        params.append(("includefield", ",".join(fields)))
    if query.fuzzy:
        params.append(("fuzzymatching", "true"))
    if query.limit is not None:
        params.append(("limit", str(query.limit)))
    if query.offset:
        params.append(("offset", str(query.offset)))
    return params


def _encode_value(match: Match) -> str:
    kind = match.kind
    if kind is MatchKind.SINGLE or kind is MatchKind.WILDCARD:
        return match.value
    if kind is MatchKind.RANGE:
        return f"{match.low or ''}-{match.high or ''}"
    if kind is MatchKind.UID_LIST:
        return ",".join(match.values)
    if kind is MatchKind.SEQUENCE and match.items:
        raise ValueError("QIDO-RS reaches only one level into a sequence")
    return ""
