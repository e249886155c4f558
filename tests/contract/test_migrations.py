"""Schema migrations keep existing data (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, text

from pacsbridge.backends.local import make_engine
from pacsbridge.backends.sql.migrations import MIGRATIONS, current_version, migrate

from ..support.servers import Postgres


def test_fresh_database_reaches_the_newest_version_and_is_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    assert migrate(engine) == (0, len(MIGRATIONS))
    assert migrate(engine) == (len(MIGRATIONS), len(MIGRATIONS))
    with engine.connect() as conn:
        assert current_version(conn) == len(MIGRATIONS)


def test_an_upgrade_keeps_existing_rows(db_url: str) -> None:
    """A database at the released version gets a later step and keeps its data."""
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO studies (study_uid, attributes, updated_at) VALUES ('1.2.3', '{}', 'now')"))

    def add_column(conn: Connection) -> None:
        conn.execute(text("ALTER TABLE studies ADD COLUMN stable_since VARCHAR(32)"))

    before, after = migrate(engine, (*MIGRATIONS, add_column))
    assert (before, after) == (len(MIGRATIONS), len(MIGRATIONS) + 1)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT study_uid, stable_since FROM studies")).one()
    assert tuple(row) == ("1.2.3", None)


def test_a_newer_database_is_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE schema_version SET version = 99"))
    with pytest.raises(RuntimeError, match="newer than this pacsbridge"):
        migrate(engine)


def test_version_2_computes_counts_for_studies_stored_under_version_1(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine, MIGRATIONS[:1])
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO studies (study_uid, attributes, updated_at) VALUES ('1.2', '{}', 'x')"))
        for series, modality in (("1.2.1", "CT"), ("1.2.2", "SR")):
            conn.execute(text("INSERT INTO series (series_uid, study_uid, modality, attributes) "
                              "VALUES (:s, '1.2', :m, '{}')"), {"s": series, "m": modality})
        ct, sr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.88.11"
        for n, series in enumerate(("1.2.1", "1.2.1", "1.2.2")):
            conn.execute(text(
                "INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class_uid, transfer_syntax, "
                "number_of_frames, path, size, attributes, metadata, stored_at) VALUES "
                "(:sop, :series, '1.2', :cls, '1.2.840.10008.1.2.1', 1, 'p', 1, '{}', '{}', 'x')"),
                {"sop": f"1.2.9.{n}", "series": series, "cls": ct if n < 2 else sr})
    assert migrate(engine) == (1, len(MIGRATIONS))
    with engine.connect() as conn:
        study = conn.execute(text("SELECT num_series, num_instances, modalities, sop_classes FROM studies")).one()
        series = dict(conn.execute(text("SELECT series_uid, num_instances FROM series")).all())
    assert tuple(study) == (2, 3, "CT\\SR", "1.2.840.10008.5.1.4.1.1.2\\1.2.840.10008.5.1.4.1.1.88.11")
    assert series == {"1.2.1": 2, "1.2.2": 1}


def test_version_6_marks_studies_stored_before_it_as_handled_arrivals(db_url: str) -> None:
    """No request existed before v6, so no older study can answer one: the first start after the upgrade
    must not read through the whole archive looking for references."""
    engine = make_engine(db_url)
    migrate(engine, MIGRATIONS[:5])
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO studies (study_uid, attributes, updated_at) "
                          "VALUES ('1.2.3', '{}', '2025-01-01T00:00:00.000000Z')"))
    migrate(engine)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT study_uid, seen_updated_at FROM study_arrivals")).one()
    assert tuple(row) == ("1.2.3", "2025-01-01T00:00:00.000000Z")


def test_version_7_gives_every_link_made_before_it_its_first_history_event(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine, MIGRATIONS[:6])
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO study_links (study_uid, request_id, status, linked_at) "
                          "VALUES ('1.2.3', 'sr1', 'reference', '2026-01-05T10:00:00Z')"))
    migrate(engine)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT study_uid, request_id, status, actor, at FROM study_link_events")).one()
    assert tuple(row) == ("1.2.3", "sr1", "reference", "pacsbridge", "2026-01-05T10:00:00Z")


def test_the_migrations_build_the_tables_and_columns_the_code_queries(db_url: str) -> None:
    """``schema.py`` describes the tables for queries; the migrations create them. They must agree."""
    from sqlalchemy import inspect

    from pacsbridge.backends.sql import schema

    engine = make_engine(db_url)
    migrate(engine)
    found = inspect(engine)
    tables = set(found.get_table_names())
    for table in schema.metadata.sorted_tables:
        assert table.name in tables, f"no migration creates {table.name}"
        columns = {c["name"] for c in found.get_columns(table.name)}
        assert {c.name for c in table.columns} <= columns, f"{table.name}: {sorted(set(table.c.keys()) - columns)}"


def test_version_9_keeps_requests_and_starts_with_nothing_pending(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine, MIGRATIONS[:8])
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO imaging_requests (request_id, status, accession_number, requested_procedure_id, "
                          "study_uid, patient_id, attributes, updated_at) VALUES ('sr1', 'active', 'A1', 'A1', "
                          "'2.25.1', 'P1', '{}', '2026-01-05T10:00:00Z')"))
    migrate(engine)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM pending_matches")).scalar_one() == 0
        conn.execute(text("INSERT INTO pending_matches (request_id, since) VALUES ('sr1', '2026-01-05T10:00:01Z')"))
        conn.execute(text("DELETE FROM imaging_requests WHERE request_id = 'sr1'"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pending_matches")).scalar_one() == 0  # cascades


# The columns holding attribute values, VARCHAR(n) at v9 (PostgreSQL refused longer values).
LONG_VALUE_COLUMNS = {
    "studies": ("patient_id", "issuer_of_patient_id", "patient_name", "patient_name_tokens", "patient_birth_date",
                "patient_sex", "study_date", "study_time", "accession_number", "referring_physician_name",
                "referring_physician_name_tokens", "study_id", "study_description"),
    "series": ("modality", "series_description", "series_date", "body_part_examined", "pps_start_date",
               "pps_start_time"),
    "imaging_requests": ("patient_id",),
    "procedure_steps": ("station_ae", "modality", "start_date", "start_time"),
}


def test_version_10_makes_the_attribute_columns_unbounded_and_keeps_rows_and_indexes(db_url: str) -> None:
    from sqlalchemy import Text, inspect

    engine = make_engine(db_url)
    migrate(engine, MIGRATIONS[:9])
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO studies (study_uid, accession_number, study_date, attributes, updated_at) "
                          "VALUES ('1.2.3', 'A1', '20240131', '{}', 'x')"))
        conn.execute(text("INSERT INTO series (series_uid, study_uid, modality, attributes) "
                          "VALUES ('1.2.3.1', '1.2.3', 'CT', '{}')"))
        conn.execute(text("INSERT INTO imaging_requests (request_id, status, accession_number, requested_procedure_id, "
                          "study_uid, patient_id, attributes, updated_at) VALUES ('sr1', 'active', 'A1', 'A1', "
                          "'2.25.1', 'P1', '{}', 'x')"))
        conn.execute(text("INSERT INTO procedure_steps (sps_id, request_id, position, status, station_ae, modality, "
                          "start_date, item) VALUES ('A1-1', 'sr1', 0, 'scheduled', 'CT01', 'CT', '20260105', '{}')"))
    assert migrate(engine) == (9, len(MIGRATIONS))

    found = inspect(engine)
    if engine.dialect.name == "postgresql":  # SQLite ignores declared lengths: v10 leaves it alone
        for table, columns in LONG_VALUE_COLUMNS.items():
            types = {c["name"]: c["type"] for c in found.get_columns(table)}
            bounded = {c: repr(types[c]) for c in columns if not isinstance(types[c], Text)}
            assert bounded == {}, f"{table}: still bounded"
        assert getattr(next(c["type"] for c in found.get_columns("studies") if c["name"] == "study_uid"),
                       "length", None) == 64  # UIDs keep their bound
    indexes = {i["name"] for table in ("studies", "series", "imaging_requests", "procedure_steps")
               for i in found.get_indexes(table)}
    assert {"ix_studies_patient_id", "ix_studies_patient_name", "ix_studies_study_date", "ix_studies_accession",
            "ix_studies_sort", "ix_series_modality", "ix_series_study_modality", "ix_requests_patient",
            "ix_steps_open"} <= indexes

    accession, date = "ACC-2024-" + "0" * 26 + "12345", "20240131120000"
    with engine.begin() as conn:
        assert conn.execute(text("SELECT accession_number, study_date FROM studies")).one() == ("A1", "20240131")
        assert conn.execute(text("SELECT patient_id FROM imaging_requests")).scalar_one() == "P1"
        assert conn.execute(text("SELECT station_ae FROM procedure_steps")).scalar_one() == "CT01"
        conn.execute(text("UPDATE studies SET accession_number = :a, study_date = :d, study_description = :s"),
                     {"a": accession, "d": date, "s": "D" * 200})
        conn.execute(text("UPDATE procedure_steps SET station_ae = :ae"), {"ae": "STATION-AE-OF-THE-CT-IN-ROOM-4"})
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # the index answers a lookup by the long value
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(conn.execute(text("EXPLAIN SELECT study_uid FROM studies WHERE accession_number = :a"),
                                          {"a": accession}).scalars())
            assert "ix_studies_accession" in plan, plan
            invalid = conn.execute(text("SELECT count(*) FROM pg_index WHERE NOT indisvalid")).scalar_one()
            assert invalid == 0
        found_uid = conn.execute(text("SELECT study_uid FROM studies WHERE accession_number = :a AND study_date = :d"),
                                 {"a": accession, "d": date}).scalar_one()
    assert found_uid == "1.2.3"


@pytest.mark.postgres
def test_string_columns_have_the_type_and_length_schema_py_declares(postgres: Postgres) -> None:
    """What the migrations build agrees with ``schema.py`` on text types, not only on names (on PostgreSQL,
    which enforces lengths; SQLite ignores them)."""
    from sqlalchemy import String, Text, inspect

    from pacsbridge.backends.sql import schema

    engine = make_engine(postgres.new_database())
    migrate(engine)
    found = inspect(engine)
    wrong = {}
    for table in schema.metadata.sorted_tables:
        types = {c["name"]: c["type"] for c in found.get_columns(table.name)}
        for column in table.columns:
            if not isinstance(column.type, String):
                continue
            declared = "TEXT" if isinstance(column.type, Text) else f"VARCHAR({column.type.length})"
            actual = types[column.name]
            built = "TEXT" if isinstance(actual, Text) else f"VARCHAR({getattr(actual, 'length', None)})"
            if built != declared:
                wrong[f"{table.name}.{column.name}"] = (declared, built)
    assert wrong == {}
