"""Comparators of matching files: each scores a request's values against a study's in [0, 1].

See: docs/matching.md; PS3.5 §6.2 (PN components ``family^given^middle^prefix^suffix``, DA, TM).

Rules:
1. A comparator gets the non-empty values each side's path read and returns a score in [0, 1];
   identical values score exactly 1.0.
2. Text is folded once: case, accents, punctuation and spaces are ignored; German umlauts fold so
   that ü, ue and u agree (Müller = Mueller = MULLER = Muller), ß is ss.
3. Person names compare family with family and given (with middle) with given by Jaro-Winkler;
   swapped family/given costs a small penalty; a double family name or an extra middle name agrees
   with one of its parts at a penalty; a name without ``^`` is compared as unordered tokens.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from rapidfuzz import fuzz
from rapidfuzz.distance import JaroWinkler

SWAP_PENALTY = 0.95
PART_PENALTY = 0.92
ONE_PART_PENALTY = 0.85
UNORDERED_PENALTY = 0.9
FAMILY_WEIGHT = 0.55
GIVEN_WEIGHT = 0.45

_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue"})
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
_FOLDED_UMLAUT = re.compile(r"([aou])e")
_CODE_VALUE, _CODING_SCHEME = "00080100", "00080102"


def fold_words(text: str) -> list[str]:
    """Lower-case ASCII words of a text: accents dropped, umlauts folded, punctuation a separator."""
    text = text.casefold().translate(_UMLAUTS)  # casefold makes ß ss
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return [_FOLDED_UMLAUT.sub(r"\1", w) for w in _NOT_ALNUM.split(text) if w]


def normalize_text(text: str) -> str:
    """Case, accent, space and punctuation-insensitive form of a text (``normalized`` comparator)."""
    return "".join(fold_words(text))


def text_of(value: Any) -> str:
    """A value as text for a review page: codes as ``scheme:value``, names as written."""
    if isinstance(value, dict):
        code = _code(value)
        return f"{code[0]}:{code[1]}" if code else ""
    return str(value).strip()


# --- exact, normalized, contains, code_set --------------------------------------------------

def exact(request: Sequence[Any], study: Sequence[Any]) -> float:
    """1 when a request value equals a study value (surrounding DICOM padding ignored)."""
    return 1.0 if {text_of(v) for v in request} & {text_of(v) for v in study} else 0.0


def normalized(request: Sequence[Any], study: Sequence[Any]) -> float:
    """1 when a request value equals a study value once both are folded (:func:`normalize_text`)."""
    ours = {normalize_text(text_of(v)) for v in request} - {""}
    return 1.0 if ours & {normalize_text(text_of(v)) for v in study} else 0.0


def contains(request: Sequence[Any], study: Sequence[Any]) -> float:
    """1 when every request value is among the study's values (Modality in ModalitiesInStudy)."""
    theirs = {normalize_text(text_of(v)) for v in study}
    return 1.0 if all(normalize_text(text_of(v)) in theirs for v in request) else 0.0


def _code(item: dict[str, Any]) -> tuple[str, str] | None:
    def first(tag: str) -> str:
        element = item.get(tag)
        values = element.get("Value") if isinstance(element, dict) else None
        return str(values[0]).strip() if isinstance(values, list) and values else ""

    value = first(_CODE_VALUE)
    return (first(_CODING_SCHEME).upper(), value) if value else None


def codes(values: Sequence[Any]) -> set[tuple[str, str]]:
    """(scheme, value) of every code sequence item among the values."""
    return {c for v in values if isinstance(v, dict) and (c := _code(v)) is not None}


def code_set(request: Sequence[Any], study: Sequence[Any]) -> float:
    """1 when the two sides share a code (scheme and value)."""
    return 1.0 if codes(request) & codes(study) else 0.0


# --- dates and times ------------------------------------------------------------------------

def parse_date(value: Any) -> date | None:
    """A DA value (``YYYYMMDD``, or the old ``YYYY.MM.DD``); None when it is not a date."""
    digits = re.sub(r"[.\-]", "", str(value).strip())
    if not re.fullmatch(r"[0-9]{8}", digits):
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def _transposed(a: date, b: date) -> bool:
    """Day and month typed the wrong way round (2024-03-04 for 2024-04-03)."""
    return a.year == b.year and a.month == b.day and a.day == b.month and a != b


def date_score(request: Sequence[Any], study: Sequence[Any], window_days: int, partial: float) -> float:
    """1 when the dates are at most ``window_days`` apart, ``partial`` for a day/month transposition."""
    ours = [d for d in map(parse_date, request) if d]
    theirs = [d for d in map(parse_date, study) if d]
    best = 0.0
    for a in ours:
        for b in theirs:
            if abs((a - b).days) <= window_days:
                return 1.0
            if partial and _transposed(a, b):
                best = partial
    return best


def parse_time(value: Any) -> timedelta | None:
    """A TM value (``HHMMSS.FFFFFF``, any precision, or the old ``HH:MM:SS``) as time of day."""
    text = str(value).strip().replace(":", "")
    match = re.fullmatch(r"([0-9]{2})([0-9]{2})?([0-9]{2})?(?:\.[0-9]*)?", text)
    if not match:
        return None
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    if hours > 23 or minutes > 59 or seconds > 60:
        return None
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def moment(day: Any, time: Any) -> datetime | None:
    """A date and a time of day as one moment; None when either is not readable."""
    d, t = parse_date(day), parse_time(time)
    if d is None or t is None:
        return None
    return datetime(d.year, d.month, d.day) + t


def time_window(request: datetime, study: datetime, minutes: int) -> float:
    """1 when the two moments are at most ``minutes`` apart."""
    return 1.0 if abs((request - study).total_seconds()) <= minutes * 60 else 0.0


# --- person names ---------------------------------------------------------------------------

def name_parts(value: str) -> tuple[list[str], list[str], bool]:
    """(family words, given and middle words, ordered) of a PN value; unordered without ``^``."""
    group = value.split("=")[0]
    if "^" not in group:
        return fold_words(group), [], False
    components = [*group.split("^"), "", ""]
    return fold_words(components[0]), fold_words(components[1] + " " + components[2]), True


def _similarity(a: list[str], b: list[str]) -> float | None:
    """Jaro-Winkler of two word lists; one shared part (double name, middle name) at a penalty."""
    if not a or not b:
        return None
    whole = JaroWinkler.similarity(" ".join(a), " ".join(b))
    if whole == 1.0:
        return 1.0
    best_part = max(JaroWinkler.similarity(x, y) for x in a for y in b)
    return max(whole, PART_PENALTY * best_part)


def _combine(family: float | None, given: float | None) -> float:
    if family is not None and given is not None:
        return (FAMILY_WEIGHT * family + GIVEN_WEIGHT * given) / (FAMILY_WEIGHT + GIVEN_WEIGHT)
    if family is not None:
        return ONE_PART_PENALTY * family
    return ONE_PART_PENALTY * given if given is not None else 0.0


def person_name_score(a: str, b: str) -> float:
    """How alike two person names are, in [0, 1]; 1.0 exactly when they fold to the same name."""
    fa, ga, ordered_a = name_parts(a)
    fb, gb, ordered_b = name_parts(b)
    if not fa + ga or not fb + gb:
        return 0.0
    if (fa, ga) == (fb, gb):
        return 1.0
    scores = [UNORDERED_PENALTY * fuzz.token_sort_ratio(" ".join(fa + ga), " ".join(fb + gb)) / 100]
    if ordered_a and ordered_b:
        scores.append(_combine(_similarity(fa, fb), _similarity(ga, gb)))
        scores.append(SWAP_PENALTY * _combine(_similarity(fa, gb), _similarity(ga, fb)))
    return max(scores)


def person_name(request: Sequence[Any], study: Sequence[Any], threshold: float) -> float:
    """The best name score of the two sides; 0 below ``threshold``."""
    best = max((person_name_score(text_of(a), text_of(b)) for a in request for b in study), default=0.0)
    return best if best >= threshold else 0.0


# --- blocking -------------------------------------------------------------------------------

_SOUNDEX = {c: d for d, letters in {"1": "bfpv", "2": "cgjkqsxz", "3": "dt", "4": "l", "5": "mn", "6": "r"}.items()
            for c in letters}


def soundex(word: str) -> str:
    """American Soundex of a folded word (Meier, Mayer, Maier: M600)."""
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return ""
    out, last = letters[0].upper(), _SOUNDEX.get(letters[0], "")
    for c in letters[1:]:
        code = _SOUNDEX.get(c, "")
        if code and code != last:
            out += code
        if c not in "hw":
            last = code
    return (out + "000")[:4]


def phonetic_keys(value: str) -> set[str]:
    """Soundex of every name word, family and given alike, so swapped names still meet."""
    family, given, _ = name_parts(value)
    return {s for s in map(soundex, family + given) if s}
