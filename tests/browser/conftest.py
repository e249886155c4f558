"""The real OHIF Viewer, in Debian Chromium driven by Playwright, against pacsbridge on loopback.

Missing Chromium or a missing OHIF build fails the suite (``scripts/install-peers`` provides both)
unless ``PACSBRIDGE_TEST_SKIP_BROWSER=1`` is set. Playwright drives Debian's Chromium; its own browser
download is not used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from pacsbridge.settings import Settings
from pacsbridge.synthetic import StudySpec, make_instance, study_specs

from ..support.http import stow_body
from ..support.ohif import Session, Stack, Traffic, ohif_dist, serve_ohif
from ..support.orthanc import missing as orthanc_missing
from ..support.orthanc import orthanc
from ..support.servers import OPEN_DICOMWEB, RunningServer, free_port, serve

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# OHIF starts a guided tour on the first visit to /viewer; a returning user has it marked as shown.
SKIP_TOUR = "try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } catch (e) {}"


def _require_browser() -> str:
    if os.environ.get("PACSBRIDGE_TEST_SKIP_BROWSER") == "1":
        pytest.skip("PACSBRIDGE_TEST_SKIP_BROWSER=1")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian chromium not found on PATH (scripts/install-peers installs it)")
    if not (ohif_dist() / "index.html").is_file():
        pytest.fail(f"OHIF build missing at {ohif_dist()} (run scripts/install-peers)")
    return chromium


def stow_study(dicomweb: str, spec: StudySpec) -> None:
    series_uid = generate_uid()
    instances = [make_instance(spec, series_uid, 1, n) for n in range(1, spec.instances_per_series + 1)]
    body, content_type = stow_body(instances)
    response = httpx.post(f"{dicomweb}/studies", content=body, timeout=60,
                          headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
                                              timeout=60_000)
        yield launched
        launched.close()


@contextlib.contextmanager
def pacsbridge_for(kind: str, settings: Settings) -> Iterator[RunningServer]:
    """pacsbridge with its embedded archive, or in front of an Orthanc reachable only over DIMSE (its
    DICOMweb plugin off): STOW-RS is forwarded by C-STORE, QIDO-RS asks C-FIND, WADO-RS is served from
    instances fetched by C-MOVE into pacsbridge's own SCP."""
    if kind == "local":
        with serve(settings) as server:
            yield server
        return
    reason = orthanc_missing()
    if reason:
        pytest.fail(f"Orthanc is needed for OHIF over a DIMSE-only PACS: {reason}")
    dimse_port = free_port()
    with orthanc(aet="DIMSEONLY", modalities={"pb": ("PACSBRIDGE", "127.0.0.1", dimse_port)},
                 extra_config={"DicomWeb": {"Enable": False}}) as pacs:
        upstream = {"name": "pacs", "kind": "dimse", "ae_title": pacs.aet, "host": "127.0.0.1",
                    "port": pacs.dicom_port, "retrieve": "c-move", "timeout_seconds": 20}
        proxied = settings.model_copy(update={
            "upstreams": Settings(upstreams=[upstream]).upstreams, "archive": "pacs",
            "dimse": settings.dimse.model_copy(update={"port": dimse_port})})
        with serve(proxied) as server:
            yield server


@pytest.fixture(scope="module", params=["local", pytest.param("dimse-upstream", marks=pytest.mark.orthanc)])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _require_browser()
    names = ["Müller^Jürgen", "Doe^Jane"]
    specs = tuple(
        dataclasses.replace(spec, patient_name=name)
        for spec, name in zip(study_specs(2, seed=31, modality="CT", series=1, instances_per_series=10),
                              names, strict=True)
    )
    with serve_ohif() as ohif:
        settings = Settings(data_dir=tmp_path_factory.mktemp("ohif") / "data", storage={"fsync": False},
                            cors={"allow_origins": [ohif.origin]}, auth=OPEN_DICOMWEB)
        with pacsbridge_for(str(request.param), settings) as pacsbridge:
            ohif.point_at(pacsbridge.dicomweb)
            for spec in specs:
                stow_study(pacsbridge.dicomweb, spec)
            yield Stack(pacsbridge, ohif, specs)


@pytest.fixture
def session(browser: Any, stack: Stack) -> Iterator[Session]:
    """A fresh browser context: empty profile, service workers blocked (OHIF registers one). Its
    DICOMweb traffic and console errors are printed at teardown, so a failing test shows them."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, service_workers="block")
    context.add_init_script(SKIP_TOUR)
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    console: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: console.append(message.text) if message.type == "error" else None)
    traffic = Traffic(page, stack.pacsbridge.dicomweb)
    yield Session(page, traffic, errors)
    context.close()
    print("DICOMweb requests:", traffic.report(), "console errors:", *console, sep="\n")
