"""The index's write statements, built once as SQL text.

Building SQLAlchemy Core upserts per instance cost more than running them; these statements are
compiled once. ``INSERT ... ON CONFLICT (key) DO UPDATE SET col = excluded.col`` reads the same in
SQLite (3.24+) and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import Table, TextClause, text

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
OLD_INSTANCE = text("SELECT path, series_uid FROM instances WHERE sop_uid = :sop_uid")

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
