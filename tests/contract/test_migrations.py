"""Schema migrations keep existing data (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, text

from pacsbridge.backends.local import make_engine
from pacsbridge.backends.sql.migrations import MIGRATIONS, current_version, migrate


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
