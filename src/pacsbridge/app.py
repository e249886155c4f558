"""Composition root: builds backends, services and doors from one Settings object.

Only this module and ``cli.py`` see everything. The archive is opened (and its schema migrated) when
the app is built, so a bad database URL fails at start-up, not at the first request; the lifespan
closes it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx
from anyio.from_thread import BlockingPortal
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount

from . import allocator
from .adapters.admin import routes as admin_routes
from .adapters.auth import issuer as issuer_routes
from .adapters.auth import signed_urls
from .adapters.auth.audit import AuditMiddleware
from .adapters.auth.middleware import AccessMiddleware, PublicRoute
from .adapters.auth.oidc_login import OidcClient, OidcSignIn
from .adapters.auth.tokens import Introspector, JwtVerifier, LocalKeys, RemoteJwks, TokenVerifier
from .adapters.dicomweb.context import DicomwebConfig, DicomwebContext
from .adapters.dicomweb.errors import handle_domain_error
from .adapters.dicomweb.routes import routes as dicomweb_routes
from .adapters.dimse.access import PeerAccess, Supplier, peer_of
from .adapters.dimse.server import DimseConfig, DimseDoor, Route, one_listener
from .adapters.dimse.workflow import Workflow
from .adapters.fhir.context import FhirConfig, FhirContext
from .adapters.fhir.routes import public_routes as fhir_public_routes
from .adapters.fhir.routes import routes as fhir_routes
from .adapters.http import AccessLog, CrossOriginResourcePolicy, cors_middleware, health
from .adapters.links_api import routes as links_api_routes
from .adapters.web.console import routes as console_routes
from .adapters.web.links import routes as links_page_routes
from .adapters.web.pages import PAGE_PREFIXES, Pages
from .adapters.web.sign_in import routes as sign_in_routes
from .backends.audit import SqlAuditTrail
from .backends.blobs import BlobStore
from .backends.fhir_client import EmrFhir
from .backends.http_client import Auth, AuthorizedClient
from .backends.local import LocalArchive
from .backends.orders import SqlOrderRecords
from .backends.outbox.jobs import JobQueue, Subscriber, enqueue
from .backends.outbox.worker import OutboxWorker, Policy
from .backends.records import SqlSecurityRecords
from .backends.upstream.cache import CachePolicy, InstanceCache
from .backends.upstream.dicomweb import ClientCredentials, DicomwebRemote, DicomwebUpstream
from .backends.upstream.dimse import DimseRemote, DimseUpstream
from .backends.upstream.proxy import ProxyArchive
from .backends.upstream.remote import Capabilities, Remote
from .backends.web_login import SqlWebLoginRecords
from .backends.worklist_files import WorklistFolder
from .domain.errors import PacsbridgeError
from .mapping import load_folder, load_mapping, load_matching
from .services.arrivals import StudyArrivals
from .services.fhir_resources import ResourceService
from .services.imaging_studies import ImagingStudyService, StudyView
from .services.ingest import IngestOptions, IngestService
from .services.issuer import KeyRing, TokenIssuer
from .services.links import LinkReview
from .services.matching import StudyMatcher, request_keys
from .services.orders import OrderService, OrderSettings
from .services.patients import PatientDirectory, PatientIdentity
from .services.ports import Archive, ClientRecord, OrderChange, WorklistFilter
from .services.procedure_steps import ProcedureStepService
from .services.retrieve import RetrieveService
from .services.search import SearchService
from .services.web_login import PasswordLogin, SessionBook, SessionPolicy
from .services.worklist import WorklistService
from .settings import Settings, UpstreamAuth, UpstreamSettings

log = logging.getLogger(__name__)


@dataclass
class Images:
    """The image use cases over one archive (the embedded one or an upstream)."""

    archive: Archive
    ingest: IngestService
    search: SearchService
    retrieve: RetrieveService


@dataclass
class Upstream:
    """One upstream: its use cases, its cache (which its C-MOVE results go into), its settings."""

    settings: UpstreamSettings
    images: Images
    cache: InstanceCache
    delivery: IngestService


@dataclass
class Services:
    """The use cases, as every door sees them. ``archive`` is the embedded one (it also holds our records);
    ``ingest``/``search``/``retrieve`` serve whichever archive ``settings.archive`` names."""

    archive: LocalArchive
    ingest: IngestService
    search: SearchService
    retrieve: RetrieveService
    records: SqlSecurityRecords
    keys: KeyRing
    issuer: TokenIssuer
    audit: SqlAuditTrail
    sessions: SessionBook
    passwords: PasswordLogin
    orders: Orders | None = None
    upstreams: dict[str, Upstream] = field(default_factory=dict)

    async def close(self) -> None:
        if self.orders is not None:
            await self.orders.close()
        for upstream in self.upstreams.values():
            await upstream.images.archive.close()
        await self.archive.close()


@dataclass
class Orders:
    """The imaging order loop: FHIR door, worklist, MPPS, study arrival, notifications."""

    records: SqlOrderRecords
    orders: OrderService
    service_requests: ResourceService
    patients: ResourceService
    directory: PatientDirectory
    studies: ImagingStudyService
    workflow: Workflow
    arrivals: StudyArrivals
    outbox: OutboxWorker
    emr: EmrFhir | None = None
    review: LinkReview | None = None  # None without scored matching (orders.matching null)
    worklist_folder: WorklistFolder | None = None

    async def sync_worklist_folder(self) -> None:
        """Rewrite the worklist folder (``orders.worklist_folder``) from the records, at start-up."""
        if self.worklist_folder is not None:
            open_items = await self.records.worklist(WorklistFilter())
            await self.worklist_folder.sync_all({r.request_id: r for r, _ in open_items}.values())

    async def close(self) -> None:
        await self.outbox.close()
        if self.emr is not None:
            await self.emr.close()


def images_over(archive: Archive, spool: BlobStore, bulk_threshold: int) -> Images:
    return Images(archive, IngestService(archive, spool, IngestOptions(bulk_threshold)), SearchService(archive),
                  RetrieveService(archive, scratch_dir=spool.spool_dir))


def build_remote(u: UpstreamSettings, settings: Settings) -> Remote:
    """The protocol side of one upstream."""
    caps = Capabilities(includefield=u.includefield, fuzzy_matching=u.fuzzy_matching)
    if u.kind == "dicomweb":
        assert u.url is not None
        a = u.auth  # complete for its type: UpstreamSettings checks that

        def secret(value: SecretStr | None) -> str:
            return value.get_secret_value() if value is not None else ""

        credentials = None
        if a.type == "client_credentials":
            assert a.token_url and a.client_id
            credentials = ClientCredentials(a.token_url, a.client_id, secret(a.client_secret), a.scope, a.audience)
        return DicomwebRemote(u.name, DicomwebUpstream(
            url=u.url, timeout_s=u.timeout_seconds, connect_timeout_s=u.connect_timeout_seconds,
            max_connections=u.max_connections, capabilities=caps,
            basic=(a.username or "", secret(a.password)) if a.type == "basic" else None,
            bearer=secret(a.token) if a.type == "bearer" else None, client_credentials=credentials))
    assert u.ae_title and u.host and u.port
    ours = u.calling_ae_title or settings.dimse.ae_title  # we call as, and ask C-MOVE to send to, this AE
    return DimseRemote(u.name, DimseUpstream(
        ae_title=u.ae_title, host=u.host, port=u.port, calling_ae_title=ours, retrieve=u.retrieve,
        move_destination=ours, timeout_s=u.timeout_seconds, max_associations=u.max_connections, capabilities=caps))


def build_upstream(u: UpstreamSettings, settings: Settings) -> Upstream:
    cache = InstanceCache.open(settings.data_dir.resolve() / "cache" / u.name,
                               CachePolicy(u.cache.max_bytes, u.cache.fresh_seconds))
    archive = ProxyArchive(build_remote(u, settings), cache)
    blobs = cache.local.blobs
    threshold = settings.dicomweb.bulk_threshold
    return Upstream(u, images_over(archive, blobs, threshold), cache,
                    IngestService(cache.local, blobs, IngestOptions(threshold)))


def build_services(settings: Settings) -> Services:
    data_dir = settings.data_dir.resolve()
    archive = LocalArchive.open(settings.resolved_database_url(), data_dir, fsync=settings.storage.fsync)
    records = SqlSecurityRecords(archive.engine)
    auth = settings.auth
    web_records = SqlWebLoginRecords(archive.engine)
    policy = SessionPolicy(lifetime_s=auth.web.session_seconds, idle_s=auth.web.idle_seconds,
                           lock_after=auth.web.lock_after, lock_s=auth.web.lock_seconds)
    keys = KeyRing(records, auth.key_algorithm, auth.token_lifetime_seconds)
    declared = [
        ClientRecord(client_id=c.client_id, name=c.client_id, scopes=frozenset(c.scopes),
                     secret_hash=c.secret_hash.get_secret_value() if c.secret_hash else None, jwks=c.jwks)
        for c in auth.clients
    ]
    upstreams = {u.name: build_upstream(u, settings) for u in settings.upstreams}
    local = images_over(archive, archive.blobs, settings.dicomweb.bulk_threshold)
    main = local if settings.archive == "local" else upstreams[settings.archive].images
    return Services(
        orders=build_orders(settings, archive, main.search, local.search),
        archive=archive,
        ingest=main.ingest,
        search=main.search,
        retrieve=main.retrieve,
        upstreams=upstreams,
        records=records,
        keys=keys,
        issuer=TokenIssuer(records, keys, settings.resolved_issuer(), auth.audience, auth.token_lifetime_seconds,
                           declared),
        audit=SqlAuditTrail(archive.engine),
        sessions=SessionBook(web_records, policy),
        passwords=PasswordLogin(web_records, policy),
    )


def auth_of(a: UpstreamAuth) -> Auth:
    """How we authenticate to a remote, from its settings (complete for its type: settings check that)."""
    def secret(value: SecretStr | None) -> str:
        return value.get_secret_value() if value is not None else ""

    if a.type == "basic":
        return Auth(basic=(a.username or "", secret(a.password)))
    if a.type == "bearer":
        return Auth(bearer=secret(a.token))
    if a.type == "client_credentials":
        assert a.token_url and a.client_id
        return Auth(client_credentials=ClientCredentials(a.token_url, a.client_id, secret(a.client_secret), a.scope,
                                                   a.audience))
    return Auth()


def mappings_dir(settings: Settings) -> Path:
    """Where the mapping files are: orders.mappings_dir, else ./mappings, else the source checkout's."""
    if settings.orders.mappings_dir is not None:
        return settings.orders.mappings_dir
    here = Path.cwd() / "mappings"
    if (here / "request-to-worklist").is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "mappings"


def build_orders(settings: Settings, archive: LocalArchive, search: SearchService, local_search: SearchService
                 ) -> Orders | None:
    """The order loop over the records database; None when the FHIR door is off."""
    if not settings.fhir.enabled:
        return None
    f, o, n = settings.fhir, settings.orders, settings.notifications
    folder = mappings_dir(settings)
    to_worklist = load_folder(folder / "request-to-worklist")
    if not to_worklist:
        raise ValueError(f"no mapping file in {folder / 'request-to-worklist'}")
    to_fhir = load_mapping(folder / "dicom-to-fhir" / "imagingstudy.yaml")
    subscribers = [Subscriber(name=s.name, kind=s.kind, url=s.url, topics=frozenset(s.topics), auth=auth_of(s.auth),
                              secret=s.secret.get_secret_value() if s.secret else None, timeout_s=s.timeout_seconds)
                   for s in n.subscribers]
    policy = Policy(lease_s=n.lease_seconds, base_s=n.retry_base_seconds, max_s=n.retry_max_seconds)
    outbox = OutboxWorker(JobQueue(archive.engine), subscribers, policy=policy)
    wl_folder = WorklistFolder(o.worklist_folder, settings.storage.fsync) if o.worklist_folder else None

    async def after_commit(change: OrderChange) -> None:
        if change.notifications:
            outbox.wake()
        if change.request is not None and wl_folder is not None:
            await wl_folder.publish(change.request)  # logs and swallows its own I/O errors

    records = SqlOrderRecords(archive.engine, enqueue=lambda conn, notes: enqueue(conn, notes, subscribers),
                              after_commit=after_commit)
    emr = None
    if f.emr_base_url:
        emr = EmrFhir(AuthorizedClient("the EMR", f.emr_base_url, auth_of(f.emr_auth), timeout_s=f.emr_timeout_seconds))
    identity = PatientIdentity(f.patient_identifier_system, f.issuer_of_patient_id)
    directory = PatientDirectory(records, identity, emr)
    rules = load_matching(folder / "matching" / f"{o.matching}.yaml") if o.matching else None
    orders = OrderService(records, directory, to_worklist, OrderSettings(
        accession_system=o.accession_system, timezone=o.timezone, default_station_ae=o.default_station_ae,
        default_modality=o.default_modality), blocking=(lambda r: request_keys(rules, r)) if rules else None)
    view = StudyView(timezone_offset=f.timezone_offset, accession_system=o.accession_system)
    studies = ImagingStudyService(search, records, identity, to_fhir, view)
    arrivals = StudyArrivals(records, local_search, ImagingStudyService(local_search, records, identity, to_fhir, view),
                             o.stable_seconds)
    review = None
    if rules is not None:
        matcher = StudyMatcher(records, rules, arrivals.link)
        arrivals.unmatched = matcher.study_arrived
        review = LinkReview(records, arrivals, matcher)

        async def match_pending() -> int:
            return await matcher.match_pending(arrivals.document)

        arrivals.pending = match_pending
    return Orders(records=records, orders=orders, service_requests=ResourceService(records, "ServiceRequest", False),
                  patients=ResourceService(records, "Patient"), directory=directory, studies=studies,
                  workflow=Workflow(WorklistService(records), ProcedureStepService(records)), arrivals=arrivals,
                  outbox=outbox, emr=emr, worklist_folder=wl_folder, review=review)


def identity_provider(settings: Settings, http: httpx.AsyncClient) -> RemoteJwks | None:
    """The site's OpenID provider (discovery document and keys); None with the built-in issuer."""
    auth = settings.auth
    if auth.mode == "builtin":
        return None
    if not auth.issuer:
        raise ValueError(f"auth.mode {auth.mode} needs auth.issuer (the identity provider's issuer URL)")
    return RemoteJwks(http, auth.issuer, auth.discovery_url, auth.jwks_cache_seconds, auth.jwks_refetch_seconds)


def build_verifier(settings: Settings, services: Services, http: httpx.AsyncClient,
                   remote: RemoteJwks | None) -> TokenVerifier:
    """How bearer tokens are checked in this deployment (``auth.mode``)."""
    auth = settings.auth
    if remote is None:
        return JwtVerifier(LocalKeys(services.keys.verification_keys), settings.resolved_issuer(), auth.audience,
                           [auth.key_algorithm], auth.leeway_seconds, auth.patient_claim)
    if auth.mode == "oidc":
        return JwtVerifier(remote, auth.issuer, auth.audience, auth.algorithms, auth.leeway_seconds,
                           auth.patient_claim)
    intro = auth.introspection
    if not intro.client_id or intro.client_secret is None:
        raise ValueError("auth.mode introspection needs auth.introspection.client_id and client_secret")

    async def endpoint() -> str:
        found = intro.endpoint or (await remote.metadata()).get("introspection_endpoint")
        if not isinstance(found, str):
            raise ValueError("the provider publishes no introspection_endpoint; set auth.introspection.endpoint")
        return found

    return Introspector(http, intro.endpoint or endpoint, intro.client_id, intro.client_secret.get_secret_value(),
                        auth.audience, auth.issuer, intro.cache_seconds, auth.patient_claim)


def build_page_sign_in(settings: Settings, http: httpx.AsyncClient, remote: RemoteJwks | None,
                       verifier: TokenVerifier) -> OidcSignIn | None:
    """The pages' sign-in at the site's provider; None with built-in users or without auth.web.client_id."""
    web = settings.auth.web
    if remote is None or not web.client_id:
        return None
    if not settings.public_url and settings.host in ("0.0.0.0", "::", ""):
        raise ValueError("auth.web.client_id needs public_url: the provider must send browsers back to "
                         "<public_url>/auth/callback, and a wildcard host address is no place to send them")
    client = OidcClient(
        client_id=web.client_id, redirect_uri=settings.resolved_base_url() + "/auth/callback",
        scopes=tuple(dict.fromkeys(["openid", *web.scopes])),
        client_secret=web.client_secret.get_secret_value() if web.client_secret else None,
        extra_params=tuple(web.authorize_params.items()),
    )
    return OidcSignIn(http, remote, client, verifier, settings.auth.algorithms, settings.auth.leeway_seconds)


def build_dimse_door(settings: Settings, services: Services) -> DimseDoor | None:
    """Our DIMSE SCP (``dimse.*``); None when disabled."""
    d = settings.dimse
    if not d.enabled:
        return None
    peers = [peer_of(p.ae_title, p.host, p.port, p.check_host, p.scopes, p.patient_ids) for p in d.peers]
    suppliers = [Supplier(u.settings.ae_title, u.settings.host, name) for name, u in services.upstreams.items()
                 if u.settings.kind == "dimse" and u.settings.retrieve == "c-move"
                 and u.settings.ae_title and u.settings.host]
    config = DimseConfig(ae_title=d.ae_title, host=d.host or settings.host, port=d.port,
                         max_associations=d.max_associations, acse_timeout_s=d.acse_timeout_seconds,
                         dimse_timeout_s=d.dimse_timeout_seconds, network_timeout_s=d.network_timeout_seconds,
                         max_find_results=d.max_find_results)
    routes = {d.ae_title: Route(services.search, services.ingest, services.retrieve)}
    for u in services.upstreams.values():
        if u.settings.local_ae_title:
            images = u.images
            routes[u.settings.local_ae_title] = Route(images.search, images.ingest, images.retrieve)
    return DimseDoor(config, PeerAccess(peers, d.open_to_any_ae, suppliers), routes, services.audit,
                     {name: u.delivery for name, u in services.upstreams.items()},
                     services.orders.workflow if services.orders else None)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def build_app(settings: Settings, services: Services | None = None) -> Starlette:
    """The ASGI application for these settings."""
    services = services or build_services(settings)
    dw = settings.dicomweb

    def dicomweb_context(root: str, search: SearchService, retrieve: RetrieveService,
                         ingest: IngestService) -> DicomwebContext:
        return DicomwebContext(search=search, retrieve=retrieve, ingest=ingest, config=DicomwebConfig(
            root=root, public_url=settings.public_url, qido_default_limit=dw.qido_default_limit,
            qido_max_limit=dw.qido_max_limit, strict_accept=dw.strict_accept, stow_max_bytes=dw.stow_max_bytes))

    ctx = dicomweb_context(dw.root, services.search, services.retrieve, services.ingest)
    upstream_mounts = [
        Mount(u.settings.resolved_dicomweb_root(), routes=dicomweb_routes(dicomweb_context(
            u.settings.resolved_dicomweb_root(), u.images.search, u.images.retrieve, u.images.ingest)))
        for u in services.upstreams.values()
    ]

    http = httpx.AsyncClient(timeout=10.0, follow_redirects=False)
    remote = identity_provider(settings, http)
    verifier = build_verifier(settings, services, http, remote)
    oidc = build_page_sign_in(settings, http, remote, verifier)
    pages = Pages(services.sessions, settings.resolved_secure_cookies(), "oidc" if oidc else "password",
                  form_origins=(_origin(remote.issuer),) if oidc and remote else ())
    page_routes: list[BaseRoute] = [*console_routes(pages, services.audit)]
    signer = signed_urls.UrlSigner(services.keys, settings.resolved_issuer())
    public: list[BaseRoute] = [PublicRoute("/health", health)]
    public += sign_in_routes(pages, services.passwords if remote is None else None, oidc,
                             settings.auth.web.post_logout_redirect_uri)
    if settings.auth.mode == "builtin":
        public += issuer_routes.routes(issuer_routes.IssuerEndpoints(
            settings.resolved_issuer(), services.issuer, services.keys))

    dimse = build_dimse_door(settings, services)
    fhir_mounts: list[BaseRoute] = []
    review_routes: list[BaseRoute] = []
    if services.orders is not None:
        o = services.orders
        dicomweb_url = settings.public_url.rstrip("/") + dw.root if settings.public_url else None
        fhir = FhirContext(orders=o.orders, service_requests=o.service_requests, patients=o.patients,
                           directory=o.directory, studies=o.studies, config=FhirConfig(
                               root=settings.fhir.root, public_url=settings.public_url,
                               dicomweb_url=dicomweb_url, dicomweb_root=dw.root or "/",
                               default_count=settings.fhir.default_count, max_count=settings.fhir.max_count))
        public += fhir_public_routes(fhir)
        fhir_mounts.append(Mount(settings.fhir.root, routes=fhir_routes(fhir)))
        if o.review is not None:  # the link review API and pages (issue 6)
            review_routes += links_api_routes(o.review, o.records)
            page_routes += links_page_routes(pages, o.review, o.records)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        log.info("pacsbridge serving DICOMweb at %s, data in %s", dw.root or "/", settings.data_dir)
        await services.keys.ensure()  # the built-in issuer's keys, and in every mode the signed URLs' keys
        if settings.dimse.enabled and settings.dimse.open_to_any_ae:
            log.warning("UNSAFE: any calling AE title may use the DIMSE SCP (dimse.open_to_any_ae)")
        for prefix in settings.auth.open_routes:
            log.warning("UNSAFE: %s is served without a token (auth.open_routes)", prefix or "/")
        async with anyio.create_task_group() as tasks, BlockingPortal() as portal, contextlib.AsyncExitStack() as door:
            tasks.start_soon(services.audit.run)
            if services.orders is not None and door.enter_context(one_listener(settings.data_dir / "workers.lock")):
                await services.orders.sync_worklist_folder()  # repairs what a crash or a full disk left
                tasks.start_soon(services.orders.arrivals.run)  # one process handles arrivals and the outbox
                tasks.start_soon(services.orders.outbox.run)
            if dimse is not None and door.enter_context(one_listener(settings.data_dir / "dimse.lock")):
                await anyio.to_thread.run_sync(dimse.start, portal)
                door.push_async_callback(anyio.to_thread.run_sync, dimse.stop)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await door.aclose()  # no association is left waiting on the loop
                    await services.audit.flush()
                    await http.aclose()
                    await services.close()

    middleware = [
        Middleware(AccessLog),
        *cors_middleware(settings.cors.allow_origins, settings.cors.allow_credentials, settings.cors.max_age,
                         same_origin_only=PAGE_PREFIXES),
        *([Middleware(CrossOriginResourcePolicy)] if settings.cors.cross_origin_isolation else []),
        Middleware(AuditMiddleware, trail=services.audit),
        Middleware(AccessMiddleware, verifier=verifier, public=lambda: public,
                   open_prefixes=settings.auth.open_routes, signed=signer.verify, pages=lambda: page_routes,
                   outcome_prefixes=[settings.fhir.root] if services.orders is not None else []),
    ]
    app = Starlette(
        routes=[
            *public,
            *admin_routes(services.audit),
            *review_routes,
            *page_routes,
            *signed_urls.routes(signer),
            *upstream_mounts,
            *fhir_mounts,
            Mount(dw.root, routes=dicomweb_routes(ctx)) if dw.root else Mount("", routes=dicomweb_routes(ctx)),
        ],
        middleware=middleware,
        exception_handlers={PacsbridgeError: handle_domain_error},
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.dimse = dimse
    return app


def app_from_environment() -> Starlette:
    """The app factory a uvicorn worker process calls (``pacsbridge serve`` with ``workers`` > 1)."""
    import os

    from .logs import configure_logging
    from .settings import RESOLVED_ENV, from_worker_environment

    settings = from_worker_environment(os.environ[RESOLVED_ENV])
    configure_logging(settings.log_level)
    allocator.tune()
    return build_app(settings)
