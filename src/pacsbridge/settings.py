"""One typed settings object, from a YAML/TOML file and ``PACSBRIDGE_...`` environment variables.

Read only by ``app.py`` and ``cli.py``; everything else receives plain values. Precedence, highest
first: explicit overrides (CLI options), environment, config file, defaults. Nested settings use a
double underscore in the environment: ``PACSBRIDGE_DICOMWEB__ROOT=/wado``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator
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

    fsync: bool = Field(default=True, description="fsync each stored file and its folder before indexing it.")


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
    data = settings.model_dump(mode="json")
    if settings.database_url is not None:
        data["database_url"] = settings.database_url.get_secret_value()
    import json

    return json.dumps(data)


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
