"""Translate a domain Query into SQL over the index, and assemble the level's attributes.

Rules:
1. A match key with an index column is matched in SQL; one without is matched in Python on the stored
   DICOM JSON of its level (sequences always are). Both use ``domain.query`` normalisation, so they
   agree.
2. A key of a lower level than the query (``ModalitiesInStudy``, or ``Modality`` on ``/studies``) is an
   EXISTS over that level; a lower-level key without a column cannot be matched and is a 400.
3. Ordering is total (ends with the unique key), so offset paging is stable (PS3.18 §8.3.4.4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    exists,
    func,
    literal,
    select,
    true,
)
from sqlalchemy.sql import Subquery

from ...domain.errors import InvalidInput
from ...domain.levels import level_of
from ...domain.model import DicomJson, Level
from ...domain.query import Match, MatchKind, Query, fuzzy_words, matches_all, name_tokens, normalize_for
from . import schema
from .counts import split


@dataclass(frozen=True)
class Column_:
    level: Level
    name: str
    vr: str


# tag -> where it is indexed. PN columns hold folded names and have a *_tokens twin.
COLUMNS: dict[str, Column_] = {
    "0020000D": Column_(Level.STUDY, "study_uid", "UI"),
    "00100020": Column_(Level.STUDY, "patient_id", "LO"),
    "00100021": Column_(Level.STUDY, "issuer_of_patient_id", "LO"),
    "00100010": Column_(Level.STUDY, "patient_name", "PN"),
    "00100030": Column_(Level.STUDY, "patient_birth_date", "DA"),
    "00100040": Column_(Level.STUDY, "patient_sex", "CS"),
    "00080020": Column_(Level.STUDY, "study_date", "DA"),
    "00080030": Column_(Level.STUDY, "study_time", "TM"),
    "00080050": Column_(Level.STUDY, "accession_number", "SH"),
    "00080090": Column_(Level.STUDY, "referring_physician_name", "PN"),
    "00200010": Column_(Level.STUDY, "study_id", "SH"),
    "00081030": Column_(Level.STUDY, "study_description", "LO"),
    "0020000E": Column_(Level.SERIES, "series_uid", "UI"),
    "00080060": Column_(Level.SERIES, "modality", "CS"),
    "00200011": Column_(Level.SERIES, "series_number", "IS"),
    "0008103E": Column_(Level.SERIES, "series_description", "LO"),
    "00080021": Column_(Level.SERIES, "series_date", "DA"),
    "00180015": Column_(Level.SERIES, "body_part_examined", "CS"),
    "00400244": Column_(Level.SERIES, "pps_start_date", "DA"),
    "00400245": Column_(Level.SERIES, "pps_start_time", "TM"),
    "00080018": Column_(Level.INSTANCE, "sop_uid", "UI"),
    "00080016": Column_(Level.INSTANCE, "sop_class_uid", "UI"),
    "00200013": Column_(Level.INSTANCE, "instance_number", "IS"),
}
# Study-level keys whose values are computed from lower levels.
DERIVED: dict[str, Column_] = {
    "00080061": Column_(Level.SERIES, "modality", "CS"),  # ModalitiesInStudy
    "00080062": Column_(Level.INSTANCE, "sop_class_uid", "UI"),  # SOPClassesInStudy
}
TABLES = {Level.STUDY: schema.studies, Level.SERIES: schema.series, Level.INSTANCE: schema.instances}


def _like_pattern(value: str) -> str:
    out = []
    for ch in value:
        if ch in "\\%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _condition(column: Any, tokens: Any, match: Match, fuzzy: bool) -> ColumnElement[bool]:
    """One match key on one column, per PS3.4 §C.2.2.2."""
    kind, vr = match.kind, match.vr
    if kind is MatchKind.UNIVERSAL:
        return true()
    if kind is MatchKind.UID_LIST:
        return column.in_(match.values)
    if kind is MatchKind.RANGE:
        parts: list[ColumnElement[bool]] = [column.is_not(None)]
        if match.low:
            parts.append(column >= normalize_for(vr, match.low))
        if match.high:
            parts.append(column <= normalize_for(vr, match.high, ceil=True))
        return and_(*parts)
    if vr == "PN":
        if kind is MatchKind.WILDCARD:
            return column.like(_like_pattern(normalize_for("PN", match.value)), escape="\\")
        if fuzzy and tokens is not None:
            words = fuzzy_words(match.value)
            return and_(true(), *[tokens.like("%^" + _like_pattern(w) + "%", escape="\\") for w in words])
        return column == normalize_for("PN", match.value)
    if kind is MatchKind.WILDCARD:
        return column.like(_like_pattern(match.value), escape="\\")
    if vr == "IS":
        try:
            return column == int(float(match.value))
        except ValueError as exc:
            raise InvalidInput(f"({match.tag}) expects an integer") from exc
    if vr in ("DA", "TM", "DT"):
        try:
            return column == normalize_for(vr, match.value)
        except ValueError as exc:
            raise InvalidInput(f"({match.tag}) is not a valid {vr} value") from exc
    return column == match.value


def _level_key(level: Level) -> Any:
    return {Level.STUDY: schema.series.c.study_uid, Level.SERIES: schema.instances.c.series_uid}[level]


@dataclass
class Plan:
    statement: Select[Any]
    python_filters: list[tuple[Level, Match]]


def plan(query: Query) -> Plan:
    """The SQL statement (without paging) and the matches left to Python."""
    st, se, inst = schema.studies, schema.series, schema.instances
    level = query.level
    columns: list[Any] = [st.c.study_uid, st.c.attributes.label("study_attrs"), st.c.num_series,
                          st.c.num_instances.label("study_instances"), st.c.modalities, st.c.sop_classes]
    source: Any = st
    if level >= Level.SERIES:
        columns += [se.c.series_uid, se.c.attributes.label("series_attrs"),
                    se.c.num_instances.label("series_instances")]
        source = source.join(se, se.c.study_uid == st.c.study_uid)
    if level is Level.INSTANCE:
        columns += [inst.c.sop_uid, inst.c.attributes.label("instance_attrs")]
        source = source.join(inst, inst.c.series_uid == se.c.series_uid)
    conditions: list[ColumnElement[bool]] = []
    python_filters: list[tuple[Level, Match]] = []
    for match in query.matches:
        if match.kind is MatchKind.UNIVERSAL or (
            match.kind is MatchKind.SEQUENCE and all(m.kind is MatchKind.UNIVERSAL for m in match.items)
        ):
            continue
        where = COLUMNS.get(match.tag) or DERIVED.get(match.tag)
        if match.kind is MatchKind.SEQUENCE or where is None:
            attr_level = level_of(match.tag)
            if attr_level > level:
                raise InvalidInput(
                    f"({match.tag}) is a {attr_level.name.lower()}-level attribute that cannot be matched "
                    f"in a {level.name.lower()}-level search"
                )
            python_filters.append((attr_level, match))
            continue
        table = TABLES[where.level]
        column = table.c[where.name]
        tokens = table.c.get(where.name + "_tokens")
        condition = _condition(column, tokens, match, query.fuzzy)
        if where.level <= level:
            conditions.append(condition)
            continue
        # A lower-level key: some series (instance) of this study (series) must match.
        parent = level if match.tag not in DERIVED else Level.STUDY
        if where.level is Level.SERIES:
            correlate = se.c.study_uid == st.c.study_uid
        elif parent is Level.STUDY:
            correlate = inst.c.study_uid == st.c.study_uid
        else:
            correlate = inst.c.series_uid == se.c.series_uid
        conditions.append(exists(select(literal(1)).select_from(table).where(correlate, condition)))
    statement = select(*columns).select_from(source).where(*conditions)
    order: list[Any] = [func.coalesce(st.c.study_date, "").desc(), func.coalesce(st.c.study_time, "").desc(),
                        st.c.study_uid]
    if level >= Level.SERIES:
        order += [func.coalesce(se.c.series_number, 0), se.c.series_uid]
    if level is Level.INSTANCE:
        order += [func.coalesce(inst.c.instance_number, 0), inst.c.sop_uid]
    return Plan(statement.order_by(*order), python_filters)


ONLINE = {"vr": "CS", "Value": ["ONLINE"]}


def _merger(query: Query) -> Callable[[Any], DicomJson]:
    """A function building one result from a row: the attributes of its level and those above, plus
    the computed ones kept in the rows by ``counts.py``. Decisions are taken once per query, since
    this runs for every row of every page."""
    with_series = query.level >= Level.SERIES
    with_instance = query.level is Level.INSTANCE
    sop_classes_wanted = query.include_all or "00080062" in query.includefields or any(
        m.tag == "00080062" for m in query.matches)

    def merge(row: Any) -> DicomJson:
        merged: DicomJson = orjson.loads(row.study_attrs)
        merged["00080056"] = ONLINE
        modalities = split(row.modalities)
        merged["00080061"] = {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"}
        if sop_classes_wanted:
            merged["00080062"] = {"vr": "UI", "Value": split(row.sop_classes)}
        merged["00201206"] = {"vr": "IS", "Value": [row.num_series]}
        merged["00201208"] = {"vr": "IS", "Value": [row.study_instances]}
        if with_series:
            merged.update(orjson.loads(row.series_attrs))
            merged["00201209"] = {"vr": "IS", "Value": [row.series_instances]}
        if with_instance:
            merged.update(orjson.loads(row.instance_attrs))
        return merged

    return merge


def run(conn: Connection, query: Query) -> tuple[list[DicomJson], int]:
    """Execute a query; returns one page of merged attributes and the count of matches beyond it."""
    p = plan(query)
    merge = _merger(query)
    limit = query.limit
    if not p.python_filters:
        statement = p.statement.offset(query.offset)
        if limit is not None:
            statement = statement.limit(limit)
        page = [merge(row) for row in conn.execute(statement)]
        remaining = 0
        if limit is not None and len(page) == limit:
            total = conn.execute(select(func.count()).select_from(_as_subquery(p.statement))).scalar_one()
            remaining = max(0, int(total) - query.offset - len(page))
    else:
        kept = [m for _, m in p.python_filters]
        matched = [merged for row in conn.execute(p.statement)
                   if matches_all(kept, merged := merge(row), query.fuzzy)]
        end = None if limit is None else query.offset + limit
        page = matched[query.offset:end]
        remaining = max(0, len(matched) - query.offset - len(page))
    return page, remaining


def _as_subquery(statement: Select[Any]) -> Subquery:
    return statement.order_by(None).subquery()


def index_values(record_study: DicomJson, record_series: DicomJson, record_instance: DicomJson
                 ) -> dict[Level, dict[str, Any]]:
    """The column values of each level for one instance, in comparable form."""
    out: dict[Level, dict[str, Any]] = {Level.STUDY: {}, Level.SERIES: {}, Level.INSTANCE: {}}
    sources = {Level.STUDY: record_study, Level.SERIES: record_series, Level.INSTANCE: record_instance}
    for tag, col in COLUMNS.items():
        element = sources[col.level].get(tag)
        values = _first_string(element)
        if values is None:
            out[col.level][col.name] = None
            if col.vr == "PN":
                out[col.level][col.name + "_tokens"] = None
            continue
        out[col.level][col.name] = _column_value(col.vr, values)
        if col.vr == "PN":
            out[col.level][col.name + "_tokens"] = name_tokens(values)
    return out


def _first_string(element: dict[str, Any] | None) -> str | None:
    if not element or not element.get("Value"):
        return None
    value = element["Value"][0]
    if value is None:
        return None
    if isinstance(value, dict):
        return str(value.get("Alphabetic") or next(iter(value.values()), "") or "") or None
    return str(value)


def _column_value(vr: str, text: str) -> Any:
    if vr == "IS":
        try:
            number = int(float(text))
        except (ValueError, OverflowError):
            return None
        # IS holds a 32-bit signed integer (PS3.5 Table 6.2-1); a value beyond it is not matchable and
        # would not fit the column on PostgreSQL: the attribute stays in the stored JSON all the same.
        return number if -(2**31) <= number < 2**31 else None
    if vr in ("DA", "TM", "DT", "PN"):
        try:
            return normalize_for(vr, text)
        except ValueError:
            return None
    return text


__all__: Sequence[str] = ("COLUMNS", "DERIVED", "index_values", "plan", "run")
