"""FHIR searches over ``fhir_search_index`` (rows written by ``services.fhir_index``).

Rules:
1. Each criterion (AND) gives the set of matching ids: tokens, references and strings by SQL on the
   index, dates by ``formats.fhir_search.date_matches`` over the rows' ranges (the R4 prefix table is
   easier to get right once, in Python, than in SQL); the sets are intersected.
2. Only current, undeleted versions match. The page is read after sorting the ids: by a date
   parameter's range (``_sort``), else by last update, newest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, or_, select

from ...formats.fhir_search import Criterion, DateValue, OfType, ReferenceValue, Token, date_matches, fold_text
from . import schema

IX, RES = schema.fhir_search_index, schema.fhir_resources


def search_resources(conn: Connection, type_: str, where: Sequence[Criterion], sort: Sequence[tuple[str, bool]],
                     offset: int, count: int) -> tuple[list[Any], int]:
    ids: set[str] | None = None
    for criterion in where:
        found = _ids(conn, type_, criterion, ids)
        ids = found if ids is None else ids & found
        if not ids:
            return [], 0
    alive = select(RES.c.id, RES.c.last_updated).where(RES.c.type == type_, RES.c.deleted == 0)
    rows = conn.execute(alive).all()
    order = {r.id: r.last_updated for r in rows if ids is None or r.id in ids}
    name, descending = (list(sort) or [("_lastUpdated", True)])[0]  # the first sort key decides
    keys = _sort_keys(conn, type_, name, order)
    ranked = sorted((i for i in order if keys.get(i) is not None), key=lambda i: (keys[i], i), reverse=descending)
    ranked += sorted(i for i in order if keys.get(i) is None)
    page = ranked[offset:offset + count]
    if not page:
        return [], len(order)
    found_rows = {r.id: r for r in conn.execute(select(RES).where(RES.c.type == type_, RES.c.id.in_(page))).all()}
    return [found_rows[i] for i in page if i in found_rows], len(order)


def _sort_keys(conn: Connection, type_: str, name: str, current: dict[str, str]) -> dict[str, Any]:
    if name == "_lastUpdated":
        return dict(current)
    rows = conn.execute(select(IX.c.id, IX.c.low).where(IX.c.type == type_, IX.c.param == name)).all()
    return {r.id: r.low for r in rows}


def _ids(conn: Connection, type_: str, c: Criterion, within: set[str] | None) -> set[str]:
    base = and_(IX.c.type == type_, IX.c.param == ("identifier-of-type" if c.modifier == "of-type" else c.name))
    if c.modifier == "missing":
        present = {r[0] for r in conn.execute(select(IX.c.id).where(base)).all()}
        everyone = {r[0] for r in conn.execute(select(RES.c.id).where(RES.c.type == type_, RES.c.deleted == 0)).all()}
        return everyone - present if c.values and c.values[0] is True else present
    if c.type == "date":
        rows = conn.execute(select(IX.c.id, IX.c.low, IX.c.high).where(base)).all()
        return {r.id for r in rows if (within is None or r.id in within) and r.low and r.high and any(
            isinstance(v, DateValue) and date_matches(v, _moment(r.low), _moment(r.high)) for v in c.values)}
    alternatives = [cond for v in c.values if (cond := _condition(c, v)) is not None]
    if not alternatives:
        return set()
    matched = {r[0] for r in conn.execute(select(IX.c.id).where(base, or_(*alternatives))).all()}
    if c.modifier == "not":
        everyone = {r[0] for r in conn.execute(select(RES.c.id).where(RES.c.type == type_, RES.c.deleted == 0)).all()}
        return everyone - matched
    return matched


def _condition(c: Criterion, v: object) -> Any:
    if isinstance(v, Token):
        parts = []
        if v.code is not None:
            parts.append(IX.c.value == v.code)
        if not v.any_system:
            parts.append(IX.c.system == v.system if v.system is not None else IX.c.system.is_(None))
        return and_(*parts) if parts else IX.c.id.is_not(None)
    if isinstance(v, OfType):
        return and_(IX.c.system == f"{v.system or ''}|{v.code}", IX.c.value == v.value)
    if isinstance(v, ReferenceValue):
        if v.type and v.id:
            return IX.c.value == f"{v.type}/{v.id}"
        if v.id:
            return IX.c.value.like(f"%/{_like(v.id)}", escape="\\")
        return IX.c.value == v.url if v.url else None
    if isinstance(v, str):
        if c.modifier == "exact":
            return IX.c.system == v
        pattern = _like(fold_text(v))
        return IX.c.value.like(f"%{pattern}%" if c.modifier == "contains" else f"{pattern}%", escape="\\")
    return None


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _moment(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
