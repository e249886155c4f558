"""The Python dicomweb-client (an independent implementation) against pacsbridge on loopback."""

from __future__ import annotations

import numpy as np
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from ..support.dicom import instance
from ..support.servers import RunningServer


def test_stow_qido_wado_round_trip(server: RunningServer) -> None:
    client = DICOMwebClient(url=server.dicomweb)
    study, series = generate_uid(), generate_uid()
    datasets = [instance(study, series, number=n, rows=20, columns=12, PatientName="Röntgen^Wilhelm")
                for n in range(1, 4)]
    response = client.store_instances(datasets=datasets)
    assert len(response.ReferencedSOPSequence) == 3

    found = client.search_for_studies(search_filters={"PatientName": "röntgen*"})
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    series_found = client.search_for_series(study_instance_uid=study)
    assert series_found[0]["0020000E"]["Value"] == [series]
    instances = client.search_for_instances(study_instance_uid=study, series_instance_uid=series)
    assert len(instances) == 3

    retrieved = client.retrieve_study(study)
    assert {ds.SOPInstanceUID for ds in retrieved} == {ds.SOPInstanceUID for ds in datasets}
    original = {ds.SOPInstanceUID: ds for ds in datasets}
    for ds in retrieved:
        assert np.array_equal(ds.pixel_array, original[ds.SOPInstanceUID].pixel_array)

    metadata = client.retrieve_series_metadata(study, series)
    assert len(metadata) == 3 and all("7FE00010" in m for m in metadata)

    sop = datasets[1].SOPInstanceUID
    (frame,) = client.retrieve_instance_frames(study, series, sop, frame_numbers=[1])
    assert frame == datasets[1].PixelData

    jpeg = client.retrieve_instance_rendered(study, series, sop, media_types=("image/jpeg",))
    assert jpeg[:2] == b"\xff\xd8"

    single = client.retrieve_instance(study, series, sop)
    assert single.PatientName == "Röntgen^Wilhelm"
