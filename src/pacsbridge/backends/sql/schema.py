"""Tables of the index (the newest shape; ``migrations.py`` builds it). Columns hold what QIDO
matches on; JSON text holds what it returns; counts and modalities are kept by ``counts.py``.

Matching columns are stored in comparable form (``domain.query.normalize_for``): dates as YYYYMMDD,
times padded to HHMMSS.FFFFFF, person names folded to upper case without accents, plus a token column
(``^A^B^``) for fuzzy name matching. The attributes of each level are kept as DICOM JSON text.

Columns holding attribute values (and what is derived from them) are unbounded ``Text`` (v10): real
files exceed the VR lengths (accession numbers over 16 characters, a DA holding a date-time), and
PostgreSQL, unlike SQLite, enforces a declared length, so a bounded column failed the store. UIDs keep
``String(64)`` (ingest refuses longer ones), as do the columns whose values pacsbridge makes itself.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, nullable=False),
)

studies = Table(
    "studies", metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("patient_id", Text),
    Column("issuer_of_patient_id", Text),
    Column("patient_name", Text),
    Column("patient_name_tokens", Text),
    Column("patient_birth_date", Text),
    Column("patient_sex", Text),
    Column("study_date", Text),
    Column("study_time", Text),
    Column("accession_number", Text),
    Column("referring_physician_name", Text),
    Column("referring_physician_name_tokens", Text),
    Column("study_id", Text),
    Column("study_description", Text),
    Column("attributes", Text, nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("num_series", Integer, nullable=False, server_default="0"),
    Column("num_instances", Integer, nullable=False, server_default="0"),
    Column("modalities", Text, nullable=False, server_default=""),
    Column("sop_classes", Text, nullable=False, server_default=""),
)
Index("ix_studies_patient_id", studies.c.patient_id)
Index("ix_studies_patient_name", studies.c.patient_name)
Index("ix_studies_study_date", studies.c.study_date)
Index("ix_studies_accession", studies.c.accession_number)

series = Table(
    "series", metadata,
    Column("series_uid", String(64), primary_key=True),
    Column("study_uid", String(64), ForeignKey("studies.study_uid", ondelete="CASCADE"), nullable=False),
    Column("modality", Text),
    Column("series_number", Integer),
    Column("series_description", Text),
    Column("series_date", Text),
    Column("body_part_examined", Text),
    Column("pps_start_date", Text),
    Column("pps_start_time", Text),
    Column("attributes", Text, nullable=False),
    Column("num_instances", Integer, nullable=False, server_default="0"),
)
Index("ix_series_study", series.c.study_uid)
Index("ix_series_modality", series.c.modality)

instances = Table(
    "instances", metadata,
    Column("sop_uid", String(64), primary_key=True),
    Column("series_uid", String(64), ForeignKey("series.series_uid", ondelete="CASCADE"), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("transfer_syntax", String(64), nullable=False),
    Column("number_of_frames", Integer, nullable=False),
    Column("path", String(1024), nullable=False),
    Column("size", BigInteger, nullable=False),  # bytes: a multi-frame object may pass 2 GiB
    Column("attributes", Text, nullable=False),
    Column("metadata", Text, nullable=False),
    Column("stored_at", String(32), nullable=False),
    Column("pixel_layout", Text),
)
Index("ix_instances_series", instances.c.series_uid, instances.c.instance_number)
Index("ix_instances_study", instances.c.study_uid)
Index("ix_instances_sop_class", instances.c.sop_class_uid)

# --- security records (v4): the built-in issuer and the audit trail -------------------------------

oauth_clients = Table(
    "oauth_clients", metadata,
    Column("client_id", String(128), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("secret_hash", String(256)),  # scrypt, see services/issuer.py; NULL for private_key_jwt clients
    Column("jwks", Text),  # the client's public keys (JSON) for private_key_jwt
    Column("scopes", Text, nullable=False),  # space-separated
    Column("created_at", String(32), nullable=False),
    Column("disabled", Integer, nullable=False, server_default="0"),
)

signing_keys = Table(
    "signing_keys", metadata,
    Column("kid", String(64), primary_key=True),
    Column("algorithm", String(16), nullable=False),
    Column("private_jwk", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("retired_at", String(32)),  # NULL: the key signs; else published until its tokens expired
)

used_assertions = Table(
    "used_assertions", metadata,
    Column("jti", String(256), primary_key=True),  # client_id + " " + jti of a private_key_jwt assertion
    Column("expires_at", Integer, nullable=False),
)

audit_events = Table(
    "audit_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("recorded_at", String(32), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("client_id", String(256)),
    Column("door", String(32), nullable=False),
    Column("action", String(16), nullable=False),
    Column("method", String(16), nullable=False),
    Column("route", String(512), nullable=False),
    Column("status", Integer, nullable=False),
    Column("patient_ids", Text, nullable=False),  # JSON list
    Column("study_uids", Text, nullable=False),  # JSON list
    Column("remote", String(64)),
    Column("detail", Text),
)
Index("ix_audit_recorded_at", audit_events.c.recorded_at)
Index("ix_audit_subject", audit_events.c.subject, audit_events.c.recorded_at)

# --- web sign-in (v5): built-in users and browser sessions ----------------------------------------

web_users = Table(
    "web_users", metadata,
    Column("username", String(128), primary_key=True),
    Column("password_hash", String(256), nullable=False),  # scrypt, see services/issuer.py
    Column("scopes", Text, nullable=False),  # space-separated
    Column("display_name", String(256)),
    Column("patient_ids", Text),  # JSON list; NULL: not bound to patients
    Column("disabled", Integer, nullable=False, server_default="0"),
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("locked_until", Integer, nullable=False, server_default="0"),
    Column("created_at", String(32), nullable=False),
)

web_sessions = Table(
    "web_sessions", metadata,
    Column("key_hash", String(64), primary_key=True),  # SHA-256 of the cookie's random key, hex
    Column("kind", String(16), nullable=False),  # login | session
    Column("subject", String(256), nullable=False),
    Column("client_id", String(256)),
    Column("scopes", Text, nullable=False),
    Column("patient_ids", Text),  # JSON list or NULL
    Column("name", String(256)),
    Column("csrf", String(64), nullable=False),
    Column("data", Text),  # JSON
    Column("created_at", Integer, nullable=False),
    Column("expires_at", Integer, nullable=False),
    Column("seen_at", Integer, nullable=False),
)
Index("ix_web_sessions_expires", web_sessions.c.expires_at)

# --- the order loop (v6): FHIR resources we hold, requests and steps, MPPS, links, jobs -----------

fhir_resources = Table(
    "fhir_resources", metadata,
    Column("type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("last_updated", String(32), nullable=False),
    Column("deleted", Integer, nullable=False, server_default="0"),
    Column("resource", Text),  # JSON of the current version; NULL once deleted
)

fhir_history = Table(
    "fhir_history", metadata,
    Column("type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("last_updated", String(32), nullable=False),
    Column("method", String(8), nullable=False),  # POST | PUT | DELETE
    Column("resource", Text),
)

fhir_search_index = Table(
    "fhir_search_index", metadata,
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", String(256)),
    Column("value", String(256)),  # token code, folded string, "Type/id" reference
    Column("low", String(32)),  # dates: the value's range in UTC, ISO text
    Column("high", String(32)),
)
Index("ix_fhir_search_value", fhir_search_index.c.type, fhir_search_index.c.param, fhir_search_index.c.value)
Index("ix_fhir_search_id", fhir_search_index.c.type, fhir_search_index.c.id)

imaging_requests = Table(
    "imaging_requests", metadata,
    Column("request_id", String(64), primary_key=True),  # the ServiceRequest's id
    Column("status", String(32), nullable=False),
    Column("accession_number", String(16), nullable=False, unique=True),  # services/orders.py: 1 to 16
    Column("requested_procedure_id", String(16), nullable=False),  # the accession's first 16 characters
    Column("study_uid", String(64), nullable=False),
    Column("patient_id", Text, nullable=False),  # the EMR's Patient identifier (v10)
    Column("attributes", Text, nullable=False),  # DICOM JSON above the SPS sequence
    Column("updated_at", String(32), nullable=False),
)
Index("ix_requests_study", imaging_requests.c.study_uid)
Index("ix_requests_patient", imaging_requests.c.patient_id)

procedure_steps = Table(
    "procedure_steps", metadata,
    Column("sps_id", String(16), primary_key=True),
    Column("request_id", String(64), ForeignKey("imaging_requests.request_id", ondelete="CASCADE"),
           nullable=False),
    Column("position", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("station_ae", Text),  # these four: what the mapping wrote into the item (v10)
    Column("modality", Text),
    Column("start_date", Text),
    Column("start_time", Text),
    Column("item", Text, nullable=False),  # the SPS item, DICOM JSON
)
Index("ix_steps_request", procedure_steps.c.request_id)
Index("ix_steps_open", procedure_steps.c.status, procedure_steps.c.start_date)

performed_steps = Table(
    "performed_steps", metadata,
    Column("sop_uid", String(64), primary_key=True),  # the MPPS SOP Instance UID
    Column("status", String(16), nullable=False),
    Column("calling_ae", String(16)),
    Column("sps_ids", Text, nullable=False),  # JSON list of the steps it reports on
    Column("attributes", Text, nullable=False),  # DICOM JSON, merged over N-SETs
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
)

study_links = Table(
    "study_links", metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("request_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # reference | manual | auto-certain | auto-unsure
    Column("confidence", Text),  # a number in [0, 1] as text; NULL for links by reference
    Column("differences", Text),  # JSON list
    Column("linked_at", String(32), nullable=False),
)
Index("ix_links_request", study_links.c.request_id)

study_arrivals = Table(
    "study_arrivals", metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("seen_updated_at", String(32), nullable=False),  # studies.updated_at when it was last handled
    Column("handled_at", String(32), nullable=False),
)

outbox_jobs = Table(
    "outbox_jobs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False, unique=True),  # the idempotency key subscribers see
    Column("subscriber", String(64), nullable=False),
    Column("topic", String(64), nullable=False),
    Column("payload", Text, nullable=False),  # JSON
    Column("state", String(16), nullable=False),  # pending | done | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Integer, nullable=False),  # epoch seconds
    Column("locked_until", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("created_at", String(32), nullable=False),
    Column("done_at", String(32)),
)
Index("ix_outbox_due", outbox_jobs.c.state, outbox_jobs.c.subscriber, outbox_jobs.c.id)
Index("ix_studies_updated", studies.c.updated_at)


# --- matching (v7): the keys that make requests candidates, and the history of every link ----------

request_keys = Table(
    "request_keys", metadata,
    Column("request_id", String(64), ForeignKey("imaging_requests.request_id", ondelete="CASCADE"),
           primary_key=True),
    Column("key", String(200), primary_key=True),  # a blocking key of the matching file
)
Index("ix_request_keys_key", request_keys.c.key)

study_link_events = Table(
    "study_link_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("actor", String(256), nullable=False),  # pacsbridge, or the person who changed it
    Column("reason", Text),
    Column("confidence", Text),
    Column("at", String(32), nullable=False),
)
Index("ix_link_events_study", study_link_events.c.study_uid, study_link_events.c.id)
Index("ix_link_events_request", study_link_events.c.request_id)

study_keys = Table(
    "study_keys", metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("key", String(200), primary_key=True),  # a blocking key of a stable study left without a link
)
Index("ix_study_keys_key", study_keys.c.key)

# --- retroactive matching (v9): requests saved whose waiting studies are still to be matched ---------

pending_matches = Table(
    "pending_matches", metadata,
    Column("request_id", String(64), ForeignKey("imaging_requests.request_id", ondelete="CASCADE"),
           primary_key=True),
    Column("since", String(32), nullable=False),  # the save that asked for it; a later save replaces it
)
