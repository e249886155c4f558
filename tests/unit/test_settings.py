"""Typed settings: file < environment < overrides; secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsbridge.settings import Settings, load_settings, masked


def test_defaults_are_the_embedded_store() -> None:
    s = Settings()
    assert s.data_dir == Path("pacsbridge-data")
    assert s.resolved_database_url().startswith("sqlite:///") and s.resolved_database_url().endswith("index.sqlite")
    assert s.dicomweb.root == "/dicomweb" and s.host == "127.0.0.1"


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('port = 1000\nhost = "0.0.0.0"\n[dicomweb]\nroot = "dw/"\n')
    monkeypatch.setenv("PACSBRIDGE_HOST", "127.0.0.2")
    s = load_settings(config, port=3000)
    assert (s.port, s.host, s.dicomweb.root) == (3000, "127.0.0.2", "/dw")


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACSBRIDGE_DICOMWEB__QIDO_MAX_LIMIT", "25")
    monkeypatch.setenv("PACSBRIDGE_CORS__ALLOW_ORIGINS", '["http://viewer:3000"]')
    s = load_settings()
    assert s.dicomweb.qido_max_limit == 25 and s.cors.allow_origins == ["http://viewer:3000"]


def test_secrets_are_masked() -> None:
    s = Settings(database_url="postgresql+psycopg://user:pw@host:5432/db")
    assert masked(s)["database_url"] == "postgresql+psycopg://user:***@host:5432/db"
    assert "pw" not in repr(s)


def test_unknown_settings_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("prot: 1\n")
    with pytest.raises(ValueError, match="prot"):
        load_settings(config)


def test_environment_changes_one_key_of_a_file_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("dicomweb:\n  root: /from-file\n  qido_max_limit: 7\n")
    monkeypatch.setenv("PACSBRIDGE_DICOMWEB__ROOT", "/from-env")
    s = load_settings(config)
    assert (s.dicomweb.root, s.dicomweb.qido_max_limit) == ("/from-env", 7)


def test_pynetdicom_never_logs_identifiers_even_at_debug() -> None:
    """pynetdicom logs C-FIND identifiers (patient names) at INFO/DEBUG: held at WARNING."""
    import logging

    from pacsbridge.logs import configure_logging

    configure_logging("debug")
    assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.WARNING
    assert not logging.getLogger("pynetdicom.dimse_primitives").isEnabledFor(logging.INFO)


@pytest.mark.parametrize(("auth", "says"), [
    ({"type": "basic"}, "basic auth needs username"),
    ({"type": "bearer"}, "bearer auth needs token"),
    ({"type": "client_credentials", "client_id": "x"}, "client_credentials needs token_url"),
])
def test_an_upstream_auth_missing_its_credentials_is_refused_with_the_settings(auth: dict, says: str) -> None:
    """Refused when the settings are read (so check-config says it), not when the app is built."""
    with pytest.raises(ValueError, match=says):
        Settings(upstreams=[{"name": "up", "kind": "dicomweb", "url": "http://127.0.0.1:1/dw", "auth": auth}])
