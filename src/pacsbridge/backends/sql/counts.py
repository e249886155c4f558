"""The computed QIDO attributes kept in the index rows, refreshed whenever instances come or go.

See: PS3.18 Table 10.6.3-3 (NumberOfStudyRelatedSeries/Instances, ModalitiesInStudy) and -4
(NumberOfSeriesRelatedInstances). Multi-valued columns hold values joined by a backslash, as DICOM
does. Each refresh reads covering indexes only, so it stays cheap for large studies.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection

from . import writes


def refresh_study(conn: Connection, study_uid: str, series_uids: Iterable[str] | None = None) -> None:
    """Recount a study, and the given series of it (None: every series of it)."""
    key = {"study_uid": study_uid}
    if series_uids is None:
        series_uids = conn.execute(writes.STUDY_SERIES, key).scalars().all()
    for series_uid in series_uids:
        conn.execute(writes.COUNT_SERIES, {"series_uid": series_uid})
    modalities = conn.execute(writes.STUDY_MODALITIES, key).scalars().all()
    sop_classes = conn.execute(writes.STUDY_SOP_CLASSES, key).scalars().all()
    conn.execute(writes.COUNT_STUDY, {
        **key,
        "modalities": "\\".join(sorted(m for m in modalities if m)),
        "sop_classes": "\\".join(sorted(sop_classes)),
    })


def split(joined: str | None) -> list[str]:
    return [v for v in (joined or "").split("\\") if v]
