"""The interfaces the use cases need from the world, and the errors each may raise.

Every implementation (local SQL + files, upstream DICOMweb, upstream DIMSE) passes the same contract
suite in ``tests/contract``. Implementations translate their own exceptions into ``domain.errors``
at this seam: ``NotFound`` for an unknown UID, ``UpstreamUnavailable`` for a remote that failed,
``InvalidInput`` for a query the archive cannot run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..domain.audit import AuditEvent, AuditFilter
from ..domain.model import DicomJson, InstanceRecord, Scope, StoredInstance
from ..domain.orders import ImagingRequest, ScheduledStep
from ..domain.query import Query
from ..formats.worklist import WorklistPrefilter


@dataclass(frozen=True)
class SearchPage:
    """Results of one page; ``remaining`` counts matches beyond this page (for the 299 warning): exactly
    from our own index, at least 1 from an upstream that was asked for one more than the page."""

    results: list[DicomJson] = field(default_factory=list)
    remaining: int = 0


class Spool(Protocol):
    """Where incoming instance bytes are written before they are stored (same file system)."""

    def new_spool_file(self) -> tuple[Path, BinaryIO]:
        """A fresh file open for binary writing; the caller seals it and removes it on failure."""
        ...

    def seal(self, fp: BinaryIO) -> None:
        """Close a finished spool file, durably (fsync) where the store is durable; archives take
        staged files as written once sealed, so that fsyncs run in the writers' threads, in parallel."""
        ...


class Archive(Protocol):
    """Where images live."""

    async def store_many(self, items: Sequence[tuple[Path, InstanceRecord]]) -> list[bool | Exception]:
        """Take ownership of staged Part 10 files and index them (one index transaction where the archive
        can); each file is moved into place atomically.

        One outcome per item, in order: True if it replaced an instance, False if new, or the exception
        that kept it out (then nothing of it is indexed and its staged file, if still there, is the
        caller's). One failing item never fails the others.
        """
        ...

    async def search(self, query: Query) -> SearchPage:
        """Run a query; results carry the level's required return attributes (without RetrieveURL)."""
        ...

    async def locate(self, scope: Scope) -> list[StoredInstance]:
        """The instances in a scope, ordered by series then instance number; NotFound if none.

        ``StoredInstance.path`` is a local file (an upstream archive fetches into its cache first).
        """
        ...

    async def metadata(self, scope: Scope) -> list[str]:
        """The stored WADO-RS metadata JSON text of each instance in a scope; NotFound if none."""
        ...

    async def patient_of(self, study_uid: str) -> str | None:
        """The PatientID of a study (for patient context checks); NotFound if the study is unknown."""
        ...

    async def delete(self, scope: Scope) -> int:
        """Remove a scope's instances and files; the number removed."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ClientRecord:
    """A client of the built-in issuer. ``secret_hash`` for client_secret_basic/post, ``jwks`` (its
    public keys) for private_key_jwt; the secret itself is never kept."""

    client_id: str
    name: str
    scopes: frozenset[str]
    secret_hash: str | None = None
    jwks: dict[str, object] | None = None
    disabled: bool = False


@dataclass(frozen=True)
class SigningKeyRecord:
    """A signing key of the built-in issuer; ``retired_at`` (ISO UTC) set once a newer key signs."""

    kid: str
    algorithm: str
    private_jwk: dict[str, object]
    created_at: str
    retired_at: str | None = None


class SecurityRecords(Protocol):
    """The built-in issuer's own records: clients, signing keys, used client assertions."""

    async def client(self, client_id: str) -> ClientRecord | None: ...

    async def clients(self) -> list[ClientRecord]: ...

    async def add_client(self, client: ClientRecord) -> None:
        """Store a new client; Conflict if its client_id exists."""
        ...

    async def signing_keys(self) -> list[SigningKeyRecord]:
        """Every key, oldest first."""
        ...

    async def add_signing_key(self, key: SigningKeyRecord, retire_others_at: str | None) -> None:
        """Store a key; with ``retire_others_at``, mark every key not yet retired as retired then."""
        ...

    async def drop_signing_keys(self, retired_before: str) -> int:
        """Remove keys retired before this time (their tokens have expired); the number removed."""
        ...

    async def use_assertion(self, key: str, expires_at: int) -> bool:
        """Remember a client assertion's ``jti`` until it expires; False if it was used already."""
        ...


@dataclass(frozen=True)
class UserRecord:
    """A built-in user who signs in to the HTML pages with a password (sites without an identity
    provider). ``scopes`` are what the user's session is granted; ``patient_ids`` binds it to patients."""

    username: str
    password_hash: str
    scopes: frozenset[str]
    display_name: str | None = None
    patient_ids: frozenset[str] | None = None
    disabled: bool = False
    failures: int = 0  # failed sign-ins in a row
    locked_until: int = 0  # epoch seconds; sign-in refused before then


@dataclass(frozen=True)
class WebSession:
    """A browser's sign-in with us, kept server-side; the cookie carries only a random key whose SHA-256
    (``key_hash``) is stored. ``kind`` is "login" while an OIDC sign-in is under way (``data`` holds its
    state, nonce, PKCE verifier and where to go next), then "session" (``data`` may hold the ID token)."""

    key_hash: str
    kind: str
    subject: str
    csrf: str
    created_at: int
    expires_at: int
    seen_at: int
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    patient_ids: frozenset[str] | None = None
    name: str | None = None
    data: dict[str, str] | None = None


class WebLoginRecords(Protocol):
    """Built-in users and browser sessions."""

    async def user(self, username: str) -> UserRecord | None: ...

    async def users(self) -> list[UserRecord]: ...

    async def put_user(self, user: UserRecord, *, create: bool) -> None:
        """Store a user; with ``create``, Conflict if the username exists, else NotFound if it does not."""
        ...

    async def remove_user(self, username: str) -> bool: ...

    async def note_sign_in(self, username: str, succeeded: bool, lock_after: int, lock_until: int) -> None:
        """Count a failed sign-in, in one statement (workers may race): the ``lock_after``-th in a row
        locks the user until ``lock_until`` (epoch seconds). A successful one clears the count."""
        ...

    async def session(self, key_hash: str) -> WebSession | None: ...

    async def put_session(self, session: WebSession) -> None:
        """Store a new session and drop expired ones."""
        ...

    async def touch_session(self, key_hash: str, seen_at: int) -> None: ...

    async def drop_session(self, key_hash: str) -> None: ...

    async def drop_sessions_of(self, subject: str) -> int:
        """End every session of this subject (after a password change, disabling or removal)."""
        ...


class AuditTrail(Protocol):
    """Where audit events are kept (durably, within a short write-behind window)."""

    def record(self, event: AuditEvent) -> None:
        """Queue an event; never blocks the request that caused it."""
        ...

    async def flush(self) -> None:
        """Write every queued event now."""
        ...

    async def search(self, query: AuditFilter) -> list[AuditEvent]:
        """Matching events, newest first."""
        ...


# --- the order loop: FHIR resources we hold, requests, steps, MPPS, links, notifications --------------


@dataclass(frozen=True)
class IndexEntry:
    """One search-index row of a stored FHIR resource: a token (system, value), a folded string or a
    ``Type/id`` reference (value), or a date's UTC range (low, high as ISO text)."""

    param: str
    system: str | None = None
    value: str | None = None
    low: str | None = None
    high: str | None = None


@dataclass(frozen=True)
class ResourceVersion:
    """One version of a FHIR resource we hold (``resource`` is None for a deletion)."""

    type: str
    id: str
    version: int
    last_updated: str  # FHIR instant
    resource: dict[str, Any] | None
    method: str = "PUT"


@dataclass(frozen=True)
class ResourceWrite:
    """A new version of one resource; ``expected`` is the version it replaces (0: it must not exist),
    checked in the same transaction (Conflict when another writer came first)."""

    version: ResourceVersion
    expected: int
    index: tuple[IndexEntry, ...] = ()


@dataclass(frozen=True)
class Notification:
    """Something subscribers are told about (``topic``), with its JSON payload; the outbox gives each
    subscriber's copy its own idempotency key."""

    topic: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class PerformedStep:
    """An MPPS instance as the modality reported it (attributes merged over its N-SETs)."""

    sop_uid: str
    status: str  # IN PROGRESS | COMPLETED | DISCONTINUED
    calling_ae: str | None
    sps_ids: tuple[str, ...]
    attributes: DicomJson
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class StudyLink:
    """A study linked to the request it answers; ``status`` says how (``domain.links.LinkStatus``).
    Writing one also records an event: ``actor`` (pacsbridge or a person) and ``reason``."""

    study_uid: str
    request_id: str
    status: str
    linked_at: str
    confidence: float | None = None
    differences: tuple[dict[str, Any], ...] = ()
    actor: str = "pacsbridge"
    reason: str | None = None


@dataclass(frozen=True)
class LinkEvent:
    """One change of a link, as kept in its history."""

    study_uid: str
    request_id: str
    status: str
    actor: str
    at: str
    reason: str | None = None
    confidence: float | None = None


@dataclass(frozen=True)
class OrderChange:
    """Everything one use-case step changes, committed in one transaction with its notifications."""

    resources: tuple[ResourceWrite, ...] = ()
    request: ImagingRequest | None = None  # upserted with its steps
    request_keys: tuple[str, ...] | None = None  # the request's blocking keys (replaced when given)
    study_keys: tuple[str, tuple[str, ...]] | None = None  # (study UID, its blocking keys), replaced
    performed: PerformedStep | None = None
    link: StudyLink | None = None
    arrival: tuple[str, str] | None = None  # (study UID, the studies.updated_at handled)
    match_pending: str | None = None  # the request is to be matched against waiting studies; this save's stamp
    matched: tuple[str, str] | None = None  # (request id, stamp) done: cleared unless a later save asked again
    notifications: tuple[Notification, ...] = ()


WorklistFilter = WorklistPrefilter
"""The SQL pre-selection of a worklist query (exact matching is done on the items afterwards)."""


class OrderRecords(Protocol):
    """Our own records of the order loop (SQL, next to the index)."""

    async def commit(self, change: OrderChange) -> None:
        """Apply a change atomically: resource versions (Conflict if one's ``expected`` is stale),
        the request and its steps, an MPPS, a link, a handled arrival, and one outbox job per
        notification and interested subscriber."""
        ...

    async def resource(self, type_: str, id_: str, version: int | None = None) -> ResourceVersion | None:
        """The current version (deleted ones too, with ``resource`` None), or the given version."""
        ...

    async def history(self, type_: str, id_: str) -> list[ResourceVersion]:
        """Every version, newest first."""
        ...

    async def find_resources(self, type_: str, where: Sequence[Any], sort: Sequence[tuple[str, bool]],
                             offset: int, count: int) -> tuple[list[ResourceVersion], int]:
        """A page of current resources matching every criterion (``formats.fhir_search.Criterion``)
        and the total number of matches."""
        ...

    async def request(self, request_id: str) -> ImagingRequest | None: ...

    async def requests_for(self, *, sps_ids: Sequence[str] = (), accession_numbers: Sequence[str] = (),
                           study_uids: Sequence[str] = ()) -> list[ImagingRequest]:
        """The requests having any of these steps, accession numbers or study UIDs."""
        ...

    async def worklist(self, where: WorklistFilter) -> list[tuple[ImagingRequest, ScheduledStep]]:
        """Open steps (scheduled or in progress) of active requests passing the pre-selection."""
        ...

    async def performed(self, sop_uid: str) -> PerformedStep | None: ...

    async def requests_by_keys(self, keys: Sequence[str]) -> list[ImagingRequest]:
        """Active or completed requests having any of these blocking keys (matching candidates)."""
        ...

    async def links_page(self, statuses: Sequence[str] | None, offset: int, limit: int
                         ) -> tuple[list[StudyLink], int]:
        """Links in these statuses (None: all), newest first, and how many there are."""
        ...

    async def studies_by_keys(self, keys: Sequence[str]) -> list[str]:
        """UIDs of stable studies with any of these blocking keys and no acting link (retroactive matching)."""
        ...

    async def pending_matches(self, limit: int) -> list[tuple[str, str]]:
        """(request id, stamp) of saved requests still to be matched against waiting studies, oldest first."""
        ...

    async def link_history(self, study_uid: str) -> list[LinkEvent]:
        """Every change of the study's links, oldest first."""
        ...

    async def links(self, *, study_uid: str | None = None, request_id: str | None = None) -> list[StudyLink]: ...

    async def settled_studies(self, quiet_since: str, limit: int) -> list[tuple[str, str]]:
        """(study UID, updated_at) of studies unchanged since ``quiet_since`` and not handled at that
        updated_at yet, oldest first."""
        ...
