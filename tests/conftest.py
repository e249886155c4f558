"""Fixtures shared by every suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsbridge.settings import Settings

from .support.servers import OPEN_DICOMWEB, Postgres, RunningServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster for the session. Missing binaries fail the suite unless opted out."""
    if os.environ.get("PACSBRIDGE_TEST_SKIP_POSTGRES") == "1":
        pytest.skip("PACSBRIDGE_TEST_SKIP_POSTGRES=1")
    pg = Postgres()
    yield pg
    pg.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", storage={"fsync": False}, auth=OPEN_DICOMWEB)


@pytest.fixture
def server(settings: Settings) -> Iterator[RunningServer]:
    from .support.servers import serve

    with serve(settings) as running:
        yield running
