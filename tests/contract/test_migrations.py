"""Schema migrations keep existing data (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from pacsbridge.backends.local import make_engine
from pacsbridge.backends.sql.migrations import MIGRATIONS, current_version, migrate


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("postgres").new_database())


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
