"""FHIR R4 search parameters to and from a ``SearchRequest``, and the matching rules for their values.

See: FHIR R4 (4.0.1) search.html: #ptypes, #modifiers, #prefix, #escaping, #combining (AND/OR), #errors.

Rules:
1. A repeated parameter is AND (one ``Criterion`` each); ``,`` within a value is OR (the criterion's
   ``values``). ``\\,`` ``\\|`` ``\\$`` ``\\\\`` escape the separators; any other backslash
   is kept as it is.
2. Undeclared parameters, ``_summary``, ``_elements``, ``_revinclude`` and chains on undeclared names are
   ignored and listed in ``ignored`` (never echoed in the self link), unless ``strict``
   (``Prefer: handling=strict``), which makes them ``InvalidInput``. ``_format`` and ``_pretty`` are
   always accepted; a non-JSON ``_format`` is ``Unsupported``.
3. A modifier the parameter's type does not offer, or a chain on a declared reference, is
   ``InvalidInput`` whatever ``strict`` says: silently dropping it would widen the result
   (search.html#modifiers).
4. Dates and numbers are implicit ranges ``[low, high)`` set by their precision; dates are compared in UTC,
   a value without offset being read in ``default_tz``. A prefix compares the parameter's range with the
   target's range exactly as the R4 prefix table words it (``date_matches``).
5. An empty value (``status=``) or empty alternative (``a,,b``) adds nothing: the parameter is absent.
6. Errors name the parameter and the problem, never the value: values may be patient identifiers.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Literal, get_args
from urllib.parse import quote

from ..domain.errors import InvalidInput, Unsupported

ParamType = Literal["token", "date", "reference", "string", "uri", "number"]
Prefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
PREFIXES: Mapping[str, Prefix] = {prefix: prefix for prefix in get_args(Prefix)}
TOTAL_MODES: frozenset[str] = frozenset({"none", "estimate", "accurate"})
JSON_FORMATS: frozenset[str] = frozenset({"json", "application/json", "application/fhir+json", "application/json+fhir"})
# Modifiers each type offers besides :missing; reference also takes a resource type (:Patient).
TYPE_MODIFIERS: Mapping[str, frozenset[str]] = {
    "token": frozenset({"not"}),
    "string": frozenset({"exact", "contains"}),
    "reference": frozenset({"identifier"}),
    "date": frozenset(),
    "number": frozenset(),
    "uri": frozenset(),
}
AP_MINIMUM = timedelta(days=1)

_IGNORABLE = frozenset({"_summary", "_elements", "_revinclude", "_include:iterate", "_include:recurse",
                        "_contained", "_containedType"})
_SAFE_NAME = re.compile(r"[A-Za-z0-9_\-:.]{1,64}")
_TYPE = r"[A-Z][A-Za-z]{1,63}"
_ID = r"[A-Za-z0-9\-.]{1,64}"  # FHIR id
_RESOURCE_TYPE = re.compile(_TYPE)
_REFERENCE = re.compile(rf"(?:(?P<type>{_TYPE})/)?(?P<id>{_ID})(?:/_history/{_ID})?")
_URL_TAIL = re.compile(rf"/(?P<type>{_TYPE})/(?P<id>{_ID})(?:/_history/{_ID})?/?$")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_NEGATIVE = re.compile(r"[0-9]{1,9}")
# A '+' of an offset that a client left unencoded arrives as a space (form decoding): accept it.
_DATE = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<mo>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]+))?)?"
    r"(?P<tz>Z|[+\- ][0-9]{2}:[0-9]{2})?)?)?)?"
)
_UNDECOMPOSABLE = str.maketrans({
    "ß": "ss", "Ł": "l", "ł": "l", "Ø": "o", "ø": "o", "Đ": "d", "đ": "d", "Æ": "ae", "æ": "ae",
    "Œ": "oe", "œ": "oe", "Þ": "th", "þ": "th", "ı": "i", "Ħ": "h", "ħ": "h",
})


# --- values ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchParam:
    """A parameter a resource type declares; ``targets`` are a reference's resource types.

    ``identifier`` marks a token over ``Identifier`` (it then offers ``:of-type``).
    """

    name: str
    type: ParamType
    targets: tuple[str, ...] = ()
    identifier: bool = False


@dataclass(frozen=True)
class Token:
    """``system|code``; ``code`` alone has ``any_system``; ``|code`` has no system; ``system|`` any code."""

    system: str | None
    code: str | None
    any_system: bool = False


@dataclass(frozen=True)
class OfType:
    """``:of-type`` value ``system|code|value``: Identifier.type.coding and Identifier.value (search.html#token)."""

    system: str | None
    code: str
    value: str


@dataclass(frozen=True)
class ReferenceValue:
    """``Type/id`` (or ``id`` with the type from the parameter), or an absolute ``url`` kept as given.

    ``type`` is None when a bare id could point to several target types; a version is dropped.
    """

    type: str | None
    id: str | None
    url: str | None = None


@dataclass(frozen=True)
class DateValue:
    """A prefixed date parameter: ``[low, high)`` in UTC from the precision of ``text``."""

    prefix: Prefix
    low: datetime
    high: datetime
    text: str


@dataclass(frozen=True)
class NumberValue:
    """A prefixed number: ``[low, high)`` is half a unit of its last significant digit either side."""

    prefix: Prefix
    value: Decimal
    text: str

    @property
    def low(self) -> Decimal:
        return self.value - _half_unit(self.value)

    @property
    def high(self) -> Decimal:
        return self.value + _half_unit(self.value)


SearchValue = Token | OfType | ReferenceValue | DateValue | NumberValue | str | bool


@dataclass(frozen=True)
class Criterion:
    """One parameter occurrence: matches when any of ``values`` does (``:missing`` has one bool).

    ``modifier`` is None, ``missing``, ``not``, ``exact``, ``contains``, ``identifier``, ``of-type``, or a
    resource type for a reference.
    """

    name: str
    type: ParamType
    values: tuple[SearchValue, ...]
    modifier: str | None = None


@dataclass(frozen=True)
class Include:
    """``_include=Source:param`` or ``Source:param:Target``."""

    source: str
    param: str
    target: str | None = None


@dataclass(frozen=True)
class SearchRequest:
    """What a search asks for; ``ignored`` names parameters that were not understood."""

    criteria: tuple[Criterion, ...]
    count: int
    offset: int = 0
    sort: tuple[tuple[str, bool], ...] = ()  # (parameter, descending)
    includes: tuple[Include, ...] = ()
    total: str | None = None
    ignored: tuple[str, ...] = ()


# --- parsing -----------------------------------------------------------------------------------

def parse_search(
    params: Sequence[tuple[str, str]],
    declared: Mapping[str, SearchParam],
    *,
    strict: bool,
    default_count: int,
    max_count: int,
    default_tz: tzinfo = UTC,
    resource_type: str | None = None,
) -> SearchRequest:
    """The SearchRequest of a search's (already percent-decoded) parameters.

    See: FHIR R4 search.html, #combining, #errors. ``resource_type``, when given, is checked against
    ``_include`` sources. Raises ``InvalidInput`` (400) and, for a non-JSON ``_format``, ``Unsupported``.
    """
    criteria: list[Criterion] = []
    ignored: list[str] = []
    singles: dict[str, str] = {}
    sort: list[tuple[str, bool]] = []
    includes: list[Include] = []

    def ignore(name: str, why: str) -> None:
        if strict:
            raise InvalidInput(f"{_label(name)}: {why} (Prefer: handling=strict)")
        if name not in ignored:
            ignored.append(name)

    for name, value in params:
        if name in ("_count", "_offset", "_total", "_sort"):
            if name in singles:
                raise InvalidInput(f"{name} is given more than once")
            singles[name] = value
        elif name == "_include":
            include = _parse_include(value, declared, resource_type)
            if include is None:
                ignore(name, "not a supported include")
            elif include not in includes:
                includes.append(include)
        elif name == "_format":
            _check_format(value)
        elif name == "_pretty":
            pass
        elif name in _IGNORABLE:
            ignore(name, "not supported")
        else:
            criterion = _parse_criterion(name, value, declared, default_tz, ignore)
            if criterion is not None:
                criteria.append(criterion)

    count = min(default_count, max_count)
    if "_count" in singles:
        count = min(_non_negative("_count", singles["_count"]), max_count)
    offset = _non_negative("_offset", singles["_offset"]) if "_offset" in singles else 0
    total = singles.get("_total")
    if total is not None and total not in TOTAL_MODES:
        raise InvalidInput("_total must be none, estimate or accurate")
    if "_sort" in singles:
        for key in singles["_sort"].split(","):
            descending = key.startswith("-")
            sort_name = key[1:] if descending else key
            if not sort_name:
                raise InvalidInput("_sort has an empty key")
            if sort_name not in declared:
                ignore("_sort", f"cannot sort by {_label(sort_name)}")
            elif all(s[0] != sort_name for s in sort):
                sort.append((sort_name, descending))
    return SearchRequest(
        criteria=tuple(criteria), count=count, offset=offset, sort=tuple(sort), includes=tuple(includes),
        total=total, ignored=tuple(ignored),
    )


def _parse_criterion(
    name: str, value: str, declared: Mapping[str, SearchParam], default_tz: tzinfo,
    ignore: Callable[[str, str], None],
) -> Criterion | None:
    base, _, modifier_text = name.partition(":")
    chain = ""
    if "." in base:
        base, _, chain = base.partition(".")
    elif "." in modifier_text:
        modifier_text, _, chain = modifier_text.partition(".")
    param = declared.get(base)
    if param is None:
        ignore(name, "unknown parameter")
        return None
    if chain:
        raise InvalidInput(f"{param.name}: chained search is not supported")
    modifier = modifier_text or None
    if ":" in name and not modifier:
        raise InvalidInput(f"{param.name}: empty modifier")
    if modifier is not None:
        _check_modifier(param, modifier)

    if modifier == "missing":
        flag = value.strip()
        if flag not in ("true", "false"):
            raise InvalidInput(f"{param.name}:missing must be true or false")
        return Criterion(param.name, param.type, (flag == "true",), "missing")

    values: list[SearchValue] = []
    for part in split_escaped(value, ","):
        if not part:
            continue
        parsed = _parse_value(param, modifier, part, default_tz)
        if parsed not in values:
            values.append(parsed)
    if not values:
        return None
    return Criterion(param.name, param.type, tuple(values), modifier)


def _check_modifier(param: SearchParam, modifier: str) -> None:
    if modifier == "missing" or modifier in TYPE_MODIFIERS[param.type]:
        return
    if modifier == "of-type" and param.identifier:
        return
    if param.type == "reference" and _RESOURCE_TYPE.fullmatch(modifier):
        if param.targets and modifier not in param.targets:
            raise InvalidInput(f"{param.name}: {modifier} is not a target type of this parameter")
        return
    shown = modifier if _SAFE_NAME.fullmatch(modifier) else "this modifier"
    raise InvalidInput(f"{param.name}: modifier :{shown} is not supported")


def _parse_value(param: SearchParam, modifier: str | None, text: str, default_tz: tzinfo) -> SearchValue:
    if modifier == "of-type":
        return _parse_of_type(param.name, text)
    if param.type == "token" or modifier == "identifier":
        return _parse_token(param.name, text)
    if param.type == "reference":
        return _parse_reference(param, modifier, text)
    if param.type == "date":
        prefix, rest = _prefix(param.name, text)
        low, high = _date_range(param.name, rest, default_tz)
        return DateValue(prefix, low, high, _canonical_date(rest))
    if param.type == "number":
        prefix, rest = _prefix(param.name, text)
        if not _NUMBER.fullmatch(rest):
            raise InvalidInput(f"{param.name}: not a number")
        return NumberValue(prefix, Decimal(rest), rest)
    return unescape(text)


def _parse_token(name: str, text: str) -> Token:
    parts = split_escaped(text, "|")
    if len(parts) == 1:
        return Token(None, unescape(parts[0]), any_system=True)
    if len(parts) != 2:
        raise InvalidInput(f"{name}: a token has at most one unescaped '|'")
    system, code = (unescape(p) or None for p in parts)
    if system is None and code is None:
        raise InvalidInput(f"{name}: empty token")
    return Token(system, code)


def _parse_of_type(name: str, text: str) -> OfType:
    parts = [unescape(p) for p in split_escaped(text, "|")]
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise InvalidInput(f"{name}:of-type needs system|code|value with a code and a value")
    return OfType(parts[0] or None, parts[1], parts[2])


def _parse_reference(param: SearchParam, modifier: str | None, text: str) -> ReferenceValue:
    raw = unescape(text)
    if "://" in raw or raw.startswith("urn:"):
        tail = _URL_TAIL.search(raw)
        url_type = tail.group("type") if tail else None
        url_id = tail.group("id") if tail else None
        if modifier is not None and url_type is not None and url_type != modifier:
            raise InvalidInput(f"{param.name}: reference type differs from the :{modifier} modifier")
        return ReferenceValue(url_type, url_id, raw)
    match = _REFERENCE.fullmatch(raw)
    if match is None:
        raise InvalidInput(f"{param.name}: not a reference (Type/id, id or an absolute URL)")
    ref_type = match.group("type")
    if ref_type is not None:
        if modifier is not None and ref_type != modifier:
            raise InvalidInput(f"{param.name}: reference type differs from the :{modifier} modifier")
        if param.targets and ref_type not in param.targets:
            raise InvalidInput(f"{param.name}: {ref_type} is not a target type of this parameter")
    elif modifier is not None:
        ref_type = modifier
    elif len(param.targets) == 1:
        ref_type = param.targets[0]
    return ReferenceValue(ref_type, match.group("id"))


def _parse_include(value: str, declared: Mapping[str, SearchParam], resource_type: str | None) -> Include | None:
    if value == "*":
        return None
    parts = value.split(":")
    if len(parts) not in (2, 3) or not _RESOURCE_TYPE.fullmatch(parts[0]):
        raise InvalidInput("_include must be Type:parameter or Type:parameter:TargetType")
    if resource_type is not None and parts[0] != resource_type:
        return None
    param = declared.get(parts[1])
    if param is None or param.type != "reference":
        return None
    target = parts[2] if len(parts) == 3 else None
    if target is not None and (not _RESOURCE_TYPE.fullmatch(target) or (param.targets and target not in param.targets)):
        return None
    return Include(parts[0], parts[1], target)


def _check_format(value: str) -> None:
    media = value.split(";")[0].strip().lower().replace(" ", "+")
    if media not in JSON_FORMATS:
        raise Unsupported("_format: only JSON is offered")


def _prefix(name: str, text: str) -> tuple[Prefix, str]:
    head = text[:2]
    if len(text) >= 2 and head.isalpha():
        if head not in PREFIXES:
            raise InvalidInput(f"{name}: unknown prefix (eq ne gt lt ge le sa eb ap)")
        return PREFIXES[head], text[2:]
    return "eq", text


def _non_negative(name: str, text: str) -> int:
    if not _NON_NEGATIVE.fullmatch(text.strip()):
        raise InvalidInput(f"{name} must be a non-negative integer")
    return int(text)


def _label(name: str) -> str:
    return repr(name) if _SAFE_NAME.fullmatch(name) else "a parameter"


# --- escaping ----------------------------------------------------------------------------------

def split_escaped(text: str, separator: str) -> list[str]:
    """``text`` split at each ``separator`` not preceded by an escaping backslash; escapes are kept.

    See: FHIR R4 search.html#escaping.
    """
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            current.append(ch)
            current.append(next(chars, ""))
        elif ch == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    """``\\,`` ``\\|`` ``\\$`` ``\\\\`` to the character itself; other backslashes stay."""
    return re.sub(r"\\([,|$\\])", r"\1", text)


def escape(text: str) -> str:
    """The inverse of ``unescape`` for a literal value."""
    return re.sub(r"([,|$\\])", r"\\\1", text)


# --- dates -------------------------------------------------------------------------------------

def fhir_value_range(text: str, default_tz: tzinfo = UTC) -> tuple[datetime, datetime]:
    """``[low, high)`` in UTC of a FHIR date, dateTime or instant, from its precision.

    See: FHIR R4 search.html#prefix (2015-08-12 is "from 00:00 to 00:00 exclusive"), #date.
    A value without offset is read in ``default_tz``. Raises ``InvalidInput``.
    """
    return _date_range("date", text, default_tz)


def _date_range(name: str, text: str, default_tz: tzinfo) -> tuple[datetime, datetime]:
    match = _DATE.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(f"{name}: not a FHIR date (YYYY[-MM[-DD[Thh:mm[:ss[.f]][Z|+hh:mm]]]])")
    g = match.groupdict()
    tz = default_tz if g["tz"] is None else _offset(name, g["tz"])
    year = int(g["y"])
    try:
        if g["mo"] is None:
            low = datetime(year, 1, 1, tzinfo=tz)
            high = _shifted(lambda: datetime(year + 1, 1, 1, tzinfo=tz))
        elif g["d"] is None:
            month = int(g["mo"])
            low = datetime(year, month, 1, tzinfo=tz)
            high = _shifted(lambda: datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz))
        else:
            low = datetime(year, int(g["mo"]), int(g["d"]), tzinfo=tz)
            if g["h"] is None:
                high = _shifted(lambda: low + timedelta(days=1))
            else:
                # a leap second (ss = 60, which FHIR allows) is read as the last second of its minute
                second = min(int(g["s"] or 0), 59)
                fraction = (g["f"] or "")[:6]
                low = low.replace(hour=int(g["h"]), minute=int(g["mi"]), second=second,
                                  microsecond=int(fraction.ljust(6, "0")) if fraction else 0)
                if g["s"] is None:
                    step = timedelta(minutes=1)
                elif fraction:
                    step = timedelta(microseconds=10 ** (6 - len(fraction)))
                else:
                    step = timedelta(seconds=1)
                high = _shifted(lambda: low + step)
        return low.astimezone(UTC), high.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(f"{name}: not a valid or representable date") from None


_LATEST = datetime.max.replace(tzinfo=UTC)


def _shifted(compute: Callable[[], datetime]) -> datetime:
    """The end of a range, or the latest representable moment past year 9999."""
    try:
        return compute()
    except (ValueError, OverflowError):
        return _LATEST


def _canonical_date(text: str) -> str:
    text = text.strip()
    return text[:-6] + "+" + text[-5:] if len(text) > 16 and text[-6] == " " else text


def _offset(name: str, text: str) -> tzinfo:
    if text == "Z":
        return UTC
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise InvalidInput(f"{name}: invalid time-zone offset")
    sign = -1 if text[0] == "-" else 1
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def date_matches(value: DateValue, low: datetime, high: datetime, *, now: datetime | None = None) -> bool:
    """Whether a target whose own range is ``[low, high)`` matches a prefixed date parameter.

    See: FHIR R4 search.html#prefix, the table's "Range" column. "The range above the search value"
    is everything from the end of the parameter's whole range on (as HAPI reads it), so ``gt2013-01-14``
    does not match 2013-01-14T10:00. ``ap`` widens the parameter's range on both sides by 10% of the gap
    between ``now`` and that range (the spec's recommendation), at least ``AP_MINIMUM`` (one day), and
    matches any overlap.
    """
    p_low, p_high = value.low, value.high
    inside = p_low <= low and high <= p_high
    if value.prefix == "eq":
        return inside
    if value.prefix == "ne":
        return not inside
    if value.prefix == "gt":
        return high > p_high
    if value.prefix == "lt":
        return low < p_low
    if value.prefix == "ge":
        return high > p_high or inside
    if value.prefix == "le":
        return low < p_low or inside
    if value.prefix == "sa":
        return low >= p_high
    if value.prefix == "eb":
        return high <= p_low
    moment = now if now is not None else datetime.now(UTC)
    gap = p_low - moment if moment < p_low else moment - p_high if moment > p_high else timedelta(0)
    margin = max(gap / 10, AP_MINIMUM)
    return low < _add(p_high, margin) and high > _add(p_low, -margin)


def _add(moment: datetime, delta: timedelta) -> datetime:
    try:
        return moment + delta
    except OverflowError:
        return _LATEST if delta > timedelta(0) else datetime.min.replace(tzinfo=UTC)


# --- numbers, strings, tokens ------------------------------------------------------------------

def _half_unit(value: Decimal) -> Decimal:
    exponent = value.as_tuple().exponent
    return Decimal(5).scaleb(int(exponent) - 1) if isinstance(exponent, int) else Decimal(0)


def number_matches(value: NumberValue, target: Decimal | int) -> bool:
    """Whether a target number matches a prefixed number parameter.

    See: FHIR R4 search.html#number: ``100`` is ``[99.5, 100.5)``; ``gt``/``lt``/``ge``/``le``
    compare with the value itself; ``sa``/``eb`` act as ``gt``/``lt``; ``ap`` is within 10% of the value.
    """
    number = Decimal(target)
    inside = value.low <= number < value.high
    prefix = value.prefix
    if prefix == "eq":
        return inside
    if prefix == "ne":
        return not inside
    if prefix in ("gt", "sa"):
        return number > value.value
    if prefix in ("lt", "eb"):
        return number < value.value
    if prefix == "ge":
        return number >= value.value
    if prefix == "le":
        return number <= value.value
    return abs(number - value.value) <= abs(value.value) / 10 or inside


def fold_text(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, casefolded (``Jörg`` -> ``jorg``)."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_UNDECOMPOSABLE))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def string_matches(value: str, target_text: str, modifier: str | None = None) -> bool:
    """Whether ``target_text`` matches a string parameter value.

    See: FHIR R4 search.html#string: by default the folded target starts with the folded value;
    ``:contains`` finds it anywhere (folded); ``:exact`` compares the whole string as it is.
    """
    if modifier == "exact":
        return target_text == value
    if modifier == "contains":
        return fold_text(value) in fold_text(target_text)
    return fold_text(target_text).startswith(fold_text(value))


def token_matches(value: Token, system: str | None, code: str | None) -> bool:
    """Whether a coding or identifier (``system``, ``code``/``value``) matches a token value.

    See: FHIR R4 search.html#token. Comparison is exact: codes and identifiers are case-sensitive.
    """
    if value.code is not None and code != value.code:
        return False
    if value.any_system:
        return True
    return system == value.system if value.system is not None else system is None


# --- links -------------------------------------------------------------------------------------

def query_pairs(request: SearchRequest, *, offset: int | None = None) -> list[tuple[str, str]]:
    """The canonical (unencoded) parameters of ``request``: what was understood, ``_count`` and ``_offset``."""
    pairs = [(_criterion_name(c), ",".join(_format_value(c, v) for v in c.values)) for c in request.criteria]
    pairs += [("_include", ":".join(filter(None, (i.source, i.param, i.target)))) for i in request.includes]
    if request.sort:
        pairs.append(("_sort", ",".join(("-" if desc else "") + name for name, desc in request.sort)))
    if request.total is not None:
        pairs.append(("_total", request.total))
    pairs.append(("_count", str(request.count)))
    page_offset = request.offset if offset is None else offset
    if page_offset:
        pairs.append(("_offset", str(page_offset)))
    return pairs


def self_link(base_url: str, resource_type: str, request: SearchRequest) -> str:
    """The ``self`` link of a searchset: the search as understood, so ignored parameters are absent.

    See: FHIR R4 search.html#errors (the self link holds only the parameters the server used).
    """
    return page_link(base_url, resource_type, request, request.offset)


def page_link(base_url: str, resource_type: str, request: SearchRequest, offset: int) -> str:
    """The link to the page of ``request`` that starts at ``offset`` (``next``/``previous``)."""
    query = "&".join(f"{_encode(name)}={_encode(value)}" for name, value in query_pairs(request, offset=offset))
    return f"{base_url.rstrip('/')}/{resource_type}?{query}"


def _encode(text: str) -> str:
    return quote(text, safe=":/|,-_.~")


def _criterion_name(criterion: Criterion) -> str:
    return criterion.name if criterion.modifier is None else f"{criterion.name}:{criterion.modifier}"


def _format_value(criterion: Criterion, value: SearchValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, Token):
        if value.any_system:
            return escape(value.code or "")
        return f"{escape(value.system or '')}|{escape(value.code or '')}"
    if isinstance(value, OfType):
        return f"{escape(value.system or '')}|{escape(value.code)}|{escape(value.value)}"
    if isinstance(value, ReferenceValue):
        if value.url is not None:
            return escape(value.url)
        if value.type is None or value.type == criterion.modifier:
            return escape(value.id or "")
        return escape(f"{value.type}/{value.id}")
    prefix = "" if value.prefix == "eq" else value.prefix
    return prefix + value.text
