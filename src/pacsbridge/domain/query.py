"""A search, independent of the door it came through, and the matching rules it obeys.

See: PS3.4 §C.2.2.2 (attribute matching), PS3.18 §8.3.4 (QIDO-RS query parameters).

Rules:
1. A match key names an attribute (or a sequence and one of its item attributes) and one of five kinds:
   single value, wildcard (``*``/``?`` on string VRs), range (DA/TM/DT), UID list, universal (empty).
2. Single value matching is exact and case-sensitive, except PN: case- and accent-insensitive
   (``Müller`` matches ``MULLER``), stated in the conformance statement.
3. A multi-valued attribute matches if any of its values matches; a sequence matches if any item
   matches every key in it.
4. Ranges are inclusive; a partial upper bound means the end of that period (``-2024`` is up to the last
   instant of 2024).
5. ``fuzzy`` PN matching of a value without wildcards: every word of the query must start a
   component of the name (``fuzzymatching=true&PatientName=jo do`` finds ``Doe^John``); a value with
   wildcards is matched as a wildcard pattern either way.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .model import DicomJson, Level

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})
NUMERIC_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})


class MatchKind(enum.Enum):
    SINGLE = "single"
    WILDCARD = "wildcard"
    RANGE = "range"
    UID_LIST = "uid-list"
    UNIVERSAL = "universal"
    SEQUENCE = "sequence"


@dataclass(frozen=True)
class Match:
    """One match key. ``tag`` is 8 upper-case hex digits; ``items`` holds the keys of a sequence item."""

    tag: str
    vr: str
    kind: MatchKind
    value: str = ""
    values: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None
    items: tuple[Match, ...] = ()


@dataclass(frozen=True)
class Query:
    """A search at one level with its match keys, return keys and paging."""

    level: Level
    matches: tuple[Match, ...] = ()
    includefields: tuple[str, ...] = ()
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def match_for(self, tag: str) -> Match | None:
        for match in self.matches:
            if match.tag == tag:
                return match
        return None


# --- value normalisation (shared with index columns, so SQL and Python agree) -----------------

# Letters that Unicode does not decompose into base letter + accent.
_UNDECOMPOSABLE = str.maketrans({
    "ß": "SS", "Ł": "L", "ł": "L", "Ø": "O", "ø": "O", "Đ": "D", "đ": "D", "Æ": "AE", "æ": "AE",
    "Œ": "OE", "œ": "OE", "Þ": "TH", "þ": "TH", "ı": "I", "Ħ": "H", "ħ": "H",
})


def fold_person_name(text: str) -> str:
    """Case- and accent-insensitive form of a PN value: ``Müller^Jörg`` -> ``MULLER^JORG``.

    Index columns store this form, so changing it needs a migration that recomputes them.
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_UNDECOMPOSABLE))
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return stripped.upper().strip()


def normalize_date(text: str) -> str:
    """DA as ``YYYYMMDD``; accepts the old ``YYYY.MM.DD`` form too."""
    return text.strip().replace(".", "").replace("-", "")


def _pad_time(text: str, ceil: bool) -> str:
    text = text.strip().replace(":", "")
    main, _, frac = text.partition(".")
    if not re.fullmatch(r"\d{2}(\d{2}){0,2}", main):
        raise ValueError(f"not a DICOM time: {text!r}")
    fill = "5959" if ceil else "0000"
    main = main + fill[len(main) - 2:]
    frac = (frac + ("9" if ceil else "0") * 6)[:6] if (frac or ceil) else "000000"
    return f"{main}.{frac}"


def normalize_time(text: str, ceil: bool = False) -> str:
    """TM as ``HHMMSS.FFFFFF``; a partial value is padded to its start (or end when ``ceil``)."""
    return _pad_time(text, ceil)


def normalize_datetime(text: str, ceil: bool = False) -> str:
    """DT as ``YYYYMMDDHHMMSS.FFFFFF`` (UTC offset dropped); partial values padded like TM."""
    text = re.sub(r"[+-]\d{4}$", "", text.strip())
    date, time = text[:8], text[8:]
    if not re.fullmatch(r"\d{4}(\d{2}){0,2}", date):
        raise ValueError(f"not a DICOM date-time: {text!r}")
    date = date + ("1231" if ceil else "0101")[len(date) - 4:]
    if ceil and len(date) == 8 and len(text) <= 6:
        date = date[:6] + "31"  # end of month: string comparison only needs an upper bound
    return date + _pad_time(time or ("23" if ceil else "00"), ceil)


def normalize_for(vr: str, text: str, ceil: bool = False) -> str:
    """The comparable form of one value for index columns and range matching."""
    if vr == "DA":
        return normalize_date(text)
    if vr == "TM":
        return normalize_time(text, ceil)
    if vr == "DT":
        return normalize_datetime(text, ceil)
    if vr == "PN":
        return fold_person_name(text)
    return text


def wildcard_regex(pattern: str, fold: bool) -> re.Pattern[str]:
    """Translate DICOM ``*``/``?`` into an anchored regular expression."""
    if fold:
        pattern = fold_person_name(pattern)
    parts = ["." if ch == "?" else ".*" if ch == "*" else re.escape(ch) for ch in pattern]
    return re.compile("^" + "".join(parts) + "$", re.DOTALL)


# --- matching one DICOM JSON object ------------------------------------------------------------

def _strings(element: dict[str, Any]) -> list[str]:
    values = element.get("Value") or []
    out: list[str] = []
    for value in values:
        if value is None:
            continue
        if isinstance(value, dict):  # PN: the Alphabetic group, as the index column holds it
            alphabetic = value.get("Alphabetic")
            if alphabetic:
                out.append(str(alphabetic))
        else:
            out.append(str(value))
    return out


def _match_value(match: Match, value: str, fuzzy: bool) -> bool:
    kind = match.kind
    if kind is MatchKind.UID_LIST:
        return value in match.values
    if kind is MatchKind.RANGE:
        try:
            lowered = normalize_for(match.vr, value)
            upper = normalize_for(match.vr, value, ceil=True)
        except ValueError:
            return False
        if match.low is not None and upper < normalize_for(match.vr, match.low):
            return False
        return not (match.high is not None and lowered > normalize_for(match.vr, match.high, ceil=True))
    if match.vr == "PN":
        if fuzzy and kind is MatchKind.SINGLE:
            return fuzzy_person_name(match.value, value)
        return wildcard_regex(match.value, fold=True).match(fold_person_name(value)) is not None
    if kind is MatchKind.WILDCARD:
        return wildcard_regex(match.value, fold=False).match(value) is not None
    if match.vr in NUMERIC_VRS:
        try:
            return float(value) == float(match.value)
        except ValueError:
            return False
    if match.vr in RANGE_VRS:
        try:
            return normalize_for(match.vr, value) == normalize_for(match.vr, match.value)
        except ValueError:
            return False
    return value == match.value


def fuzzy_person_name(query: str, value: str) -> bool:
    """Every word of the query starts some component of the name (case/accent-insensitive)."""
    components = name_tokens(value).strip("^").split("^")
    return all(any(c.startswith(w) for c in components) for w in fuzzy_words(query))


def matches(match: Match, attributes: DicomJson, fuzzy: bool = False) -> bool:
    """Does one DICOM JSON object satisfy one match key? (PS3.4 §C.2.2.2)"""
    if match.kind is MatchKind.UNIVERSAL:
        return True
    element = attributes.get(match.tag)
    if match.kind is MatchKind.SEQUENCE:
        if all(m.kind is MatchKind.UNIVERSAL for m in match.items):
            return True  # only return keys inside: universal, even where the sequence is absent
        items: Sequence[DicomJson] = (element or {}).get("Value") or []
        return any(all(matches(m, item, fuzzy) for m in match.items) for item in items)
    if element is None:
        return False
    values = _strings(element)
    if not values:
        # PS3.4 C.2.2.2.1: a zero-length attribute does not match a non-empty key.
        return False
    return any(_match_value(match, v, fuzzy) for v in values)


def matches_all(query_matches: Sequence[Match], attributes: DicomJson, fuzzy: bool = False) -> bool:
    return all(matches(m, attributes, fuzzy) for m in query_matches)


def name_tokens(text: str) -> str:
    """The components of a folded person name as ``^A^B^C^``, for fuzzy prefix matching in SQL."""
    components = [c for c in re.split(r"[\s^=]+", fold_person_name(text)) if c]
    return "^" + "^".join(components) + "^" if components else ""


def fuzzy_words(text: str) -> list[str]:
    """The words of a fuzzy PN query value."""
    return [w for w in re.split(r"[\s^,*?=]+", fold_person_name(text)) if w]


def split_for_remote(query: Query, *, uid_lists_anywhere: bool, fuzzy: bool) -> tuple[Query, tuple[Match, ...]]:
    """The part of a query a remote archive can run itself, and the match keys left to check here.

    A list of values is standard only for UIDs (PS3.4 C.2.2.2.2), so a list on another attribute (the
    patient context's PatientIDs) becomes a single value when it has one value and is checked here
    otherwise; so is a fuzzy person name for a remote without fuzzy matching. When keys are left, the
    remote query has no paging (the caller pages what passes) and returns the attributes they test.
    """
    remote: list[Match] = []
    local: list[Match] = []
    converted: set[str] = set()
    for match in query.matches:
        if match.kind is MatchKind.UID_LIST and match.vr != "UI" and not uid_lists_anywhere:
            value = match.values[0] if len(match.values) == 1 else ""
            # One key per attribute on the wire: another non-universal key on it leaves this one to us.
            alone = not any(m.tag == match.tag and m is not match and m.kind is not MatchKind.UNIVERSAL
                            for m in query.matches)
            if value and alone and not any(ch in value for ch in "*?\\,"):
                remote.append(Match(match.tag, match.vr, MatchKind.SINGLE, value=value))
                converted.add(match.tag)
            else:
                local.append(match)
        elif query.fuzzy and not fuzzy and match.vr == "PN" and match.kind is MatchKind.SINGLE:
            local.append(match)
        else:
            remote.append(match)
    # A universal key on an attribute now matched by value would be a second, contrary key on the wire.
    remote = [m for m in remote if not (m.kind is MatchKind.UNIVERSAL and m.tag in converted)]
    returned = query.includefields + tuple(sorted(converted - set(query.includefields)))
    if not local:
        return Query(query.level, tuple(remote), returned, query.include_all, query.limit, query.offset,
                     query.fuzzy and fuzzy, query.extra), ()
    fields = returned + tuple(m.tag for m in local if m.tag not in returned)
    return Query(query.level, tuple(remote), fields, query.include_all, None, 0, False, query.extra), tuple(local)
