"""Compressed instances made by DCMTK (dcmcjpeg) through STOW-RS, WADO-RS frames/instances and rendering."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from ..support.dicom import instance, write
from ..support.http import read_dataset, split_multipart, stow_body
from ..support.servers import RunningServer

EVRLE = "1.2.840.10008.1.2.1"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def compress(source: Path, option: str, target: Path) -> bytes:
    if shutil.which("dcmcjpeg") is None:
        pytest.fail("DCMTK dcmcjpeg is needed (scripts/install-peers installs dcmtk)")
    done = subprocess.run(["dcmcjpeg", option, str(source), str(target)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return target.read_bytes()


@pytest.fixture
def jpeg_study(server: RunningServer, tmp_path: Path) -> dict:
    study, series = generate_uid(), generate_uid()
    ramp = (np.arange(64 * 64, dtype="<u2").reshape(64, 64) * 4) % 4096
    lossless_src = instance(study, series, number=1, rows=64, columns=64, NumberOfFrames=2)
    lossless_src.PixelData = np.stack([ramp, ramp[::-1]]).astype("<u2").tobytes()
    baseline_src = instance(study, series, number=2, rows=64, columns=64, BitsStored=8, HighBit=7,
                            BitsAllocated=8, WindowCenter=128, WindowWidth=256, RescaleIntercept=0)
    baseline_src.PixelData = (ramp // 16).astype("u1").tobytes()
    lossless = compress(write(lossless_src, tmp_path / "src"), "+e1", tmp_path / "ll.dcm")
    baseline = compress(write(baseline_src, tmp_path / "src"), "+eb", tmp_path / "bl.dcm")
    body, content_type = stow_body([lossless, baseline])
    r = httpx.post(server.dicomweb + "/studies", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text
    base = f"{server.dicomweb}/studies/{study}/series/{series}/instances"
    # dcmcjpeg gives a lossy result a new SOP Instance UID (its --uid-default), so read it back
    baseline_uid = pydicom.dcmread(io.BytesIO(baseline), stop_before_pixels=True).SOPInstanceUID
    return {"lossless": f"{base}/{lossless_src.SOPInstanceUID}", "baseline": f"{base}/{baseline_uid}",
            "ramp": ramp, "study": f"{server.dicomweb}/studies/{study}"}


def frame(url: str, accept: str) -> tuple[dict[str, str], bytes]:
    r = httpx.get(url, headers={"Accept": accept})
    assert r.status_code == 200, (r.status_code, r.text)
    ((headers, data),) = split_multipart(r.content, r.headers["content-type"])
    return headers, data


def test_frames_as_stored_and_decoded(jpeg_study: dict) -> None:
    star = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    headers, data = frame(jpeg_study["lossless"] + "/frames/2", star)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={JPEG_LOSSLESS_SV1}"
    assert data[:2] == b"\xff\xd8"  # the JPEG bitstream as stored
    plain = 'multipart/related; type="application/octet-stream"'
    headers, data = frame(jpeg_study["lossless"] + "/frames/2", plain)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EVRLE}"
    assert np.array_equal(np.frombuffer(data, "<u2").reshape(64, 64), jpeg_study["ramp"][::-1])
    headers, data = frame(jpeg_study["lossless"] + "/frames/1", 'multipart/related; type="image/jpeg"')
    assert headers["content-type"] == f"image/jpeg; transfer-syntax={JPEG_LOSSLESS_SV1}"
    lossless_only = f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_LOSSLESS_SV1}'
    r = httpx.get(jpeg_study["baseline"] + "/frames/1", headers={"Accept": lossless_only})
    assert r.status_code == 406  # baseline is stored; lossless cannot be made from it


def test_instances_are_decompressed_by_default_and_kept_with_star(jpeg_study: dict) -> None:
    r = httpx.get(jpeg_study["study"], headers={"Accept": 'multipart/related; type="application/dicom"'})
    datasets = [read_dataset(d) for _, d in split_multipart(r.content, r.headers["content-type"])]
    assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {EVRLE}
    lossless = next(ds for ds in datasets if ds.get("NumberOfFrames", 1) == 2)
    assert np.array_equal(lossless.pixel_array[0], jpeg_study["ramp"])
    star = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    r = httpx.get(jpeg_study["study"], headers=star)
    parts = split_multipart(r.content, r.headers["content-type"])
    stored = {read_dataset(d).file_meta.TransferSyntaxUID for _, d in parts}
    assert stored == {JPEG_LOSSLESS_SV1, JPEG_BASELINE}
    baseline = pydicom.dcmread(io.BytesIO(httpx.get(jpeg_study["baseline"], headers={
        "Accept": f"application/dicom; transfer-syntax={EVRLE}"}).content))
    assert baseline.file_meta.TransferSyntaxUID == EVRLE and baseline.pixel_array.shape == (64, 64)


@pytest.mark.parametrize("which", ["lossless", "baseline"])
def test_rendering_compressed_sources(jpeg_study: dict, which: str) -> None:
    r = httpx.get(jpeg_study[which] + "/rendered", params={"window": "2048,4096"} if which == "lossless" else {},
                  headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(r.content)).convert("L"), dtype=float)
    assert pixels.shape == (64, 64) and pixels.std() > 20  # a visible ramp, not a blank image
