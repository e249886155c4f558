"""The Archive port's contract, run over every implementation: the embedded archive (SQLite, PostgreSQL)
and the proxy archive over a real Orthanc reached by DICOMweb or by DIMSE.

Tests taking ``archive`` run on every implementation; those taking ``local_archive`` state what only the
embedded archive promises (its own matching rules, replacing files, deleting, its index's concurrency):
an upstream matches by its own rules (docs/proxy.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pacsbridge.backends.local import LocalArchive
from pacsbridge.domain.errors import InvalidInput, NotFound
from pacsbridge.domain.model import InstanceRecord, Level, Scope
from pacsbridge.domain.query import Match, MatchKind, Query
from pacsbridge.services.ports import Archive

from ..support.dicom import instance, record_of, write
from .conftest import upstream_archive

pytestmark = pytest.mark.anyio


@pytest.fixture
async def local_archive(db_url: str, tmp_path: Path) -> AsyncIterator[LocalArchive]:
    archive = LocalArchive.open(db_url, tmp_path / "data", fsync=False)
    yield archive
    await archive.close()


@pytest.fixture(params=["local-sqlite", pytest.param("local-postgres", marks=pytest.mark.postgres),
                        pytest.param("upstream-dicomweb", marks=pytest.mark.orthanc),
                        pytest.param("upstream-dimse", marks=pytest.mark.orthanc)])
async def archive(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Archive]:
    kind = str(request.param)
    if kind.startswith("local"):
        url = (f"sqlite:///{tmp_path / 'index.sqlite'}" if kind == "local-sqlite"
               else str(request.getfixturevalue("postgres").new_database()))
        archive: Archive = LocalArchive.open(url, tmp_path / "data", fsync=False)
    else:
        upstream = request.getfixturevalue("contract_orthanc")
        archive = upstream_archive(kind.removeprefix("upstream-"), upstream, tmp_path / "cache")
    yield archive
    await archive.close()


async def store(archive: Archive, path: Path, record: InstanceRecord | None = None) -> bool:
    """Store one file; True if it replaced an instance (its failure raised)."""
    (outcome,) = await archive.store_many([(path, record or record_of(path))])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def put(archive: Archive, tmp_path: Path, **kwargs: object) -> tuple[str, str, str]:
    ds = instance(**kwargs)  # type: ignore[arg-type]
    path = write(ds, tmp_path / "in")
    await store(archive, path)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def single(tag: str, vr: str, value: str) -> Match:
    kind = MatchKind.WILDCARD if ("*" in value or "?" in value) else MatchKind.SINGLE
    return Match(tag, vr, kind, value=value)


def uids(results: list[dict], tag: str = "0020000D") -> set[str]:
    return {r[tag]["Value"][0] for r in results}


async def test_store_locate_and_metadata(archive: Archive, tmp_path: Path) -> None:
    study, series, sop = await put(archive, tmp_path)
    found = await archive.locate(Scope(study))
    assert [f.ref.sop_uid for f in found] == [sop]
    assert Path(found[0].path).read_bytes()[128:132] == b"DICM"
    assert found[0].patient_id == "PID-1"
    texts = await archive.metadata(Scope(study, series, sop))
    assert '"00080018":{"vr":"UI","Value":["' + sop + '"]}' in texts[0]
    assert "7FE00010" in texts[0] and "BulkDataURI" in texts[0]


async def test_storing_again_replaces_and_removes_the_old_file(local_archive: LocalArchive, tmp_path: Path) -> None:
    study, series, sop = await put(local_archive, tmp_path)
    first = (await local_archive.locate(Scope(study)))[0].path
    ds = instance(study, series, SOPInstanceUID=sop, PatientName="Doe^Janet")
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    path = write(ds, tmp_path / "again")
    assert await store(local_archive, path) is True
    found = await local_archive.locate(Scope(study))
    assert len(found) == 1 and found[0].path != first
    assert not Path(first).exists()
    page = await local_archive.search(Query(Level.STUDY, (single("00100010", "PN", "Doe^Janet"),)))
    assert uids(page.results) == {study}


async def test_unknown_scope_is_not_found(archive: Archive) -> None:
    with pytest.raises(NotFound):
        await archive.locate(Scope(generate_uid()))
    with pytest.raises(NotFound):
        await archive.metadata(Scope(generate_uid()))


@pytest.mark.parametrize(("tag", "vr", "value", "hit"), [
    ("00100020", "LO", "PID-7", True),
    ("00100020", "LO", "pid-7", False),          # single value matching is case-sensitive
    ("00100020", "LO", "PID-*", True),
    ("00100010", "PN", "müller^jürgen", True),   # PN: case-insensitive
    ("00100010", "PN", "MULLER^JURGEN", True),   # ... and accent-insensitive
    ("00100010", "PN", "Mül*", True),
    ("00100010", "PN", "Meier*", False),
    ("00080050", "SH", "ACC-77", True),
    ("00080090", "PN", "referrer^rita", True),
    ("00200010", "SH", "S1", True),
    ("00081030", "LO", "*Knee*", True),
])
async def test_study_matching(local_archive: LocalArchive, tmp_path: Path, tag: str, vr: str, value: str,
                              hit: bool) -> None:
    study, _, _ = await put(local_archive, tmp_path, PatientID="PID-7", PatientName="Müller^Jürgen",
                            AccessionNumber="ACC-77", StudyID="S1", StudyDescription="MR Knee left")
    await put(local_archive, tmp_path, PatientID="OTHER", PatientName="Other^Person", AccessionNumber="X",
              ReferringPhysicianName="Other^Doctor",
              StudyID="S2", StudyDescription="CT Head")
    page = await local_archive.search(Query(Level.STUDY, (single(tag, vr, value),)))
    assert (uids(page.results) == {study}) is hit
    if not hit:
        assert study not in uids(page.results)


async def test_wildcards(archive: Archive, tmp_path: Path) -> None:
    study, _, _ = await put(archive, tmp_path, PatientID="PID-7", PatientName="Doe^Jane", AccessionNumber="ACC-77")
    await put(archive, tmp_path, PatientID="OTHER", PatientName="Roe^Richard", AccessionNumber="X")
    for tag, vr, value in (("00100020", "LO", "PID-*"), ("00100010", "PN", "Doe^J*"), ("00100010", "PN", "?oe^Ja*"),
                           ("00080050", "SH", "ACC-7?")):
        page = await archive.search(Query(Level.STUDY, (single(tag, vr, value),)))
        assert uids(page.results) == {study}, value


async def test_date_and_time_ranges(archive: Archive, tmp_path: Path) -> None:
    jan, _, _ = await put(archive, tmp_path, StudyDate="20240115", StudyTime="0830")
    feb, _, _ = await put(archive, tmp_path, StudyDate="20240210", StudyTime="171500.25")

    async def dates(low: str | None, high: str | None, tag: str = "00080020", vr: str = "DA") -> set[str]:
        page = await archive.search(Query(Level.STUDY, (Match(tag, vr, MatchKind.RANGE, low=low, high=high),)))
        return uids(page.results)

    assert await dates("20240101", "20240131") == {jan}
    assert await dates("20240201", None) == {feb}
    assert await dates(None, "20240115") == {jan}
    assert await dates("20240116", "20240209") == set()
    assert await dates("0800", "0900", "00080030", "TM") == {jan}
    assert await dates("17", None, "00080030", "TM") == {feb}


async def test_a_partial_upper_time_bound_covers_its_whole_minute(local_archive: LocalArchive, tmp_path: Path
                                                                  ) -> None:
    """Ours: "-1715" ends at 17:15:59.999999 (Orthanc compares the text and leaves 171500.25 out)."""
    late, _, _ = await put(local_archive, tmp_path, StudyTime="171500.25")
    page = await local_archive.search(Query(Level.STUDY, (Match("00080030", "TM", MatchKind.RANGE, high="1715"),)))
    assert uids(page.results) == {late}


async def test_uid_lists_and_lower_level_keys(archive: Archive, tmp_path: Path) -> None:
    ct, _, _ = await put(archive, tmp_path, Modality="CT")
    mr, _, _ = await put(archive, tmp_path, Modality="MR")
    page = await archive.search(Query(Level.STUDY, (Match("0020000D", "UI", MatchKind.UID_LIST,
                                                          values=(ct, mr, generate_uid())),)))
    assert uids(page.results) == {ct, mr}
    page = await archive.search(Query(Level.STUDY, (single("00080061", "CS", "MR"),)))
    assert uids(page.results) == {mr}


async def test_series_keys_match_at_the_study_level(local_archive: LocalArchive, tmp_path: Path) -> None:
    """Ours: a lower level's key narrows studies (Orthanc ignores it)."""
    ct, _, _ = await put(local_archive, tmp_path, Modality="CT")
    await put(local_archive, tmp_path, Modality="MR")
    page = await local_archive.search(Query(Level.STUDY, (single("00080060", "CS", "CT"),)))
    assert uids(page.results) == {ct}


async def test_keys_we_cannot_match_are_refused(local_archive: LocalArchive) -> None:
    with pytest.raises(InvalidInput):
        await local_archive.search(Query(Level.STUDY, (single("00181000", "LO", "X"),)))


async def test_counts_modalities_and_sop_classes(archive: Archive, tmp_path: Path) -> None:
    study = generate_uid()
    series_a, series_b = generate_uid(), generate_uid()
    for n in range(3):
        await put(archive, tmp_path, study_uid=study, series_uid=series_a, number=n + 1, Modality="CT")
    await put(archive, tmp_path, study_uid=study, series_uid=series_b, Modality="SR",
              SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11")
    page = await archive.search(Query(Level.STUDY, includefields=("00080062",)))
    (result,) = page.results
    assert result["00201206"]["Value"] == [2]
    assert result["00201208"]["Value"] == [4]
    assert result["00080061"]["Value"] == ["CT", "SR"]
    if isinstance(archive, LocalArchive):  # Orthanc's QIDO-RS does not compute SOPClassesInStudy
        assert set(result["00080062"]["Value"]) == {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.88.11"}
    series = await archive.search(Query(Level.SERIES, (Match("0020000D", "UI", MatchKind.UID_LIST,
                                                             values=(study,)),)))
    counts = {r["0020000E"]["Value"][0]: r["00201209"]["Value"][0] for r in series.results}
    assert counts == {series_a: 3, series_b: 1}


async def test_series_and_instance_level_keys(archive: Archive, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    for n in range(1, 4):
        await put(archive, tmp_path, study_uid=study, series_uid=series, number=n, SeriesNumber=5)
    page = await archive.search(Query(Level.INSTANCE, (single("00200013", "IS", "2"),)))
    assert [r["00200013"]["Value"][0] for r in page.results] == [2]
    page = await archive.search(Query(Level.SERIES, (single("00200011", "IS", "5"),)))
    assert uids(page.results, "0020000E") == {series}
    page = await archive.search(Query(Level.INSTANCE, (Match("00080016", "UI", MatchKind.UID_LIST,
                                                             values=("1.2.840.10008.5.1.4.1.1.2",)),)))
    assert len(page.results) == 3


async def test_unindexed_keys_are_matched_too(local_archive: LocalArchive, tmp_path: Path) -> None:
    """A key without an index column (Manufacturer, a series attribute) is filtered in Python."""
    a, _, _ = await put(local_archive, tmp_path, Manufacturer="ACME")
    await put(local_archive, tmp_path, Manufacturer="Other")
    page = await local_archive.search(Query(Level.SERIES, (single("00080070", "LO", "AC*"),)))
    assert uids(page.results) == {a}


async def test_paging_is_stable_and_counts_the_rest(archive: Archive, tmp_path: Path) -> None:
    made = {(await put(archive, tmp_path, StudyDate=f"202401{d:02d}"))[0] for d in range(1, 8)}
    seen: list[str] = []
    for offset in range(0, 7, 3):
        page = await archive.search(Query(Level.STUDY, limit=3, offset=offset))
        seen += [r["0020000D"]["Value"][0] for r in page.results]
        # Exact from our index; an upstream is asked one more than the page, so at least 1 when there are more.
        assert page.remaining == max(0, 7 - offset - 3) if isinstance(archive, LocalArchive) else (
            (page.remaining > 0) == (offset + 3 < 7))
    assert len(seen) == 7 and set(seen) == made
    again = await archive.search(Query(Level.STUDY, limit=3, offset=3))
    assert [r["0020000D"]["Value"][0] for r in again.results] == seen[3:6]


async def test_delete_removes_rows_and_files(local_archive: LocalArchive, tmp_path: Path) -> None:
    study, _, _ = await put(local_archive, tmp_path)
    path = (await local_archive.locate(Scope(study)))[0].path
    assert await local_archive.delete(Scope(study)) == 1
    assert not Path(path).exists()
    assert (await local_archive.search(Query(Level.STUDY))).results == []


async def test_character_sets_are_decoded(local_archive: LocalArchive, tmp_path: Path) -> None:
    """An ISO_IR 100 (Latin-1) instance is found and returned by its Unicode name."""
    study, _, _ = await put(local_archive, tmp_path, SpecificCharacterSet="ISO_IR 100", PatientName="Gößmann^Zoë")
    page = await local_archive.search(Query(Level.STUDY, (single("00100010", "PN", "GOSSMANN^ZOE"),)))
    assert uids(page.results) == {study}
    assert page.results[0]["00100010"]["Value"][0]["Alphabetic"] == "Gößmann^Zoë"


async def test_counts_follow_replacements_and_deletes(local_archive: LocalArchive, tmp_path: Path) -> None:
    """An instance moved to another series by a replacement, then deleted, keeps the counts true."""
    study, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    _, _, sop = await put(local_archive, tmp_path, study_uid=study, series_uid=series_a, Modality="CT")
    await put(local_archive, tmp_path, study_uid=study, series_uid=series_a, number=2, Modality="CT")
    moved = instance(study, series_b, SOPInstanceUID=sop, Modality="MR")
    moved.file_meta.MediaStorageSOPInstanceUID = sop
    path = write(moved, tmp_path / "moved")
    await store(local_archive, path)

    async def study_row() -> dict:
        (result,) = (await local_archive.search(Query(Level.STUDY))).results
        return result

    row = await study_row()
    assert (row["00201206"]["Value"], row["00201208"]["Value"], row["00080061"]["Value"]) == ([2], [2], ["CT", "MR"])
    await local_archive.delete(Scope(study, series_b))
    row = await study_row()
    assert (row["00201206"]["Value"], row["00201208"]["Value"], row["00080061"]["Value"]) == ([1], [1], ["CT"])


async def test_concurrent_stores_into_one_study_keep_counts_right(local_archive: LocalArchive, tmp_path: Path) -> None:
    """Rule 2 of local.py: stores into one study are serialised by its row, so no count is lost."""
    import anyio

    study, series = generate_uid(), generate_uid()
    paths = [write(instance(study, series, number=n), tmp_path / f"c{n}") for n in range(1, 17)]
    records = [record_of(p) for p in paths]
    async with anyio.create_task_group() as tg:
        for path, record in zip(paths, records, strict=True):
            tg.start_soon(store, local_archive, path, record)
    (result,) = (await local_archive.search(Query(Level.STUDY))).results
    assert result["00201208"]["Value"] == [16] and result["00201206"]["Value"] == [1]
    (series_row,) = (await local_archive.search(Query(Level.SERIES))).results
    assert series_row["00201209"]["Value"] == [16]


async def test_concurrent_writers_sharing_one_index_keep_counts_right(db_url: str, tmp_path: Path) -> None:
    """Two archives on one index and one folder, as two worker processes have them, storing batches into
    one study at once: the writers queue (local.py rule 1) and every count stays right."""
    import anyio

    first = LocalArchive.open(db_url, tmp_path / "data", fsync=False)
    second = LocalArchive.open(db_url, tmp_path / "data", fsync=False)
    study, series = generate_uid(), generate_uid()
    batches = [[write(instance(study, series, number=10 * b + n), tmp_path / f"w{b}-{n}") for n in range(4)]
               for b in range(6)]
    try:
        async with anyio.create_task_group() as tg:
            for b, paths in enumerate(batches):
                target = first if b % 2 else second
                tg.start_soon(target.store_many, [(p, record_of(p)) for p in paths])
        (result,) = (await first.search(Query(Level.STUDY))).results
        assert result["00201208"]["Value"] == [24] and result["00201206"]["Value"] == [1]
    finally:
        await first.close()
        await second.close()


async def test_a_batch_is_stored_whole_and_in_order(local_archive: LocalArchive, tmp_path: Path) -> None:
    """store_many: new items give False, an item repeating an earlier SOP of the same batch replaces it
    (True) and its first file is gone; the counts see one instance per SOP."""
    study, series = generate_uid(), generate_uid()
    paths = [write(instance(study, series, number=n), tmp_path / f"b{n}") for n in range(1, 4)]
    sop = record_of(paths[0]).ref.sop_uid
    again = instance(study, series, SOPInstanceUID=sop, PatientName="Doe^Again")
    again.file_meta.MediaStorageSOPInstanceUID = sop
    repeat = write(again, tmp_path / "repeat")
    outcomes = await local_archive.store_many([(p, record_of(p)) for p in [*paths, repeat]])
    assert outcomes == [False, False, False, True]
    found = await local_archive.locate(Scope(study))
    assert len(found) == 3
    kept = next(f for f in found if f.ref.sop_uid == sop)
    assert len(list(Path(kept.path).parent.glob(f"{sop}.*.dcm"))) == 1
    (row,) = (await local_archive.search(Query(Level.STUDY))).results
    assert row["00201208"]["Value"] == [3]


async def test_one_bad_item_fails_alone(local_archive: LocalArchive, tmp_path: Path) -> None:
    """A missing staged file and a record the index cannot take each fail by themselves; the other
    items of the batch are stored, and nothing of the failed ones remains."""
    study, series = generate_uid(), generate_uid()
    paths = [write(instance(study, series, number=n), tmp_path / f"f{n}") for n in range(1, 5)]
    records = [record_of(p) for p in paths]
    missing = tmp_path / "gone.dcm"
    broken = replace(records[2], instance={**records[2].instance, "00209999": {"vr": "LO", "Value": [object()]}})
    outcomes = await local_archive.store_many([(paths[0], records[0]), (missing, records[1]), (paths[2], broken),
                                         (paths[3], records[3])])
    assert outcomes[0] is False and outcomes[3] is False
    assert isinstance(outcomes[1], OSError) and isinstance(outcomes[2], TypeError)
    found = await local_archive.locate(Scope(study))
    assert {f.ref.sop_uid for f in found} == {records[0].ref.sop_uid, records[3].ref.sop_uid}
    stored_files = {p.name for p in (tmp_path / "data" / "files").rglob("*.dcm")}
    assert len(stored_files) == 2
    (row,) = (await local_archive.search(Query(Level.STUDY))).results
    assert row["00201208"]["Value"] == [2]
