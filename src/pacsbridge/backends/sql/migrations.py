"""Schema versions and the steps between them, so an upgrade keeps existing data.

Rules:
1. ``MIGRATIONS[n]`` turns a version-n database into version n+1; version 0 is an empty database.
2. Steps are append-only: a released step is never edited, a fix is a new step.
3. Each step runs in its own transaction together with the version bump.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Connection, Engine, inspect, select

from . import schema

Step = Callable[[Connection], None]


def _create_v1(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.studies, schema.series, schema.instances])


MIGRATIONS: Sequence[Step] = (_create_v1,)


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_version"):
        return 0
    row = conn.execute(select(schema.schema_version.c.version)).first()
    return int(row[0]) if row else 0


def migrate(engine: Engine, steps: Sequence[Step] = MIGRATIONS) -> tuple[int, int]:
    """Bring the database to the newest version; returns (version before, version after)."""
    with engine.begin() as conn:
        schema.metadata.create_all(conn, tables=[schema.schema_version])
        before = current_version(conn)
        if before == 0 and conn.execute(select(schema.schema_version)).first() is None:
            conn.execute(schema.schema_version.insert().values(version=0))
    if before > len(steps):
        raise RuntimeError(
            f"the index is at schema version {before}, newer than this pacsbridge knows ({len(steps)}); "
            "upgrade pacsbridge"
        )
    for version in range(before, len(steps)):
        with engine.begin() as conn:
            steps[version](conn)
            conn.execute(schema.schema_version.update().values(version=version + 1))
    return before, len(steps)
