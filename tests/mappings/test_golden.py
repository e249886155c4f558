"""Golden cases: every mapping file under mappings/ turns its case documents into exactly the expected output.

Matching files (``mappings/matching/``) have cases with ``request``, ``study`` and the expected
``decision`` and ``confidence`` (rounded to 3 places).

A case lives in ``tests/mappings/cases/<folder>/<mapping name>/<case>.yaml`` with ``documents``
(``source`` and the named documents) and either ``expected`` (the main output) plus
``expected_sections`` (section name -> list of objects), or ``error`` (a regular expression the
MappingError of ``apply``, or of ``apply_section`` of ``section``, must match; the message must not
contain any value of the documents).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from fhir.resources.R4B.imagingstudy import ImagingStudy
from pydicom import config
from pydicom.valuerep import validate_value

from pacsbridge.domain.errors import MappingError
from pacsbridge.formats.dicom_json import dataset_to_json, json_to_dataset
from pacsbridge.mapping import Mapping, load_mapping, load_matching

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"
CASES = Path(__file__).resolve().parent / "cases"


def mapping_files() -> list[Path]:
    return sorted(p for p in MAPPINGS.rglob("*.yaml") if p.parent.name != "matching")


def matching_files() -> list[Path]:
    return sorted((MAPPINGS / "matching").glob("*.yaml"))


def case_folder(path: Path) -> Path:
    name = load_matching(path).name if path.parent.name == "matching" else load_mapping(path).name
    return CASES / path.parent.relative_to(MAPPINGS) / name


def matching_cases() -> list[tuple[Path, Path]]:
    return [(path, case) for path in matching_files() for case in sorted(case_folder(path).glob("*.yaml"))]


def all_cases() -> list[tuple[Path, Path]]:
    return [(path, case) for path in mapping_files() for case in sorted(case_folder(path).glob("*.yaml"))]


def leaves(value: Any) -> list[str]:
    """Every text or number in a document, for checking that an error message quotes none of them."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in leaves(v)]
    return [str(value)] if isinstance(value, str | int) and not isinstance(value, bool) else []


def check_output(mapping: Mapping, output: dict[str, Any], sections: dict[str, list[dict[str, Any]]]) -> None:
    """The output is what its standard allows: a valid R4 resource, or DICOM values of the right VRs."""
    if mapping.name == "imagingstudy":
        resource = {"resourceType": "ImagingStudy", "subject": {"reference": "Patient/x"}, **output}
        ImagingStudy.model_validate(resource)
    if mapping.target == "dicom":
        entry = dict(output)
        if "steps" in sections:
            entry["00400100"] = {"vr": "SQ", "Value": sections["steps"]}  # ScheduledProcedureStepSequence
        dataset = json_to_dataset(entry)
        for element in dataset.iterall():
            if element.VR != "SQ":
                validate_value(element.VR, element.value, config.RAISE)
        assert dataset_to_json(dataset) == dict(sorted(entry.items()))


def test_every_mapping_file_has_golden_cases() -> None:
    assert mapping_files(), "no mapping files found"
    missing = [str(p.relative_to(ROOT)) for p in mapping_files() + matching_files()
               if not list(case_folder(p).glob("*.yaml"))]
    assert not missing, f"add golden cases under tests/mappings/cases/ for: {missing}"


@pytest.mark.parametrize(("path", "case"), all_cases(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_case(path: Path, case: Path) -> None:
    mapping = load_mapping(path)
    spec = yaml.safe_load(case.read_text(encoding="utf-8"))
    documents = dict(spec["documents"])
    source = documents.pop("source")
    if "error" in spec:
        with pytest.raises(MappingError) as caught:
            if "section" in spec:
                mapping.apply_section(spec["section"], source, **documents)
            else:
                mapping.apply(source, **documents)
        message = caught.value.message
        assert re.search(spec["error"], message), message
        quoted = [v for v in leaves(spec["documents"]) if len(v) > 3 and v in message]
        assert not quoted, f"the error message quotes values of the documents: {quoted}"
        return
    assert mapping.applies(source, **documents)
    output = mapping.apply(source, **documents)
    assert output == spec["expected"]
    sections = {name: mapping.apply_section(name, source, **documents) for name in mapping.sections}
    assert sections == spec.get("expected_sections", {})
    check_output(mapping, output, sections)


@pytest.mark.parametrize(("path", "case"), matching_cases(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_matching_case(path: Path, case: Path) -> None:
    spec = yaml.safe_load(case.read_text(encoding="utf-8"))
    result = load_matching(path).score(spec["request"], spec["study"])
    assert (result.decision, round(result.confidence, 3)) == (spec["decision"], spec["confidence"])
