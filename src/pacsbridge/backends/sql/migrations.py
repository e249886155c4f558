"""Schema versions and the steps between them, so an upgrade keeps existing data.

Rules:
1. ``MIGRATIONS[n]`` turns a version-n database into version n+1; version 0 is an empty database.
   A fresh database walks the same steps as an old one, so there is one path to test.
2. Steps are frozen: a released step is never edited (it creates or alters tables with its own DDL,
   never with ``schema.py``, which describes only the newest shape); a fix is a new step.
3. Each step runs in its own transaction together with the version bump.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
)

from . import schema

Step = Callable[[Connection], None]


def _create_v1(conn: Connection) -> None:
    """Studies, series and instances with their matching columns and DICOM JSON attributes."""
    v1 = MetaData()
    studies = Table(
        "studies", v1,
        Column("study_uid", String(64), primary_key=True),
        Column("patient_id", String(64)), Column("issuer_of_patient_id", String(64)),
        Column("patient_name", String(400)), Column("patient_name_tokens", String(420)),
        Column("patient_birth_date", String(8)), Column("patient_sex", String(16)),
        Column("study_date", String(8)), Column("study_time", String(13)),
        Column("accession_number", String(16)),
        Column("referring_physician_name", String(400)), Column("referring_physician_name_tokens", String(420)),
        Column("study_id", String(16)), Column("study_description", String(64)),
        Column("attributes", Text, nullable=False), Column("updated_at", String(32), nullable=False),
    )
    Index("ix_studies_patient_id", studies.c.patient_id)
    Index("ix_studies_patient_name", studies.c.patient_name)
    Index("ix_studies_study_date", studies.c.study_date)
    Index("ix_studies_accession", studies.c.accession_number)
    series = Table(
        "series", v1,
        Column("series_uid", String(64), primary_key=True),
        Column("study_uid", String(64), ForeignKey("studies.study_uid", ondelete="CASCADE"), nullable=False),
        Column("modality", String(16)), Column("series_number", Integer),
        Column("series_description", String(64)), Column("series_date", String(8)),
        Column("body_part_examined", String(16)), Column("pps_start_date", String(8)),
        Column("pps_start_time", String(13)), Column("attributes", Text, nullable=False),
    )
    Index("ix_series_study", series.c.study_uid)
    Index("ix_series_modality", series.c.modality)
    instances = Table(
        "instances", v1,
        Column("sop_uid", String(64), primary_key=True),
        Column("series_uid", String(64), ForeignKey("series.series_uid", ondelete="CASCADE"), nullable=False),
        Column("study_uid", String(64), nullable=False), Column("sop_class_uid", String(64), nullable=False),
        Column("instance_number", Integer), Column("transfer_syntax", String(64), nullable=False),
        Column("number_of_frames", Integer, nullable=False), Column("path", String(1024), nullable=False),
        Column("size", Integer, nullable=False), Column("attributes", Text, nullable=False),
        Column("metadata", Text, nullable=False), Column("stored_at", String(32), nullable=False),
    )
    Index("ix_instances_series", instances.c.series_uid, instances.c.instance_number)
    Index("ix_instances_study", instances.c.study_uid)
    Index("ix_instances_sop_class", instances.c.sop_class_uid)
    v1.create_all(conn)


def _counts_v2(conn: Connection) -> None:
    """Keep the computed QIDO attributes in the rows (counts, modalities, SOP classes in study).

    A search then reads one row per match instead of aggregating over instances for every page.
    """
    for statement in (
        "ALTER TABLE studies ADD COLUMN num_series INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE studies ADD COLUMN num_instances INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE studies ADD COLUMN modalities TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE studies ADD COLUMN sop_classes TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE series ADD COLUMN num_instances INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX ix_series_study_modality ON series (study_uid, modality)",
        "CREATE INDEX ix_instances_study_sop_class ON instances (study_uid, sop_class_uid)",
        "CREATE INDEX ix_studies_sort ON studies (study_date, study_time, study_uid)",
    ):
        conn.execute(text(statement))
    from .counts import refresh_study

    for study_uid in conn.execute(text("SELECT study_uid FROM studies")).scalars().all():
        refresh_study(conn, study_uid)


def _pixel_layout_v3(conn: Connection) -> None:
    """Keep where each instance's Pixel Data sits, so that a frame is one read at a known offset.

    Rows stored before stay NULL: their frames are found by parsing the header, as before.
    """
    conn.execute(text("ALTER TABLE instances ADD COLUMN pixel_layout TEXT"))


def _security_v4(conn: Connection) -> None:
    """The built-in issuer's clients, signing keys and used client assertions, and the audit trail."""
    v4 = MetaData()
    Table(
        "oauth_clients", v4,
        Column("client_id", String(128), primary_key=True),
        Column("name", String(256), nullable=False),
        Column("secret_hash", String(256)), Column("jwks", Text),
        Column("scopes", Text, nullable=False), Column("created_at", String(32), nullable=False),
        Column("disabled", Integer, nullable=False, server_default="0"),
    )
    Table(
        "signing_keys", v4,
        Column("kid", String(64), primary_key=True), Column("algorithm", String(16), nullable=False),
        Column("private_jwk", Text, nullable=False), Column("created_at", String(32), nullable=False),
        Column("retired_at", String(32)),
    )
    Table(
        "used_assertions", v4,
        Column("jti", String(256), primary_key=True), Column("expires_at", Integer, nullable=False),
    )
    audit = Table(
        "audit_events", v4,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("recorded_at", String(32), nullable=False),
        Column("subject", String(256), nullable=False), Column("client_id", String(256)),
        Column("door", String(32), nullable=False), Column("action", String(16), nullable=False),
        Column("method", String(16), nullable=False), Column("route", String(512), nullable=False),
        Column("status", Integer, nullable=False),
        Column("patient_ids", Text, nullable=False), Column("study_uids", Text, nullable=False),
        Column("remote", String(64)), Column("detail", Text),
    )
    Index("ix_audit_recorded_at", audit.c.recorded_at)
    Index("ix_audit_subject", audit.c.subject, audit.c.recorded_at)
    v4.create_all(conn)


def _web_login_v5(conn: Connection) -> None:
    """Built-in users of the HTML pages and browser sessions (the cookie holds a key; its hash is kept)."""
    v5 = MetaData()
    Table(
        "web_users", v5,
        Column("username", String(128), primary_key=True),
        Column("password_hash", String(256), nullable=False), Column("scopes", Text, nullable=False),
        Column("display_name", String(256)), Column("patient_ids", Text),
        Column("disabled", Integer, nullable=False, server_default="0"),
        Column("failures", Integer, nullable=False, server_default="0"),
        Column("locked_until", Integer, nullable=False, server_default="0"),
        Column("created_at", String(32), nullable=False),
    )
    sessions = Table(
        "web_sessions", v5,
        Column("key_hash", String(64), primary_key=True), Column("kind", String(16), nullable=False),
        Column("subject", String(256), nullable=False), Column("client_id", String(256)),
        Column("scopes", Text, nullable=False), Column("patient_ids", Text), Column("name", String(256)),
        Column("csrf", String(64), nullable=False), Column("data", Text),
        Column("created_at", Integer, nullable=False), Column("expires_at", Integer, nullable=False),
        Column("seen_at", Integer, nullable=False),
    )
    Index("ix_web_sessions_expires", sessions.c.expires_at)
    v5.create_all(conn)


def _orders_v6(conn: Connection) -> None:
    """The order loop: FHIR resources we hold (versioned, with a search index), imaging requests and
    their steps, MPPS, study links, stable-study bookkeeping and the outbox of notification jobs."""
    v6 = MetaData()
    Table(
        "fhir_resources", v6,
        Column("type", String(64), primary_key=True), Column("id", String(64), primary_key=True),
        Column("version", Integer, nullable=False), Column("last_updated", String(32), nullable=False),
        Column("deleted", Integer, nullable=False, server_default="0"), Column("resource", Text),
    )
    Table(
        "fhir_history", v6,
        Column("type", String(64), primary_key=True), Column("id", String(64), primary_key=True),
        Column("version", Integer, primary_key=True), Column("last_updated", String(32), nullable=False),
        Column("method", String(8), nullable=False), Column("resource", Text),
    )
    index = Table(
        "fhir_search_index", v6,
        Column("type", String(64), nullable=False), Column("id", String(64), nullable=False),
        Column("param", String(64), nullable=False), Column("system", String(256)), Column("value", String(256)),
        Column("low", String(32)), Column("high", String(32)),
    )
    Index("ix_fhir_search_value", index.c.type, index.c.param, index.c.value)
    Index("ix_fhir_search_id", index.c.type, index.c.id)
    requests = Table(
        "imaging_requests", v6,
        Column("request_id", String(64), primary_key=True), Column("status", String(32), nullable=False),
        Column("accession_number", String(16), nullable=False, unique=True),
        Column("requested_procedure_id", String(16), nullable=False),
        Column("study_uid", String(64), nullable=False), Column("patient_id", String(64), nullable=False),
        Column("attributes", Text, nullable=False), Column("updated_at", String(32), nullable=False),
    )
    Index("ix_requests_study", requests.c.study_uid)
    Index("ix_requests_patient", requests.c.patient_id)
    steps = Table(
        "procedure_steps", v6,
        Column("sps_id", String(16), primary_key=True),
        Column("request_id", String(64), ForeignKey("imaging_requests.request_id", ondelete="CASCADE"),
               nullable=False),
        Column("position", Integer, nullable=False), Column("status", String(16), nullable=False),
        Column("station_ae", String(16)), Column("modality", String(16)),
        Column("start_date", String(8)), Column("start_time", String(16)), Column("item", Text, nullable=False),
    )
    Index("ix_steps_request", steps.c.request_id)
    Index("ix_steps_open", steps.c.status, steps.c.start_date)
    Table(
        "performed_steps", v6,
        Column("sop_uid", String(64), primary_key=True), Column("status", String(16), nullable=False),
        Column("calling_ae", String(16)), Column("sps_ids", Text, nullable=False),
        Column("attributes", Text, nullable=False), Column("created_at", String(32), nullable=False),
        Column("updated_at", String(32), nullable=False),
    )
    links = Table(
        "study_links", v6,
        Column("study_uid", String(64), primary_key=True), Column("request_id", String(64), primary_key=True),
        Column("status", String(16), nullable=False), Column("confidence", Text), Column("differences", Text),
        Column("linked_at", String(32), nullable=False),
    )
    Index("ix_links_request", links.c.request_id)
    Table(
        "study_arrivals", v6,
        Column("study_uid", String(64), primary_key=True), Column("seen_updated_at", String(32), nullable=False),
        Column("handled_at", String(32), nullable=False),
    )
    jobs = Table(
        "outbox_jobs", v6,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("key", String(64), nullable=False, unique=True), Column("subscriber", String(64), nullable=False),
        Column("topic", String(64), nullable=False), Column("payload", Text, nullable=False),
        Column("state", String(16), nullable=False), Column("attempts", Integer, nullable=False, server_default="0"),
        Column("next_attempt_at", Integer, nullable=False),
        Column("locked_until", Integer, nullable=False, server_default="0"),
        Column("last_error", Text), Column("created_at", String(32), nullable=False), Column("done_at", String(32)),
    )
    Index("ix_outbox_due", jobs.c.state, jobs.c.subscriber, jobs.c.id)
    v6.create_all(conn)
    conn.execute(text("CREATE INDEX ix_studies_updated ON studies (updated_at)"))
    # Studies stored before orders existed can name no request: handled, so the first start after the
    # upgrade does not read through the whole archive looking for references.
    conn.execute(text("INSERT INTO study_arrivals (study_uid, seen_updated_at, handled_at) "
                      "SELECT study_uid, updated_at, updated_at FROM studies"))


def _matching_v7(conn: Connection) -> None:
    """Blocking keys of open requests (which requests a study is compared with) and the history of
    every link change; the links made by reference so far get their first event."""
    v7 = MetaData()
    Table("imaging_requests", v7, Column("request_id", String(64), primary_key=True))
    keys = Table(
        "request_keys", v7,
        Column("request_id", String(64), ForeignKey("imaging_requests.request_id", ondelete="CASCADE"),
               primary_key=True),
        Column("key", String(200), primary_key=True),
    )
    Index("ix_request_keys_key", keys.c.key)
    events = Table(
        "study_link_events", v7,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("study_uid", String(64), nullable=False), Column("request_id", String(64), nullable=False),
        Column("status", String(16), nullable=False), Column("actor", String(256), nullable=False),
        Column("reason", Text), Column("confidence", Text), Column("at", String(32), nullable=False),
    )
    Index("ix_link_events_study", events.c.study_uid, events.c.id)
    Index("ix_link_events_request", events.c.request_id)
    v7.create_all(conn, tables=[keys, events])
    conn.execute(text("INSERT INTO study_link_events (study_uid, request_id, status, actor, reason, confidence, at) "
                      "SELECT study_uid, request_id, status, 'pacsbridge', 'the study names the request', "
                      "confidence, linked_at FROM study_links"))


def _study_keys_v8(conn: Connection) -> None:
    """Blocking keys of stable studies left without a link, so that a request arriving after its study
    finds it (retroactive matching)."""
    v8 = MetaData()
    keys = Table(
        "study_keys", v8,
        Column("study_uid", String(64), primary_key=True), Column("key", String(200), primary_key=True),
    )
    Index("ix_study_keys_key", keys.c.key)
    v8.create_all(conn)


def _pending_matches_v9(conn: Connection) -> None:
    """Retroactive matching as durable work: a saved request is matched against waiting studies by the
    arrivals loop, not inside the EMR's POST, and a crash in between loses nothing."""
    v9 = MetaData()
    Table("imaging_requests", v9, Column("request_id", String(64), primary_key=True))
    Table("pending_matches", v9,
          Column("request_id", String(64), ForeignKey("imaging_requests.request_id", ondelete="CASCADE"),
                 primary_key=True),
          Column("since", String(32), nullable=False))
    v9.create_all(conn, tables=[v9.tables["pending_matches"]])


# The columns v10 makes unbounded, as they stood at v9 (a released step does not read schema.py).
_LONG_VALUES_V10 = {
    "studies": ("patient_id", "issuer_of_patient_id", "patient_name", "patient_name_tokens", "patient_birth_date",
                "patient_sex", "study_date", "study_time", "accession_number", "referring_physician_name",
                "referring_physician_name_tokens", "study_id", "study_description"),
    "series": ("modality", "series_description", "series_date", "body_part_examined", "pps_start_date",
               "pps_start_time"),
    "imaging_requests": ("patient_id",),
    "procedure_steps": ("station_ae", "modality", "start_date", "start_time"),
}


def _long_values_v10(conn: Connection) -> None:
    """Columns holding attribute values become unbounded text: real files exceed the VR lengths (an
    accession number over 16 characters, a DA holding a date-time), and PostgreSQL refused to store them
    where SQLite, which ignores declared lengths, kept them. Nothing to do on SQLite.

    On PostgreSQL, VARCHAR(n) to TEXT is binary-coercible: no table rewrite, and the indexes on these
    columns (text_ops either way) are kept as they are."""
    if conn.dialect.name == "sqlite":
        return
    for table, columns in _LONG_VALUES_V10.items():
        changes = ", ".join(f"ALTER COLUMN {column} TYPE TEXT" for column in columns)
        conn.execute(text(f"ALTER TABLE {table} {changes}"))


def _big_files_v11(conn: Connection) -> None:
    """An instance's size in bytes becomes a 64-bit integer: a multi-frame object (whole-slide image,
    long cine) can pass 2 GiB, which PostgreSQL's 32-bit integer refused. SQLite's integers are 64-bit
    already. On PostgreSQL this rewrites the instances table once."""
    if conn.dialect.name == "sqlite":
        return
    conn.execute(text("ALTER TABLE instances ALTER COLUMN size TYPE BIGINT"))


MIGRATIONS: Sequence[Step] = (_create_v1, _counts_v2, _pixel_layout_v3, _security_v4, _web_login_v5, _orders_v6,
                              _matching_v7, _study_keys_v8, _pending_matches_v9, _long_values_v10, _big_files_v11)


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
