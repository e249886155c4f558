"""One typed settings object, from a YAML/TOML file and ``PACSBRIDGE_...`` environment variables.

Read only by ``app.py`` and ``cli.py``; everything else receives plain values. Precedence, highest
first: explicit overrides (CLI options), environment, config file, defaults. Nested settings use a
double underscore in the environment: ``PACSBRIDGE_DICOMWEB__ROOT=/wado``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict


class DicomwebSettings(BaseModel):
    """The DICOMweb door (PS3.18)."""

    root: str = "/dicomweb"
    qido_default_limit: int | None = Field(
        default=None, description="Results per QIDO page when the client sends no limit (None: qido_max_limit)."
    )
    qido_max_limit: int = Field(default=1000, ge=1, description="Most results one QIDO request returns.")
    bulk_threshold: int = Field(default=1024, ge=0, description="Binary values larger than this are BulkDataURIs.")
    strict_accept: bool = Field(
        default=False,
        description="Answer 406 to a WADO-RS request without Accept (PS3.18 2020 §8.7.5); "
        "False treats a missing Accept as */* like plain HTTP.",
    )
    stow_max_bytes: int = Field(default=0, ge=0, description="Largest STOW-RS body accepted (0: no limit).")

    @field_validator("root")
    @classmethod
    def _root_shape(cls, value: str) -> str:
        value = "/" + value.strip("/")
        return "" if value == "/" else value


class CorsSettings(BaseModel):
    """Cross-origin access, for viewers (OHIF) served from another origin."""

    allow_origins: list[str] = Field(default_factory=list, description="Origins allowed; ['*'] allows any.")
    allow_credentials: bool = False
    max_age: int = 600
    cross_origin_isolation: bool = Field(
        default=True,
        description="Send Cross-Origin-Resource-Policy: cross-origin so that a cross-origin-isolated "
        "viewer page (OHIF volume views use SharedArrayBuffer) may load our responses.",
    )


class StorageSettings(BaseModel):
    """The embedded (local) archive."""

    fsync: bool = Field(default=True,
                        description="Sync each stored file (fdatasync) and its folder (fsync) before indexing it.")


class DimsePeer(BaseModel):
    """A DICOM application entity that may call us (and, with a port, receive C-MOVE results)."""

    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(description="Its address; associations from elsewhere are refused when check_host is on.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Its storage SCP port (C-MOVE destination).")
    check_host: bool = Field(default=True, description="Accept this AE title only from host.")
    scopes: list[str] = Field(
        default_factory=lambda: ["dicomweb.read"],
        description="What it may do, as for a token: dicomweb.read (C-FIND, C-GET, C-MOVE), dicomweb.write "
        "(C-STORE), or SMART system/ImagingStudy.* scopes.")
    patient_ids: list[str] | None = Field(default=None, description="Bind it to these patients (patient context).")

    @field_validator("ae_title")
    @classmethod
    def _ae_shape(cls, value: str) -> str:
        value = value.strip()
        if not value or "\\" in value or any(not c.isprintable() for c in value):
            raise ValueError("an AE title is 1 to 16 printable characters, no backslash")
        return value


class DimseSettings(BaseModel):
    """The DIMSE door (PS3.7): our own SCP for modalities, viewers and PACS."""

    enabled: bool = Field(default=True, description="Listen for DICOM associations.")
    ae_title: str = Field(default="PACSBRIDGE", min_length=1, max_length=16)
    host: str | None = Field(default=None, description="Address to listen on; default: the HTTP host.")
    port: int = Field(default=11112, ge=0, le=65535)
    peers: list[DimsePeer] = Field(default_factory=list, description="The AEs that may call us, with their scopes.")
    open_to_any_ae: bool = Field(
        default=False, description="UNSAFE: accept any calling AE title, as an all-scopes operator.")
    max_associations: int = Field(default=16, ge=1, le=1000)
    acse_timeout_seconds: float = Field(default=30, gt=0)
    dimse_timeout_seconds: float = Field(default=60, gt=0)
    network_timeout_seconds: float = Field(default=60, gt=0)
    max_find_results: int = Field(default=10_000, ge=1, description="C-FIND answers at most this many matches.")


class UpstreamAuth(BaseModel):
    """How pacsbridge authenticates to an upstream DICOMweb server."""

    type: Literal["none", "basic", "bearer", "client_credentials"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = Field(default=None, description="bearer: a long-lived token.")
    token_url: str | None = Field(default=None, description="client_credentials: the token endpoint.")
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scope: str | None = Field(default=None, description="client_credentials: scopes asked for.")
    audience: str | None = Field(default=None, description="client_credentials: an audience/resource parameter.")


class UpstreamCache(BaseModel):
    """The local cache of one upstream's instances (on this machine, never shared)."""

    max_bytes: int = Field(default=10 << 30, ge=1 << 20, description="Size bound; least recently used studies go.")
    fresh_seconds: int = Field(
        default=300, ge=0, description="A cached scope is served without asking; afterwards its instance count "
        "is checked with one query and the scope fetched again only if it changed.")


class UpstreamSettings(BaseModel):
    """A PACS or archive pacsbridge fronts: ``dicomweb`` (QIDO/WADO/STOW over HTTP) or ``dimse``
    (C-FIND, C-GET or C-MOVE, C-STORE)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="Names it in URLs and logs.")
    kind: Literal["dicomweb", "dimse"]
    url: str | None = Field(default=None, description="dicomweb: its DICOMweb root URL.")
    auth: UpstreamAuth = Field(default_factory=UpstreamAuth)
    ae_title: str | None = Field(default=None, max_length=16, description="dimse: its AE title.")
    host: str | None = Field(default=None, description="dimse: its address.")
    port: int | None = Field(default=None, ge=1, le=65535, description="dimse: its port.")
    retrieve: Literal["c-get", "c-move"] = Field(
        default="c-get", description="dimse: how instances are fetched. c-move sends them to our own SCP "
        "(dimse.ae_title, which the upstream must know by address and port).")
    calling_ae_title: str | None = Field(default=None, max_length=16,
                                         description="dimse: our AE title towards it; default dimse.ae_title.")
    dicomweb_root: str | None = Field(
        default=None, description="Where our DICOMweb door serves this upstream; default /upstreams/<name>/dicomweb.")
    local_ae_title: str | None = Field(
        default=None, max_length=16, description="A called AE title of our SCP that serves this upstream.")
    timeout_seconds: float = Field(default=30, gt=0, description="Longest wait for any answer of the upstream.")
    connect_timeout_seconds: float = Field(default=5, gt=0)
    max_connections: int = Field(default=8, ge=1, le=256, description="Concurrent connections/associations to it.")
    includefield: bool = Field(default=True, description="It returns attributes asked for by includefield/keys.")
    fuzzy_matching: bool = Field(default=False, description="dicomweb: it implements fuzzymatching=true.")
    cache: UpstreamCache = Field(default_factory=UpstreamCache)

    @model_validator(mode="after")
    def _complete(self) -> UpstreamSettings:
        if self.kind == "dicomweb" and not self.url:
            raise ValueError(f"upstream {self.name}: kind dicomweb needs url")
        if self.kind == "dimse" and not (self.ae_title and self.host and self.port):
            raise ValueError(f"upstream {self.name}: kind dimse needs ae_title, host and port")
        a = self.auth
        if a.type == "client_credentials" and not (a.token_url and a.client_id and a.client_secret):
            raise ValueError(f"upstream {self.name}: client_credentials needs token_url, client_id, client_secret")
        if a.type == "basic" and not a.username:
            raise ValueError(f"upstream {self.name}: basic auth needs username and password")
        if a.type == "bearer" and a.token is None:
            raise ValueError(f"upstream {self.name}: bearer auth needs token")
        return self

    def resolved_dicomweb_root(self) -> str:
        root = self.dicomweb_root or f"/upstreams/{self.name}/dicomweb"
        return "/" + root.strip("/")


class FhirSettings(BaseModel):
    """The FHIR R4 door (``/fhir``): ServiceRequest, Patient, ImagingStudy, Endpoint."""

    enabled: bool = Field(default=True, description="Serve the FHIR door.")
    root: str = Field(default="/fhir", description="Where it is served.")
    patient_identifier_system: str = Field(
        default="urn:pacsbridge:patient-id",
        description="The Patient.identifier system whose value is the DICOM PatientID.")
    issuer_of_patient_id: str | None = Field(default=None, description="IssuerOfPatientID on the worklist.")
    emr_base_url: str | None = Field(
        default=None, description="The EMR's FHIR base, where Patients a ServiceRequest references are read.")
    emr_auth: UpstreamAuth = Field(default_factory=UpstreamAuth, description="How we authenticate to the EMR.")
    emr_timeout_seconds: float = Field(default=10, gt=0)
    default_count: int = Field(default=20, ge=1, description="Search results per page without _count.")
    max_count: int = Field(default=200, ge=1, description="Most search results per page.")
    timezone_offset: str | None = Field(
        default=None, pattern=r"^[+-]\d{2}:\d{2}$",
        description="Offset (+01:00) for ImagingStudy.started when a study has no TimezoneOffsetFromUTC; "
        "unset: started is given as a date only.")

    @field_validator("root")
    @classmethod
    def _root_shape(cls, value: str) -> str:
        return "/" + value.strip("/")


class OrdersSettings(BaseModel):
    """The imaging order loop: ServiceRequest -> worklist -> MPPS -> study arrival."""

    mappings_dir: Path | None = Field(
        default=None, description="The mapping files (request-to-worklist/, dicom-to-fhir/); default: "
        "./mappings, else the mappings/ of the source checkout.")
    accession_system: str = Field(default="urn:pacsbridge:accession",
                                  description="Identifier.system of the accession numbers pacsbridge assigns.")
    timezone: str = Field(default="UTC", description="The site's IANA time zone: worklist dates and times.")
    default_station_ae: str | None = Field(
        default=None, max_length=16, description="Scheduled Station AE Title when a request names no performer.")
    default_modality: str | None = Field(default=None, max_length=16,
                                         description="Modality when a request's codes name none.")
    stable_seconds: float = Field(default=60, gt=0, description="A study is stable after this long without "
                                  "a new instance, and is then linked to the request it names.")
    matching: str | None = Field(
        default="default", description="The matching file (mappings/matching/<name>.yaml) that scores stable "
        "studies naming no request against open requests; null: no scored matching.")
    worklist_folder: Path | None = Field(
        default=None, description="Also write the open worklist entries as .wl files here, for an Orthanc "
        "ModalityWorklists plugin (Worklists.Database)")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone") from None
        return value


class SubscriberSettings(BaseModel):
    """Someone told of order status changes and linked studies."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    kind: Literal["webhook", "fhir"] = Field(description="webhook: POST JSON; fhir: PUT the resource to a FHIR base.")
    url: str = Field(description="The webhook URL, or the FHIR base URL.")
    topics: list[str] = Field(default_factory=list, description="Topics wanted; empty: all the kind handles.")
    auth: UpstreamAuth = Field(default_factory=UpstreamAuth)
    secret: SecretStr | None = Field(default=None, description="webhook: HMAC-SHA256 key of X-Pacsbridge-Signature.")
    timeout_seconds: float = Field(default=10, gt=0)


class NotificationSettings(BaseModel):
    """Durable notifications (the outbox): retried with backoff, kept across restarts."""

    subscribers: list[SubscriberSettings] = Field(default_factory=list)
    retry_base_seconds: float = Field(default=1, gt=0, description="First retry delay; doubles per attempt.")
    retry_max_seconds: float = Field(default=300, gt=0, description="Longest retry delay.")
    lease_seconds: float = Field(default=60, gt=0, description="A delivery not confirmed by then is tried again.")


class IntrospectionSettings(BaseModel):
    """RFC 7662 token introspection, for identity providers that issue opaque tokens."""

    endpoint: str | None = Field(default=None, description="Introspection URL; default: from the discovery document.")
    client_id: str | None = None
    client_secret: SecretStr | None = None
    cache_seconds: int = Field(default=60, ge=0,
                               description="Longest time a positive answer is reused (never past exp).")


class IssuerClient(BaseModel):
    """A client of the built-in issuer declared in settings (``pacsbridge clients add`` stores others)."""

    client_id: str
    secret_hash: SecretStr | None = Field(
        default=None, description="From `pacsbridge clients hash-secret`; never the secret itself.")
    jwks: dict[str, Any] | None = Field(
        default=None, description="Public keys for private_key_jwt (SMART Backend Services).")
    scopes: list[str] = Field(default_factory=list, description="Scopes the client may be granted.")


class WebLoginSettings(BaseModel):
    """Signing in to the HTML pages: built-in users (auth.mode builtin) or the OpenID provider's
    authorization code flow with PKCE (auth.mode oidc or introspection)."""

    client_id: str | None = Field(
        default=None, description="oidc/introspection: our client at the provider; its redirect URI is "
        "<public_url>/auth/callback. Unset: no page sign-in.")
    client_secret: SecretStr | None = Field(
        default=None, description="A confidential client's secret; unset: a public client (PKCE only).")
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "admin"],
        description="Scopes asked of the provider; the session gets those its access token carries.")
    authorize_params: dict[str, str] = Field(
        default_factory=dict,
        description="Extra parameters for the provider's authorization and token requests "
        "(e.g. resource, RFC 8707, so that the access token's aud is ours).")
    post_logout_redirect_uri: str | None = Field(
        default=None, description="Where the provider sends the browser after signing out (registered there).")
    session_seconds: int = Field(default=8 * 3600, ge=60, le=7 * 86400, description="A session's longest life.")
    idle_seconds: int = Field(default=30 * 60, ge=60, description="A session unused this long ends.")
    lock_after: int = Field(default=5, ge=1, description="builtin: failed sign-ins in a row that lock a user.")
    lock_seconds: int = Field(default=15 * 60, ge=1, description="builtin: how long such a lock lasts.")
    secure_cookies: bool | None = Field(
        default=None, description="Mark cookies Secure (__Host- prefix); default: when public_url is https.")


class AuthSettings(BaseModel):
    """Who may call: OAuth 2.0 bearer tokens on every route but health and discovery."""

    mode: Literal["builtin", "oidc", "introspection"] = Field(
        default="builtin",
        description="builtin: pacsbridge issues and checks its own tokens; oidc: JWTs of an external OpenID "
        "provider (discovery + JWKS); introspection: opaque tokens checked by RFC 7662.",
    )
    issuer: str | None = Field(
        default=None,
        description="oidc/introspection: the provider's issuer URL (exact iss). builtin: our issuer URL; "
        "default public_url, else http://host:port.",
    )
    discovery_url: str | None = Field(
        default=None, description="Default <issuer>/.well-known/openid-configuration.")
    audience: str = Field(default="pacsbridge", description="The aud a token must carry for us.")
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "RS384", "RS512", "PS256", "PS384", "ES256", "ES384"],
        description="JWS algorithms accepted (never none or HS*).",
    )
    leeway_seconds: int = Field(default=30, ge=0, le=300, description="Clock skew allowed on exp, nbf and iat.")
    jwks_cache_seconds: int = Field(default=3600, ge=0, description="How long provider keys are reused.")
    jwks_refetch_seconds: int = Field(
        default=30, ge=0, description="Least time between key refetches when a token names an unknown kid.")
    patient_claim: str = Field(default="patient", description="The claim that names the patient in context.")
    introspection: IntrospectionSettings = Field(default_factory=IntrospectionSettings)
    open_routes: list[str] = Field(
        default_factory=list,
        description="UNSAFE: path prefixes served without a token (e.g. /dicomweb), as an all-scopes operator. "
        "Only for a closed network or a gateway that authenticates before us.",
    )
    token_lifetime_seconds: int = Field(default=300, ge=30, le=86400, description="builtin: access token lifetime.")
    key_algorithm: Literal["ES256", "RS256"] = Field(default="ES256", description="builtin: signing key type.")
    clients: list[IssuerClient] = Field(default_factory=list, description="builtin: clients declared in settings.")
    web: WebLoginSettings = Field(default_factory=WebLoginSettings)


class Settings(BaseSettings):
    """Everything pacsbridge can be told."""

    model_config = SettingsConfigDict(
        env_prefix="PACSBRIDGE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(default=Path("pacsbridge-data"), description="Files, index and spool live here.")
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the index; default sqlite:///<data_dir>/index.sqlite. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8042, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="Base URL clients reach us by (for RetrieveURL); default: from each request."
    )
    log_level: str = "info"
    workers: int = Field(
        default=0, ge=0, le=64,
        description="HTTP worker processes; 0: one per CPU core, at most 4. Each opens the index itself.",
    )
    dicomweb: DicomwebSettings = Field(default_factory=DicomwebSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    dimse: DimseSettings = Field(default_factory=DimseSettings)
    upstreams: list[UpstreamSettings] = Field(default_factory=list, description="Archives pacsbridge fronts.")
    fhir: FhirSettings = Field(default_factory=FhirSettings)
    orders: OrdersSettings = Field(default_factory=OrdersSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    archive: str = Field(
        default="local", description="Where images live for the main DICOMweb root and AE title: local (the "
        "embedded archive) or the name of an upstream.")

    @model_validator(mode="after")
    def _archive_known(self) -> Settings:
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ValueError("upstream names must differ")
        if self.archive != "local" and self.archive not in names:
            raise ValueError(f"archive {self.archive!r} is neither local nor an upstream's name")
        titles = [t.upper() for t in [self.dimse.ae_title, *(u.local_ae_title for u in self.upstreams)] if t]
        if len(set(titles)) != len(titles):
            raise ValueError("the local AE titles (dimse.ae_title, upstreams' local_ae_title) must differ")
        if any(u.kind == "dimse" and u.retrieve == "c-move" for u in self.upstreams) and not self.dimse.enabled:
            raise ValueError("an upstream retrieving by c-move needs our SCP (dimse.enabled)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Overrides first, then the environment; ``load_settings`` adds the config file below both.
        return (init_settings, env_settings)

    def resolved_workers(self) -> int:
        if self.workers:
            return self.workers
        import os

        return max(1, min(4, os.cpu_count() or 1))

    def resolved_issuer(self) -> str:
        """The built-in issuer's URL (the ``iss`` of its tokens)."""
        return self.auth.issuer.rstrip("/") if self.auth.issuer else self.resolved_base_url()

    def resolved_base_url(self) -> str:
        """Where browsers and clients reach us: public_url, else http://host:port."""
        return self.public_url.rstrip("/") if self.public_url else f"http://{self.host}:{self.port}"

    def resolved_secure_cookies(self) -> bool:
        if self.auth.web.secure_cookies is not None:
            return self.auth.web.secure_cookies
        return bool(self.public_url and self.public_url.startswith("https://"))

    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or TOML settings file as a dict; errors name the file."""
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of settings")
    return data


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from defaults < config file < environment < overrides (None overrides are ignored).

    Sources are deep-merged, so ``PACSBRIDGE_DICOMWEB__ROOT`` changes only that key of a file's
    ``dicomweb:`` section.
    """
    file_values = read_config_file(config_file) if config_file else {}
    given = {k: v for k, v in overrides.items() if v is not None}

    class FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, InitSettingsSource(settings_cls, file_values))

    return FromFile(**given)


def masked(settings: Settings) -> dict[str, Any]:
    """The resolved settings as plain data with secrets masked, for ``check-config``."""
    data = settings.model_dump(mode="json")
    data["database_url"] = _mask_url(settings.resolved_database_url())
    return data


RESOLVED_ENV = "PB_RESOLVED_SETTINGS_JSON"
"""Environment variable that hands the resolved settings to worker processes (not a setting)."""


def to_worker_environment(settings: Settings) -> str:
    """The resolved settings as JSON for worker processes, secrets included (they stay in-process)."""
    import json

    def reveal(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"cannot pass {type(value).__name__} to a worker")

    return json.dumps(settings.model_dump(mode="python"), default=reveal)


def from_worker_environment(text: str) -> Settings:
    import json

    return Settings(**json.loads(text))


def _mask_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
