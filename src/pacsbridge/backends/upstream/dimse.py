"""An upstream PACS over DIMSE: C-FIND to search, C-GET or C-MOVE to fetch, C-STORE to forward.

See: PS3.4 C.4.1 (C-FIND), C.4.2 (C-MOVE), C.4.3 (C-GET), C.6.2 (Study Root), B.2 (Storage); PS3.7 §9.1
(statuses), §9.3.2.3 (C-CANCEL); PS3.7 D.3.3.4 (SCP/SCU role selection).

Rules:
1. Calls run in worker threads (pynetdicom blocks), at most ``max_associations`` at once, and
   ``timeout_s`` bounds the connect, the association request and every wait for a message. C-FIND
   associations are kept open for the next search (``kept.py``: a few, for ``KEEP_S`` at most); every
   other call opens its own and releases or aborts it before it returns.
2. Faults become domain errors here (remote.py rule 1): a refused connection, a rejected or aborted
   association -> UpstreamUnavailable; ``timeout_s`` of silence -> UpstreamTimeout; a failure status ->
   UpstreamFailed with the status in hex. Messages name the upstream, never patient data.
3. C-FIND has no paging: after offset+limit matches a C-CANCEL stops the upstream, the responses still
   in flight are drained, and the page is cut locally. A kept association found closed before the
   upstream said anything is not a fault: the search is asked again, once, on a new association.
4. C-GET: hierarchical C-FINDs first (series, then instances) learn which SOP classes to propose, with
   our SCP role; the instances arrive on the same association, each into a sealed spool file. An SCP
   picks one transfer syntax per context (Orthanc the uncompressed one, transcoding), so each class
   gets a context with every transfer syntax first, then, as far as the 127 contexts go, one context
   per common compressed syntax: an instance stored in one of those arrives as stored.
5. C-MOVE sends the instances to ``move_destination`` (our own SCP, which stores them): fetch yields
   nothing then. A failed C-MOVE that moved nothing is NotFound when a C-FIND finds nothing in scope
   (Orthanc answers 0xC000 for an unknown study, and for an unknown destination too).
6. Spool files written but not handed out (a failed C-GET, a generator closed early) are removed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from ...dimse_tuning import no_delay, quiet_identifiers
from ...domain.errors import InvalidInput, NotFound, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
from ...domain.levels import REQUIRED_RETURN
from ...domain.model import DicomJson, InstanceRecord, Level, Scope
from ...domain.query import Match, MatchKind, Query
from ...formats.dicom_json import dataset_to_json, first_value
from ...formats.dimse_query import find_identifier
from ...services.ports import Spool
from .kept import Held, Kept
from .remote import Capabilities

log = logging.getLogger(__name__)
T = TypeVar("T")

FIND, GET, MOVE = (StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelGet,
                   StudyRootQueryRetrieveInformationModelMove)
PENDING = frozenset({0xFF00, 0xFF01})
SUCCESS, WARNING, CANCELLED = 0x0000, 0xB000, 0xFE00
OUT_OF_RESOURCES = 0xA700
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
MAX_CONTEXTS = 128  # presentation context IDs are odd numbers 1..255 (PS3.8 §9.3.2.2)
# Compressed syntaxes an archive commonly stores, most common first: each gets its own C-GET context.
STORED_SYNTAXES = (JPEGLosslessSV1, JPEGBaseline8Bit, JPEG2000Lossless, JPEGLSLossless, RLELossless, JPEG2000,
                   JPEGExtended12Bit, JPEGLSNearLossless)
NOT_ASKED = frozenset({"00081190"})  # RetrieveURL is DICOMweb's; the proxy builds it
NOT_RETURNED = frozenset({"00080052", "00080054"})  # QueryRetrieveLevel, RetrieveAETitle: the exchange's
SILENCE = 0.9  # share of timeout_s after which a lost association counts as a timeout
KEEP_S = 15.0  # how long an idle C-FIND association is kept: below the idle timeouts PACS commonly use


@dataclass(frozen=True)
class DimseUpstream:
    """How to reach one upstream PACS; ``calling_ae_title`` and ``move_destination`` are ours."""

    ae_title: str
    host: str
    port: int
    calling_ae_title: str
    retrieve: Literal["c-get", "c-move"] = "c-get"
    move_destination: str | None = None
    timeout_s: float = 30.0
    max_associations: int = 4
    capabilities: Capabilities = field(default_factory=Capabilities)

    def __post_init__(self) -> None:
        if self.retrieve == "c-move" and not self.move_destination:
            raise ValueError("a C-MOVE upstream needs move_destination (our own SCP's AE title)")
        if self.max_associations < 1:
            raise ValueError("max_associations must be at least 1")


class _Watch:
    """What one association saw, to tell a refused connection, a silent peer and an abort apart."""

    def __init__(self) -> None:
        self.started = self.heard = time.monotonic()
        self.connected = False
        self.peer_aborted = False
        self.messages = 0  # P-DATA PDUs received: DIMSE messages, never association control

    def handlers(self) -> list[Any]:
        return [(evt.EVT_CONN_OPEN, self._opened), (evt.EVT_PDU_RECV, self._received)]

    def _opened(self, event: Any) -> None:
        self.connected = True
        self.heard = time.monotonic()
        no_delay(event)

    def _received(self, event: Any) -> None:
        self.heard = time.monotonic()
        if isinstance(event.pdu, P_DATA_TF):
            self.messages += 1
        if isinstance(event.pdu, A_ABORT_RQ):
            self.peer_aborted = True


class DimseRemote:
    """A ``Remote`` over DIMSE (Study Root); see the module rules."""

    def __init__(self, name: str, upstream: DimseUpstream) -> None:
        self.name = name
        self.upstream = upstream
        self.capabilities = upstream.capabilities
        self._slots = anyio.Semaphore(upstream.max_associations)
        self._finders = Kept(upstream.max_associations, min(KEEP_S, upstream.timeout_s / 2),
                             functools.partial(_end, timeout_s=upstream.timeout_s))
        quiet_identifiers()

    # --- Remote ------------------------------------------------------------------------------------

    async def search(self, query: Query) -> list[DicomJson]:
        if query.limit == 0:
            return []
        identifier = find_identifier(query, self._return_tags(query))
        stop = None if query.limit is None else query.offset + query.limit
        found = await self._run(functools.partial(self._search, identifier, stop))
        return found[query.offset:stop]

    async def fetch(self, scope: Scope, spool: Spool) -> AsyncIterator[Path]:
        if self.upstream.retrieve == "c-move":
            await self._run(functools.partial(self._move, scope))
            return
        classes = await self._run(functools.partial(self._sop_classes, scope))
        written: list[Path] = []
        try:
            await self._run(functools.partial(self._get, scope, classes, spool, written))
        except BaseException:
            _remove(written)
            raise
        try:
            while written:
                yield written.pop(0)
        finally:
            _remove(written)

    async def store_many(self, items: Sequence[tuple[Path, InstanceRecord]]) -> list[bool | Exception]:
        if not items:
            return []
        return await self._run(functools.partial(self._store_all, list(items)))

    async def close(self) -> None:
        """Release the kept C-FIND associations."""
        await anyio.to_thread.run_sync(self._finders.close)

    # --- associations ------------------------------------------------------------------------------

    async def _run(self, work: Callable[[], T]) -> T:
        async with self._slots:
            return await anyio.to_thread.run_sync(work)

    @contextlib.contextmanager
    def _association(self, what: str, contexts: list[PresentationContext], roles: list[Any] | None = None,
                     handlers: list[Any] | None = None) -> Iterator[tuple[Association, _Watch]]:
        """An established association for ``what`` (a DIMSE service name, for messages); ended on exit."""
        assoc, watch = self._open(what, contexts, roles, handlers)
        try:
            yield assoc, watch
        finally:
            _end(assoc, self.upstream.timeout_s)

    def _open(self, what: str, contexts: list[PresentationContext], roles: list[Any] | None = None,
              handlers: list[Any] | None = None) -> tuple[Association, _Watch]:
        upstream = self.upstream
        ae = AE(ae_title=upstream.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.connection_timeout = upstream.timeout_s
        # pynetdicom's idle abort, a safety net only: later than any wait of ours, so that it never races
        # the abort after a DIMSE timeout (pynetdicom's state machine then fails in its own thread).
        ae.network_timeout = 2 * upstream.timeout_s
        watch = _Watch()
        assoc = ae.associate(upstream.host, upstream.port, contexts=contexts, ae_title=upstream.ae_title,
                             ext_neg=roles, evt_handlers=watch.handlers() + (handlers or []))
        if not assoc.is_established:
            try:
                raise self._refusal(assoc, watch, what)
            finally:
                _end(assoc, upstream.timeout_s)
        return assoc, watch

    def _finding(self, work: Callable[[Held], T]) -> T:
        """``work`` on a C-FIND association: a kept one if there is one, given back after a clean end;
        asked again on a new one when a kept one turns out closed (rule 3)."""
        for fresh in (False, True):
            held = None if fresh else self._finders.take()
            if held is None:
                held = Held(*self._open("C-FIND", [build_context(FIND)]))
            try:
                result = work(held)
            except _Closed:
                _end(held.assoc, self.upstream.timeout_s)
                continue
            except BaseException:
                _end(held.assoc, self.upstream.timeout_s)
                raise
            self._finders.give(held)
            return result
        raise AssertionError("a new association is never reported as a closed kept one")

    def _refusal(self, assoc: Association, watch: _Watch, what: str) -> UpstreamUnavailable:
        upstream, name = self.upstream, self.name
        if assoc.is_rejected:
            answer = assoc.acceptor.primitive
            reason = f": {answer.reason_str}" if answer is not None else ""
            return UpstreamUnavailable(f"upstream {name} rejected the association for {what}{reason}")
        if not watch.connected:
            if time.monotonic() - watch.started >= SILENCE * upstream.timeout_s:
                return UpstreamTimeout(f"upstream {name} did not accept a connection within {upstream.timeout_s:g} s")
            return UpstreamUnavailable(f"upstream {name} cannot be reached at {upstream.host}:{upstream.port}")
        answer = assoc.acceptor.primitive
        if answer is not None and answer.result == 0x00:
            return UpstreamFailed(f"upstream {name} accepted none of the presentation contexts proposed for {what}")
        return self._lost(watch, f"the association request for {what}")

    def _lost(self, watch: _Watch, what: str) -> UpstreamUnavailable:
        """The error for an association that ended without the answer we waited for."""
        timeout = self.upstream.timeout_s
        if watch.peer_aborted:
            return UpstreamUnavailable(f"upstream {self.name} aborted the association during {what}")
        if time.monotonic() - watch.heard >= SILENCE * timeout:
            return UpstreamTimeout(f"upstream {self.name} did not answer {what} within {timeout:g} s")
        return UpstreamUnavailable(f"upstream {self.name} closed the connection during {what}")

    def _status(self, response: Dataset, watch: _Watch, what: str) -> int:
        """The status of a response; pynetdicom gives an empty one when the association was lost."""
        if "Status" not in response:
            raise self._lost(watch, what)
        return int(response.Status)

    # --- C-FIND ------------------------------------------------------------------------------------

    def _return_tags(self, query: Query) -> list[str]:
        levels = [query.level]
        if query.extra.get("with_parents"):
            levels += [level for level in Level if level < query.level]
        tags = [tag for level in levels for tag in REQUIRED_RETURN[level]] + list(query.includefields)
        return [tag for tag in dict.fromkeys(tags) if tag not in NOT_ASKED]

    def _search(self, identifier: Dataset, stop: int | None) -> list[DicomJson]:
        return self._finding(lambda held: self._find(held, identifier, stop))

    def _find(self, held: Held, identifier: Dataset, stop: int | None = None) -> list[DicomJson]:
        """The matches of one C-FIND; C-CANCEL once ``stop`` matches are in (rule 3)."""
        assoc, watch = held.assoc, held.watch
        found: list[DicomJson] = []
        cancelled = False
        status = SUCCESS
        msg_id, heard = held.message_id(), watch.messages
        watch.heard = time.monotonic()  # a kept association's silence counts from this request
        try:
            for response, match in assoc.send_c_find(identifier, FIND, msg_id=msg_id):
                if held.reused and "Status" not in response and held.silent_since(heard):
                    raise _Closed
                status = self._status(response, watch, "C-FIND")
                if status not in PENDING:
                    break
                if cancelled:
                    continue
                found.append(self._result(match))
                if stop is not None and len(found) >= stop:
                    assoc.send_c_cancel(msg_id, query_model=FIND)
                    cancelled = True
        except RuntimeError:  # pynetdicom: "must be established": it ended between take and send
            if held.reused and held.silent_since(heard):
                raise _Closed from None
            raise self._lost(watch, "C-FIND") from None
        held.reused = False  # it answered: a loss from here on is a fault, not a stale association
        if status in (SUCCESS, CANCELLED):
            return found
        if status == IDENTIFIER_DOES_NOT_MATCH:
            raise InvalidInput(f"upstream {self.name} refused the query as not matching its model (0xA900)")
        raise UpstreamFailed(f"upstream {self.name} answered C-FIND with status 0x{status:04X}")

    def _result(self, match: Dataset | None) -> DicomJson:
        if match is None:
            raise UpstreamFailed(f"upstream {self.name} sent a C-FIND match that cannot be decoded")
        try:
            result = dataset_to_json(match)
        except Exception as exc:
            raise UpstreamFailed(f"upstream {self.name} sent a C-FIND match that cannot be read") from exc
        for tag in NOT_RETURNED:
            result.pop(tag, None)
        return result

    # --- C-GET -------------------------------------------------------------------------------------

    def _sop_classes(self, scope: Scope) -> list[str]:
        """The SOP classes of a scope's instances, found level by level (hierarchical C-FIND)."""
        def learn(held: Held) -> set[str]:
            if scope.series_uid is None:
                series_level = find_identifier(_scope_query(Level.SERIES, scope), ("0020000E",))
                series = [first_value(r, "0020000E") for r in self._find(held, series_level)]
            else:
                series = [scope.series_uid]
            classes: set[str] = set()
            for series_uid in filter(None, series):
                query = _scope_query(Level.INSTANCE, Scope(scope.study_uid, series_uid, scope.sop_uid))
                found = self._find(held, find_identifier(query, ("00080016",)))
                classes.update(filter(None, (first_value(r, "00080016") for r in found)))
            return classes

        classes = self._finding(learn)
        if not classes:
            raise NotFound(f"upstream {self.name} holds no instances of {_scope_text(scope)}")
        if len(classes) > MAX_CONTEXTS - 1:
            raise UpstreamFailed(f"{_scope_text(scope)} on upstream {self.name} holds {len(classes)} SOP classes; "
                                 f"one C-GET association can propose at most {MAX_CONTEXTS - 1}")
        return sorted(classes)

    def _get(self, scope: Scope, classes: list[str], spool: Spool, written: list[Path]) -> None:
        """C-GET a scope; each instance lands in a sealed spool file appended to ``written``."""
        contexts = [build_context(GET), *_storage_contexts(classes, MAX_CONTEXTS - 1)]
        roles = [build_role(uid, scp_role=True) for uid in classes]
        received = functools.partial(self._keep, spool, written)
        final, status = Dataset(), SUCCESS
        with self._association("C-GET", contexts, roles, [(evt.EVT_C_STORE, received)]) as (assoc, watch):
            for response, _ in assoc.send_c_get(_retrieve_identifier(scope), GET):
                status = self._status(response, watch, "C-GET")
                final = response
                if status not in PENDING:
                    break
        failed, warned = _count(final, "Failed"), _count(final, "Warning")
        if written:
            if failed or status not in (SUCCESS, WARNING):
                log.warning("upstream %s: C-GET of %s ended with status 0x%04X, %d received, %d failed",
                            self.name, _scope_text(scope), status, len(written), failed)
            return
        if status in (SUCCESS, WARNING) and not failed and not warned:
            raise NotFound(f"upstream {self.name} sent no instances of {_scope_text(scope)}")
        raise UpstreamFailed(f"upstream {self.name} sent none of the instances of {_scope_text(scope)}: C-GET status "
                             f"0x{status:04X}, {failed} failed and {warned} warning sub-operations")

    def _keep(self, spool: Spool, written: list[Path], event: Any) -> int:
        """EVT_C_STORE on the C-GET association: write the instance as received, File Meta included."""
        try:
            data = event.encoded_dataset(include_meta=True)
            path, fp = spool.new_spool_file()
        except Exception:
            log.exception("upstream %s: a C-GET sub-operation could not be spooled", self.name)
            return OUT_OF_RESOURCES
        try:
            fp.write(data)
            spool.seal(fp)
        except Exception:
            log.exception("upstream %s: a C-GET sub-operation could not be spooled", self.name)
            with contextlib.suppress(Exception):
                fp.close()
            path.unlink(missing_ok=True)
            return OUT_OF_RESOURCES
        written.append(path)
        return SUCCESS

    # --- C-MOVE ------------------------------------------------------------------------------------

    def _move(self, scope: Scope) -> None:
        destination = self.upstream.move_destination
        assert destination is not None  # DimseUpstream checks it for C-MOVE
        final, status = Dataset(), SUCCESS
        with self._association("C-MOVE", [build_context(MOVE)]) as (assoc, watch):
            for response, _ in assoc.send_c_move(_retrieve_identifier(scope), destination, MOVE):
                status = self._status(response, watch, "C-MOVE")
                final = response
                if status not in PENDING:
                    break
        if status == MOVE_DESTINATION_UNKNOWN:
            raise UpstreamFailed(f"upstream {self.name} does not know the move destination {destination}")
        completed, failed, warned = _count(final, "Completed"), _count(final, "Failed"), _count(final, "Warning")
        if not (completed or failed or warned):
            if status in (SUCCESS, WARNING):
                raise NotFound(f"upstream {self.name} moved no instances of {_scope_text(scope)}")
            self._sop_classes(scope)  # NotFound if the scope is empty (rule 5)
        if completed or warned:
            if status != SUCCESS:
                log.warning("upstream %s: C-MOVE of %s ended with status 0x%04X, %d completed, %d failed",
                            self.name, _scope_text(scope), status, completed + warned, failed)
            return
        raise UpstreamFailed(f"upstream {self.name} moved none of the instances of {_scope_text(scope)} to "
                             f"{destination}: C-MOVE status 0x{status:04X}, {failed} failed sub-operations")

    # --- C-STORE -----------------------------------------------------------------------------------

    def _store_all(self, items: list[tuple[Path, InstanceRecord]]) -> list[bool | Exception]:
        outcomes: list[bool | Exception] = []
        for batch in _batches(items):
            outcomes += self._store_batch(batch)
        return outcomes

    def _store_batch(self, items: list[tuple[Path, InstanceRecord]]) -> list[bool | Exception]:
        """One association for items whose presentation contexts fit in one (rule 1)."""
        wanted = _store_contexts(items)
        outcomes: list[bool | Exception] = []
        try:
            with self._association("C-STORE", [build_context(c, t) for c, t in wanted]) as (assoc, watch):
                accepted = [(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts]
                for path, record in items:
                    outcomes.append(self._store_one(assoc, watch, accepted, path, record))
                    if not assoc.is_established:
                        break
        except UpstreamUnavailable as exc:
            outcomes += [exc] * (len(items) - len(outcomes))
        if len(outcomes) < len(items):  # the association ended under us: the rest share its fault
            last = outcomes[-1]
            fault = last if isinstance(last, UpstreamUnavailable) else UpstreamUnavailable(
                f"upstream {self.name} ended the association during C-STORE")
            outcomes += [fault] * (len(items) - len(outcomes))
        return outcomes

    def _store_one(self, assoc: Association, watch: _Watch, accepted: list[tuple[str, str]], path: Path,
                   record: InstanceRecord) -> bool | Exception:
        if not _sendable(accepted, record.sop_class_uid, record.transfer_syntax):
            return UpstreamFailed(f"upstream {self.name} accepted no presentation context for SOP class "
                                  f"{record.sop_class_uid} in transfer syntax {record.transfer_syntax}")
        try:
            status = self._status(assoc.send_c_store(path), watch, "C-STORE")
        except UpstreamUnavailable as exc:
            return exc
        except Exception as exc:  # the file could not be read or encoded: ours, not the upstream's
            return exc
        if code_to_category(status) in ("Success", "Warning"):
            return False
        return UpstreamFailed(f"upstream {self.name} refused to store an instance: C-STORE status 0x{status:04X}")


# --- helpers ---------------------------------------------------------------------------------------

class _Closed(Exception):
    """A kept association was closed by the upstream before it answered anything (rule 3)."""


def _end(assoc: Association, timeout_s: float) -> None:
    """Release (or abort) an association and wait for its threads, so none outlives the call."""
    try:
        if assoc.is_established:
            assoc.release()
    finally:
        if assoc.is_established:
            assoc.abort()
        if assoc.ident is not None:  # a rejected association's thread may never have started
            assoc.join(timeout_s)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
    paths.clear()


def _count(response: Dataset, kind: str) -> int:
    return int(response.get(f"NumberOf{kind}Suboperations", 0) or 0)


def _scope_query(level: Level, scope: Scope) -> Query:
    """A C-FIND at ``level`` for the unique keys of a scope (the levels below it universal)."""
    keys = (("0020000D", scope.study_uid), ("0020000E", scope.series_uid), ("00080018", scope.sop_uid))
    matches = tuple(
        Match(tag, "UI", MatchKind.UID_LIST, values=(uid,)) if uid else Match(tag, "UI", MatchKind.UNIVERSAL)
        for tag, uid in keys[:level.value]
    )
    return Query(level, matches)


def _retrieve_identifier(scope: Scope) -> Dataset:
    """The C-GET/C-MOVE identifier: the scope's level and unique keys (PS3.4 C.4.2.1.4)."""
    return find_identifier(_scope_query(scope.level, scope), ())


def _scope_text(scope: Scope) -> str:
    if scope.sop_uid:
        return f"instance {scope.sop_uid}"
    if scope.series_uid:
        return f"series {scope.series_uid}"
    return f"study {scope.study_uid}"


def _storage_contexts(classes: list[str], room: int) -> list[PresentationContext]:
    """Per SOP class: every transfer syntax (the SCP's choice), then single compressed ones (rule 4)."""
    extra = min(len(STORED_SYNTAXES), (room - len(classes)) // len(classes))
    contexts = []
    for uid in classes:
        contexts.append(build_context(uid, ALL_TRANSFER_SYNTAXES))
        contexts += [build_context(uid, syntax) for syntax in STORED_SYNTAXES[:extra]]
    return contexts


def _store_contexts(items: list[tuple[Path, InstanceRecord]]) -> list[tuple[str, str]]:
    """Each (SOP class, transfer syntax) needed, plus Explicit VR Little Endian for every SOP class."""
    pairs: dict[tuple[str, str], None] = {}
    for _, record in items:
        pairs[(record.sop_class_uid, record.transfer_syntax)] = None
        pairs[(record.sop_class_uid, str(ExplicitVRLittleEndian))] = None
    return list(pairs)


def _batches(items: list[tuple[Path, InstanceRecord]]) -> list[list[tuple[Path, InstanceRecord]]]:
    """Consecutive runs of items whose presentation contexts fit in one association."""
    batches: list[list[tuple[Path, InstanceRecord]]] = []
    contexts: set[tuple[str, str]] = set()
    for item in items:
        needed = set(_store_contexts([item]))
        if not batches or len(contexts | needed) > MAX_CONTEXTS:
            batches.append([])
            contexts = set()
        batches[-1].append(item)
        contexts |= needed
    return batches


def _sendable(accepted: list[tuple[str, str]], sop_class: str, transfer_syntax: str) -> bool:
    """Can pynetdicom send this as it is, or convert it (uncompressed little endian only)?"""
    if (sop_class, transfer_syntax) in accepted:
        return True
    syntax = UID(transfer_syntax)
    if syntax.is_compressed or syntax.is_deflated or not syntax.is_little_endian:
        return False
    return any(c == sop_class and not UID(t).is_compressed and UID(t).is_little_endian and not UID(t).is_deflated
               for c, t in accepted)
