"""Our DIMSE SCP: C-ECHO, C-STORE for every storage SOP class, C-FIND, C-GET and C-MOVE in the Patient
Root and Study Root information models, over the same use cases as DICOMweb.

See: PS3.7 §9.1 (DIMSE-C services and their statuses), PS3.4 Annex B (Storage), Annex C (Query/Retrieve);
docs/dimse.md.

Rules:
1. pynetdicom runs each association in its own thread; the handlers hand the work to the app's event
   loop through an anyio portal, so C-STORE goes through ``IngestService`` like STOW-RS and C-FIND
   through ``SearchService`` like QIDO-RS, with the caller's principal (``access.py``) and its
   patient context.
2. Every request touching patient data is an audit event of door ``dimse`` (subject ``ae:<TITLE>``,
   route the SOP class, status the DIMSE status).
3. Limits: ``max_associations`` at once, ACSE/DIMSE/network timeouts; an abort or a timeout ends the
   association's thread, and ``stop`` closes the listener and every open association.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from anyio.from_thread import BlockingPortal
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from ...dimse_tuning import no_delay, quiet_identifiers
from ...domain.access import Principal
from ...domain.audit import AccessNote, AuditEvent
from ...domain.clock import utc_stamp
from ...domain.errors import InvalidInput, NotFound, PacsbridgeError, without_values
from ...domain.model import Level, Origin, Scope, StoredInstance
from ...domain.query import Match, MatchKind, Query
from ...domain.scopes import DICOMWEB_READ, DICOMWEB_SEARCH, DICOMWEB_WRITE
from ...domain.store import FailureReason, StoreResult
from ...formats.dicom_json import first_value
from ...formats.dimse_query import find_query, find_response, patients, retrieve_scopes
from ...services import audit
from ...services.ingest import IngestService, write_failure
from ...services.ports import AuditTrail
from ...services.retrieve import RetrieveService
from ...services.search import PATIENT_ID, SearchService
from .access import PeerAccess
from .errors import IDENTIFIER_DOES_NOT_MATCH, UNABLE_TO_PROCESS, status_dataset, status_for
from .workflow import Workflow, find_worklist, mpps_create, mpps_set

log = logging.getLogger(__name__)
T = TypeVar("T")

SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
NOT_AUTHORIZED = 0x0124  # "Refused: Not Authorized" (PS3.4 B.2.3), for every refused request
OUT_OF_RESOURCES = 0xA700
FIND_MODELS = {
    PatientRootQueryRetrieveInformationModelFind: "Patient Root",
    StudyRootQueryRetrieveInformationModelFind: "Study Root",
}
RETRIEVE_MODELS = {
    PatientRootQueryRetrieveInformationModelGet: "Patient Root",
    StudyRootQueryRetrieveInformationModelGet: "Study Root",
    PatientRootQueryRetrieveInformationModelMove: "Patient Root",
    StudyRootQueryRetrieveInformationModelMove: "Study Root",
}
MOVE_DESTINATION_UNKNOWN = 0xA801


@dataclass(frozen=True)
class Route:
    """What one called AE title of ours serves: the embedded archive or an upstream."""

    search: SearchService
    ingest: IngestService
    retrieve: RetrieveService


@dataclass(frozen=True)
class DimseConfig:
    ae_title: str
    host: str
    port: int
    max_associations: int = 16
    acse_timeout_s: float = 30
    dimse_timeout_s: float = 60
    network_timeout_s: float = 60
    max_find_results: int = 10_000


class DimseDoor:
    """The SCP; ``start`` it with a portal into the app's event loop, ``stop`` it at shutdown."""

    def __init__(self, config: DimseConfig, access: PeerAccess, routes: dict[str, Route], trail: AuditTrail,
                 deliveries: dict[str, IngestService] | None = None, workflow: Workflow | None = None) -> None:
        """``routes`` by called AE title (``config.ae_title`` among them); ``deliveries`` by upstream name:
        where a supplier's C-STOREs go (its cache); ``workflow``: the worklist and MPPS (None: not offered)."""
        self.config = config
        self.workflow = workflow
        self.access = access
        self.routes = {title.strip(): route for title, route in routes.items()}
        self.deliveries = deliveries or {}
        self.trail = trail
        self.portal: BlockingPortal | None = None
        self.ae: AE | None = None
        self.server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The port listened on (the configured one, or the one the system chose for port 0)."""
        assert self.server is not None
        return int(self.server.server_address[1])

    def start(self, portal: BlockingPortal) -> None:
        self.portal = portal
        quiet_identifiers()
        ae = self.ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.acse_timeout = self.config.acse_timeout_s
        ae.dimse_timeout = self.config.dimse_timeout_s
        ae.network_timeout = self.config.network_timeout_s
        ae.require_called_aet = True  # one of ours: _called makes the acceptor answer as the title called
        if not self.access.open_to_any_ae:
            # pynetdicom accepts everyone when the list is empty; with no peers, a title nobody uses.
            ae.require_calling_aet = self.access.callers() or [secrets.token_hex(8).upper()]
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            # Either role: we receive C-STORE, and send C-STORE back on a C-GET's own association.
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        for model in (*FIND_MODELS, *RETRIEVE_MODELS):
            ae.add_supported_context(model)
        handlers = [(evt.EVT_CONN_OPEN, no_delay), (evt.EVT_REQUESTED, self._called),
                    (evt.EVT_C_ECHO, self._echo), (evt.EVT_C_STORE, self._store),
                    (evt.EVT_C_FIND, self._find),
                    (evt.EVT_C_GET, self._get), (evt.EVT_C_MOVE, self._move)]
        if self.workflow is not None:
            ae.add_supported_context(ModalityWorklistInformationFind)
            ae.add_supported_context(ModalityPerformedProcedureStep)
            handlers += [(evt.EVT_N_CREATE, self._n_create), (evt.EVT_N_SET, self._n_set)]
        self.server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        log.info("DIMSE SCP %s listening on %s:%d", self.config.ae_title, self.config.host, self.port)

    def stop(self) -> None:
        """Close the listener and abort every open association (the server's own shutdown only closes
        the listener; the AE's also ends the associations)."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if self.ae is not None:
            self.ae.shutdown()
            self.ae = None

    # --- handlers (called in pynetdicom's association threads) ------------------------------------

    def _call(self, work: Callable[[], Awaitable[T]]) -> T:
        assert self.portal is not None
        return self.portal.call(work)

    def _called(self, event: Any) -> None:
        """Before negotiation: answer as the AE title called when it is one of ours (else pynetdicom
        rejects the association: called AE title not recognised)."""
        called = str(event.assoc.requestor.primitive.called_ae_title).strip()
        if called in self.routes:
            event.assoc.acceptor.ae_title = called

    def _route(self, event: Any) -> tuple[str, Route]:
        title = str(event.assoc.acceptor.ae_title).strip()
        return title, self.routes.get(title) or self.routes[self.config.ae_title]

    def _principal(self, event: Any) -> Principal | None:
        requestor = event.assoc.requestor
        return self.access.principal(str(requestor.ae_title), str(requestor.address))

    def _record(self, event: Any, principal: Principal | None, action: str, command: str, route: str,
                status: int, note: AccessNote | None = None) -> None:
        requestor = event.assoc.requestor
        self.trail.record(AuditEvent(
            recorded_at=utc_stamp(), subject=principal.subject if principal else f"ae:{requestor.ae_title}",
            client_id=str(requestor.ae_title), door="dimse", action=action, method=command, route=route,
            status=status, patient_ids=tuple(sorted(note.patient_ids)) if note else (),
            study_uids=tuple(sorted(note.study_uids)) if note else (), remote=str(requestor.address),
        ))

    def _echo(self, event: Any) -> int:
        return SUCCESS

    def _store(self, event: Any) -> Dataset | int:
        requestor = event.assoc.requestor
        supplier = self.access.supplier(str(requestor.ae_title), str(requestor.address))
        if supplier is not None and supplier.upstream in self.deliveries:
            return self._deliver(event, supplier.upstream)
        principal = self._principal(event)
        sop_class = str(event.request.AffectedSOPClassUID)
        if principal is None or not principal.allows(DICOMWEB_WRITE):
            self._record(event, principal, "create", "C-STORE", sop_class, NOT_AUTHORIZED)
            return status_dataset(NOT_AUTHORIZED, "this AE may not store here")
        ingest = self._route(event)[1].ingest
        origin = Origin("c-store", str(requestor.address), principal.subject)
        try:
            staged = _spool(event, ingest)
        except OSError as exc:  # disk full or an I/O error: nothing is kept, the SCU may retry
            status, reason = _write_status(exc)
            self._record(event, principal, "create", "C-STORE", sop_class, status)
            return status_dataset(status, reason)

        async def store() -> tuple[StoreResult, AccessNote]:
            with audit.noting() as note:
                return await ingest.store_file(staged, origin), note

        try:
            result, note = self._call(store)
        except Exception as exc:  # the archive failed: the SCU may retry
            log.error("C-STORE could not be stored: %s", without_values(exc))
            staged.unlink(missing_ok=True)
            self._record(event, principal, "create", "C-STORE", sop_class, OUT_OF_RESOURCES)
            return status_dataset(OUT_OF_RESOURCES, "the archive could not store the instance")
        status = int(result.failure) if result.failure else int(result.warning) if result.warning else SUCCESS
        reason = result.reason
        if result.failure == FailureReason.PROCESSING_FAILURE and not reason:
            status, reason = UNABLE_TO_PROCESS, "the instance could not be processed"
        self._record(event, principal, "create", "C-STORE", sop_class, status, note)  # the status we answer
        return status_dataset(status, reason) if status != SUCCESS else SUCCESS

    def _deliver(self, event: Any, upstream: str) -> Dataset | int:
        """A supplier's C-STORE (the result of our C-MOVE): into that upstream's cache, as fetched data."""
        ingest = self.deliveries[upstream]
        origin = Origin("c-move-result", str(event.assoc.requestor.address), f"upstream:{upstream}")
        try:
            staged = _spool(event, ingest)
        except OSError as exc:
            return status_dataset(*_write_status(exc))
        try:
            result = self._call(lambda: ingest.store_file(staged, origin))
        except Exception as exc:
            log.error("upstream %s: a C-MOVE result could not be cached: %s", upstream, without_values(exc))
            staged.unlink(missing_ok=True)
            return status_dataset(OUT_OF_RESOURCES, "the cache could not store the instance")
        if result.failure:
            return status_dataset(int(result.failure), result.reason)
        return SUCCESS

    def _find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        principal = self._principal(event)
        if str(event.request.AffectedSOPClassUID) == ModalityWorklistInformationFind and self.workflow is not None:
            yield from find_worklist(event, self.workflow, principal, self._call, self._record,
                                     self.config.max_find_results)
            return
        model = FIND_MODELS.get(str(event.request.AffectedSOPClassUID), "C-FIND")
        if principal is None or not principal.allows(DICOMWEB_SEARCH):
            self._record(event, principal, "search", "C-FIND", model, NOT_AUTHORIZED)
            yield status_dataset(NOT_AUTHORIZED, "this AE may not query here"), None
            return
        try:
            level, query, requested = find_query(event.identifier)
        except (InvalidInput, ValueError) as exc:
            message = exc.message if isinstance(exc, InvalidInput) else "the identifier cannot be read"
            self._record(event, principal, "search", "C-FIND", model, IDENTIFIER_DOES_NOT_MATCH)
            yield status_dataset(IDENTIFIER_DOES_NOT_MATCH, message), None
            return
        cap = self.config.max_find_results
        title, route = self._route(event)

        async def run() -> tuple[list[dict[str, Any]], AccessNote]:
            with audit.noting() as note:
                if level != "PATIENT":
                    page = await route.search.search(replace(query, limit=cap + 1), principal)
                    return page.results, note
                # The archive answers studies, grouped into patients below, and the cap counts patients:
                # read pages of studies until they run out (every patient's count is then whole) or
                # until there are more patients than the cap (the answer is A700 anyway).
                studies: list[dict[str, Any]] = []
                while True:
                    page = await route.search.search(replace(query, limit=cap + 1, offset=len(studies)), principal)
                    studies += page.results
                    if len(page.results) <= cap or len(patients(studies)) > cap:
                        return studies, note

        try:
            results, note = self._call(run)
        except PacsbridgeError as exc:
            status = status_for(exc)
            self._record(event, principal, "search", "C-FIND", model, status)
            yield status_dataset(status, exc.message), None
            return
        if level == "PATIENT":
            results = patients(results)
        too_many = len(results) > cap
        for result in results[:cap]:
            if event.is_cancelled:
                self._record(event, principal, "search", "C-FIND", model, CANCEL, note)
                yield CANCEL, None
                return
            yield PENDING, find_response(result, requested, level, title)
        if too_many:
            self._record(event, principal, "search", "C-FIND", model, OUT_OF_RESOURCES, note)
            yield status_dataset(OUT_OF_RESOURCES, f"more than {cap} matches: narrow the query"), None
            return
        self._record(event, principal, "search", "C-FIND", model, SUCCESS, note)
        yield SUCCESS, None


    def _n_create(self, event: Any) -> tuple[Dataset | int, Dataset | None]:
        if self.workflow is None or str(event.request.AffectedSOPClassUID) != ModalityPerformedProcedureStep:
            return status_dataset(0x0122, "SOP class not supported"), None
        return mpps_create(event, self.workflow, self._principal(event), self._call, self._record)

    def _n_set(self, event: Any) -> tuple[Dataset | int, Dataset | None]:
        if self.workflow is None or str(event.request.RequestedSOPClassUID) != ModalityPerformedProcedureStep:
            return status_dataset(0x0122, "SOP class not supported"), None
        return mpps_set(event, self.workflow, self._principal(event), self._call, self._record)

    # --- C-GET and C-MOVE ---------------------------------------------------------------------------

    def _get(self, event: Any) -> Iterator[Any]:
        yield from self._retrieve(event, "C-GET", None)

    def _move(self, event: Any) -> Iterator[Any]:
        yield from self._retrieve(event, "C-MOVE", str(event.move_destination).strip())

    def _retrieve(self, event: Any, command: str, destination: str | None) -> Iterator[Any]:
        """pynetdicom's C-GET/C-MOVE protocol: (for a move, the destination's address first), the number
        of sub-operations, then (status, dataset) per instance; it sends them and counts the outcomes."""
        principal = self._principal(event)
        model = RETRIEVE_MODELS.get(str(event.request.AffectedSOPClassUID), command)
        peer = None
        if destination is not None:
            peer = self.access.destination(destination)
            if peer is None:  # known before any lookup: nothing to find for nobody
                self._record(event, principal, "read", command, model, MOVE_DESTINATION_UNKNOWN)
                yield None, None  # pynetdicom answers A801 Move Destination Unknown
                return
        found = self._locate(event, principal)
        if peer is not None:
            yield peer.host, peer.port, {"contexts": _contexts_for(found.instances if isinstance(found, Found) else [])}
        if isinstance(found, Refusal):
            self._record(event, principal, "read", command, model, found.status)
            yield 1  # pynetdicom's way to a final failure status: one announced sub-operation, then the status
            yield status_dataset(found.status, found.comment), None
            return
        instances, note = found
        yield len(instances)
        # The audit event is written however the retrieve ends: pynetdicom stops asking this generator
        # after a final status or when the association goes, and closes it (GeneratorExit) later.
        outcome = UNABLE_TO_PROCESS  # the status recorded if it ends before a final answer (an abort)
        try:
            for stored in instances:
                if event.is_cancelled:
                    outcome = CANCEL
                    yield CANCEL, None
                    return
                try:
                    ds = dcmread(stored.path)
                except Exception:  # pynetdicom takes a failure yielded here as the final answer
                    log.warning("%s: a stored instance cannot be read", command)
                    yield status_dataset(UNABLE_TO_PROCESS, "a stored instance cannot be read"), None
                    return
                yield PENDING, ds
            outcome = SUCCESS
        finally:
            self._record(event, principal, "read", command, model, outcome, note)

    def _locate(self, event: Any, principal: Principal | None) -> Found | Refusal:
        """The instances a retrieve asks for and the caller may have, or why it is refused."""
        if principal is None or not principal.allows(DICOMWEB_READ):
            return Refusal(NOT_AUTHORIZED, "this AE may not retrieve here")
        try:
            _level, scopes, patient = retrieve_scopes(event.identifier)
        except (InvalidInput, ValueError) as exc:
            return Refusal(IDENTIFIER_DOES_NOT_MATCH,
                           exc.message if isinstance(exc, InvalidInput) else "unreadable identifier")

        route = self._route(event)[1]

        async def locate() -> Found:
            with audit.noting() as note:
                targets = scopes
                if patient is not None:
                    query = Query(Level.STUDY, (Match(PATIENT_ID, "LO", MatchKind.SINGLE, value=patient),))
                    page = await route.search.search(query, principal)
                    # An upstream matches by its own rules (Orthanc folds case): keep exactly this patient.
                    targets = [Scope(str(r["0020000D"]["Value"][0])) for r in page.results
                               if "0020000D" in r and first_value(r, PATIENT_ID) == patient]
                found: list[StoredInstance] = []
                for scope in targets:
                    try:
                        found += await route.retrieve.instances(scope, principal)
                    except NotFound:
                        continue
                return Found(found, note)

        try:
            return self._call(locate)
        except PacsbridgeError as exc:
            return Refusal(status_for(exc), exc.message)


class Found(NamedTuple):
    instances: list[StoredInstance]
    note: AccessNote


class Refusal(NamedTuple):
    status: int
    comment: str


def _write_status(exc: OSError) -> tuple[int, str | None]:
    """A C-STORE's status and comment when its spool file could not be written (ingest's mapping)."""
    failed = write_failure(exc)
    assert failed.failure is not None
    return int(failed.failure), failed.reason


def _contexts_for(instances: list[StoredInstance]) -> list[PresentationContext]:
    """What a C-MOVE's association to the destination proposes, per SOP class sent: each stored
    transfer syntax other than the two uncompressed ones in a context of its own, then one context with
    Explicit and Implicit VR Little Endian (at most 128 contexts, PS3.8 §9.3.2.2). In one context with
    the fallbacks, an acceptor picks a single syntax (Orthanc and pynetdicom pick an uncompressed one),
    and the instances stored compressed could then not be sent at all."""
    uncompressed = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for stored in instances:
        if stored.transfer_syntax not in uncompressed:
            wanted[(stored.sop_class_uid, (stored.transfer_syntax,))] = None
    for stored in instances:
        wanted[(stored.sop_class_uid, uncompressed)] = None
    contexts = [build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in list(wanted)[:128]]
    return contexts or [build_context(Verification)]


@contextlib.contextmanager
def one_listener(lock_path: Path) -> Iterator[bool]:
    """True in the one process (of several HTTP workers) that serves DIMSE: whoever holds the lock."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def _spool(event: Any, ingest: IngestService) -> Path:
    """A C-STORE's dataset, with its File Meta, as a sealed spool file (none is left if that fails)."""
    data = event.encoded_dataset(include_meta=True)
    staged, fp = ingest.new_spool_file()
    try:
        with fp:
            fp.write(data)
            ingest.seal(fp)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return staged

