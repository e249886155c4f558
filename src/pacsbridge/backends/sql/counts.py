"""The computed QIDO attributes kept in the index rows, refreshed whenever instances come or go.

See: PS3.18 Table 10.6.3-3 (NumberOfStudyRelatedSeries/Instances, ModalitiesInStudy) and -4
(NumberOfSeriesRelatedInstances). Multi-valued columns hold values joined by a backslash, as DICOM
does. Each refresh reads covering indexes only, so it stays cheap for large studies.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, func, select, update

from . import schema


def refresh_series(conn: Connection, series_uid: str) -> None:
    inst, se = schema.instances, schema.series
    count = select(func.count()).where(inst.c.series_uid == series_uid).scalar_subquery()
    conn.execute(update(se).where(se.c.series_uid == series_uid).values(num_instances=count))


def refresh_study(conn: Connection, study_uid: str, series_uids: Iterable[str] | None = None) -> None:
    """Recount a study, and the given series of it (None: every series of it)."""
    inst, se, st = schema.instances, schema.series, schema.studies
    modalities = conn.execute(
        select(se.c.modality).where(se.c.study_uid == study_uid, se.c.modality.is_not(None)).distinct()
    ).scalars().all()
    sop_classes = conn.execute(
        select(inst.c.sop_class_uid).where(inst.c.study_uid == study_uid).distinct()
    ).scalars().all()
    if series_uids is None:
        series_uids = conn.execute(select(se.c.series_uid).where(se.c.study_uid == study_uid)).scalars().all()
    for series_uid in series_uids:
        refresh_series(conn, series_uid)
    conn.execute(update(st).where(st.c.study_uid == study_uid).values(
        num_series=select(func.count()).where(se.c.study_uid == study_uid).scalar_subquery(),
        num_instances=select(func.count()).where(inst.c.study_uid == study_uid).scalar_subquery(),
        modalities="\\".join(sorted(m for m in modalities if m)),
        sop_classes="\\".join(sorted(sop_classes)),
    ))


def split(joined: str | None) -> list[str]:
    return [v for v in (joined or "").split("\\") if v]
