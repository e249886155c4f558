"""The whole DICOMweb round trip with the index in PostgreSQL (the scale-out store)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from pacsbridge.settings import Settings

from ..support.dicom import instance
from ..support.http import read_dataset, split_multipart, stow_body
from ..support.servers import OPEN_DICOMWEB, Postgres, serve

pytestmark = pytest.mark.postgres


def test_stow_qido_wado_with_postgres(postgres: Postgres, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=postgres.new_database(), storage={"fsync": False},
                        auth=OPEN_DICOMWEB)
    study = generate_uid()
    parts = [instance(study, number=n, PatientName="Łukasiewicz^Jan") for n in (1, 2)]
    with serve(settings) as server:
        body, content_type = stow_body(parts)
        r = httpx.post(server.dicomweb + "/studies", content=body, headers={"Content-Type": content_type})
        assert r.status_code == 200, r.text
        found = httpx.get(server.dicomweb + "/studies", params={"PatientName": "lukasiewicz*"}).json()
        assert [f["0020000D"]["Value"][0] for f in found] == [study]
        assert found[0]["00201208"]["Value"] == [2]
        accept = {"Accept": 'multipart/related; type="application/dicom"'}
        r = httpx.get(f"{server.dicomweb}/studies/{study}", headers=accept)
        assert {read_dataset(d).SOPInstanceUID for _, d in split_multipart(r.content, r.headers["content-type"])} == {
            p.SOPInstanceUID for p in parts}
    assert not (tmp_path / "data" / "index.sqlite").exists()
