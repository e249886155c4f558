"""The index's hot statements (writes, and the reads of the retrieve path), built once as SQL text.

Building SQLAlchemy Core upserts per instance cost more than running them; these statements are
compiled once. ``INSERT ... ON CONFLICT (key) DO UPDATE SET col = excluded.col`` reads the same in
SQLite (3.24+) and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import Table, TextClause, bindparam, select, text

from . import schema


def _upsert(table: Table, key: str, columns: list[str]) -> TextClause:
    names = ", ".join(columns)
    values = ", ".join(f":{c}" for c in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    return text(f"INSERT INTO {table.name} ({names}) VALUES ({values}) "
                f"ON CONFLICT ({key}) DO UPDATE SET {updates}")


COMPUTED = {"num_series", "num_instances", "modalities", "sop_classes"}
STUDY_COLUMNS = [c.name for c in schema.studies.columns if c.name not in COMPUTED]
SERIES_COLUMNS = [c.name for c in schema.series.columns if c.name not in COMPUTED]
INSTANCE_COLUMNS = [c.name for c in schema.instances.columns]

UPSERT_STUDY = _upsert(schema.studies, "study_uid", STUDY_COLUMNS)
UPSERT_SERIES = _upsert(schema.series, "series_uid", SERIES_COLUMNS)
UPSERT_INSTANCE = _upsert(schema.instances, "sop_uid", INSTANCE_COLUMNS)
OLD_INSTANCE = text("SELECT path, series_uid, study_uid FROM instances WHERE sop_uid = :sop_uid")
SERIES_STUDY = text("SELECT study_uid FROM series WHERE series_uid = :series_uid")

# Locks a study row until the transaction ends on PostgreSQL; SQLite (one writer at a time) has no
# FOR UPDATE and SQLAlchemy leaves it out there.
LOCK_STUDY = (select(schema.studies.c.study_uid)
              .where(schema.studies.c.study_uid == bindparam("study_uid")).with_for_update())

COUNT_SERIES = text("UPDATE series SET num_instances = (SELECT count(*) FROM instances "
                    "WHERE instances.series_uid = :series_uid) WHERE series_uid = :series_uid")
STUDY_MODALITIES = text("SELECT DISTINCT modality FROM series WHERE study_uid = :study_uid "
                        "AND modality IS NOT NULL")
STUDY_SOP_CLASSES = text("SELECT DISTINCT sop_class_uid FROM instances WHERE study_uid = :study_uid")
STUDY_SERIES = text("SELECT series_uid FROM series WHERE study_uid = :study_uid")
COUNT_STUDY = text(
    "UPDATE studies SET "
    "num_series = (SELECT count(*) FROM series WHERE series.study_uid = :study_uid), "
    "num_instances = (SELECT count(*) FROM instances WHERE instances.study_uid = :study_uid), "
    "modalities = :modalities, sop_classes = :sop_classes WHERE study_uid = :study_uid"
)


# --- reads on the retrieve path (one per scope level, built once) ------------------------------
_SCOPES = {
    "study": "i.study_uid = :study_uid",
    "series": "i.study_uid = :study_uid AND i.series_uid = :series_uid",
    "instance": "i.sop_uid = :sop_uid AND i.series_uid = :series_uid AND i.study_uid = :study_uid",
}
_ORDER = "ORDER BY i.series_uid, coalesce(i.instance_number, 0), i.sop_uid"
LOCATE = {
    level: text(
        "SELECT i.study_uid, i.series_uid, i.sop_uid, i.sop_class_uid, i.transfer_syntax, i.path, i.size, "
        "i.number_of_frames, i.pixel_layout, s.patient_id "
        "FROM instances i JOIN studies s ON s.study_uid = i.study_uid "
        f"WHERE {where} {_ORDER}"
    )
    for level, where in _SCOPES.items()
}
METADATA = {level: text(f"SELECT i.metadata FROM instances i WHERE {where} {_ORDER}")
            for level, where in _SCOPES.items()}
PATIENT_OF = text("SELECT patient_id FROM studies WHERE study_uid = :study_uid")
