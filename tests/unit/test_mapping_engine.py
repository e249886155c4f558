"""The mapping engine: paths, conditions, each, per_value, sections, load-time and apply-time errors."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pacsbridge.domain.errors import MappingError
from pacsbridge.mapping import FUNCTIONS, Mapping, check_mappings, choose, load_folder, load_mapping
from pacsbridge.mapping.functions import BadValue
from pacsbridge.mapping.paths import PathError, parse_source, parse_target

ROOT = Path(__file__).resolve().parents[2]


def mapping(tmp_path: Path, body: str, source: str = "fhir", target: str = "fhir", name: str = "m.yaml") -> Mapping:
    path = tmp_path / name
    header = f"name: test\nversion: 1\nsource: {source}\ntarget: {target}\n"
    path.write_text(header + textwrap.dedent(body), encoding="utf-8")
    return load_mapping(path)


def load_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        load_mapping(path)
    return caught.value.message


def el(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


STUDY = {
    "00080050": el("SH", "A1"),
    "00080061": el("CS", "CT", "MR"),
    "00080090": el("PN", {"Alphabetic": "Doe^Jane", "Ideographic": "ドウ^ジェーン"}),
    "00081032": el("SQ", {"00080100": el("SH", "C1"), "00080102": el("SH", "LN")},
                   {"00080100": el("SH", "C2"), "00080102": el("SH", "SCT")}),
    "0020000D": el("UI", "1.2.3"),
    "series": [{"0020000E": el("UI", "1.2.3.1"), "instances": [{"00080018": el("UI", "1.2.3.1.1")}]},
               {"0020000E": el("UI", "1.2.3.2"), "instances": []}],
}
REQUEST = {
    "identifier": [
        {"type": {"coding": [{"code": "PLAC"}]}, "value": "P-1"},
        {"type": {"coding": [{"code": "FILL"}, {"code": "X"}]}, "value": "F-1"},
    ],
    "code": {"coding": [{"system": "s1", "code": "a"}, {"system": "s2", "code": "b", "display": "B"}]},
    "flag": True,
    "empty": "",
}


# --- source paths ----------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "expected"), [
    ("AccessionNumber", ["A1"]),
    ("00080050", ["A1"]),
    ("ModalitiesInStudy", ["CT", "MR"]),
    ("ModalitiesInStudy[1]", ["MR"]),
    ("ModalitiesInStudy[-1]", ["MR"]),
    ("ModalitiesInStudy[5]", []),
    ("ReferringPhysicianName", ["Doe^Jane"]),
    ("ProcedureCodeSequence.CodeValue", ["C1"]),
    ("ProcedureCodeSequence[*].CodeValue", ["C1", "C2"]),
    ("ProcedureCodeSequence[1].CodeValue", ["C2"]),
    ("ProcedureCodeSequence[CodingSchemeDesignator=SCT].CodeValue", ["C2"]),
    ("series.SeriesInstanceUID", ["1.2.3.1", "1.2.3.2"]),
    ("series.instances.SOPInstanceUID", ["1.2.3.1.1"]),
    ("series.instances", [{"00080018": el("UI", "1.2.3.1.1")}]),
    ("StudyDescription", []),
    ("$this.AccessionNumber", ["A1"]),
    ("$context.endpoint", [{"reference": "Endpoint/1"}]),
    ("$context.missing", []),
    ("$nothing.at.all", []),
])
def test_dicom_source_paths(path: str, expected: list[Any]) -> None:
    documents = {"context": {"endpoint": {"reference": "Endpoint/1"}}}
    assert parse_source(path, "dicom").read(STUDY, documents) == expected


@pytest.mark.parametrize(("path", "expected"), [
    ("identifier.value", ["P-1", "F-1"]),
    ("identifier[type.coding.code=FILL].value", ["F-1"]),
    ("identifier[type.coding.code=X].value", ["F-1"]),  # any coding matches
    ("identifier[type.coding.code=NONE].value", []),
    ("identifier[0].value", ["P-1"]),
    ("code.coding.code", ["a", "b"]),
    ("code.coding.display", ["B"]),
    ("code.coding.display[0]", ["B"]),  # [n] indexes the collection, after flattening
    ("code.coding[system=s2].code", ["b"]),
    ("code.coding[*].code", ["a", "b"]),
    ("flag", [True]),
    ("empty", []),
    ("$this.flag", [True]),
])
def test_fhir_source_paths(path: str, expected: list[Any]) -> None:
    assert parse_source(path, "fhir").read(REQUEST, {}) == expected


@pytest.mark.parametrize(("path", "flavour", "message"), [
    ("PatientNme", "dicom", "unknown DICOM keyword PatientNme"),
    ("a..b", "fhir", "empty component"),
    ("code[0", "fhir", "unbalanced ["),
    ("code]", "fhir", "unbalanced ]"),
    ("code[x]", "fhir", "bad selector"),
    ("$Bad.x", "fhir", "bad document name"),
    ("a-b", "fhir", "malformed component"),
    ("code[$context.x=1]", "fhir", "a filter reads the item, not a document"),
    ("", "fhir", "empty path"),
])
def test_malformed_source_paths(path: str, flavour: Any, message: str) -> None:
    with pytest.raises(PathError, match=re.escape(message)):
        parse_source(path, flavour)


@pytest.mark.parametrize(("path", "flavour", "message"), [
    ("ScheduledProcedureStepSequence.FamilyName", "dicom", "unknown DICOM keyword FamilyName"),
    ("PatientName.Modality", "dicom", "not a sequence"),
    ("PixelData", "dicom", "cannot write"),
    ("a[].b", "fhir", "only the last component"),
    ("a[2]", "fhir", "malformed component"),
])
def test_malformed_target_paths(path: str, flavour: Any, message: str) -> None:
    with pytest.raises(PathError, match=re.escape(message)):
        parse_target(path, flavour)


# --- rules and targets -----------------------------------------------------------------------

def test_fhir_targets_append_address_the_last_and_extend(tmp_path: Path) -> None:
    m = mapping(tmp_path, """
        rules:
          - {target: "identifier[+].value", from: "identifier[0].value"}
          - {target: "identifier[-1].system", value: "urn:x"}
          - {target: "identifier[+].value", from: "identifier[1].value"}
          - {target: "codes[]", from: code.coding.code, per_value: true}
          - {target: "codes[]", value: [c]}
          - {target: deep.er.value, value: 1}
          - {target: deep.er.other, value: 2}
    """)
    assert m.apply(REQUEST) == {
        "identifier": [{"value": "P-1", "system": "urn:x"}, {"value": "F-1"}],
        "codes": ["a", "b", "c"],
        "deep": {"er": {"value": 1, "other": 2}},
    }


def test_without_transform_the_first_value_of_the_first_path_that_has_one(tmp_path: Path) -> None:
    m = mapping(tmp_path, """
        rules:
          - {target: a, from: [missing, code.coding.code, flag]}
          - {target: b, from: [missing, empty]}
          - {target: c, value: [x, y]}
    """)
    assert m.apply(REQUEST) == {"a": "a", "c": ["x", "y"]}


def test_one_input_transforms_take_alternatives_and_several_input_ones_one_argument_per_path(tmp_path: Path) -> None:
    m = mapping(tmp_path, """
        rules:
          - {target: first, from: [missing, code.coding.code, flag], transform: first}
          - {target: upper, from: [missing, "identifier[1].value"], transform: upper}
          - {target: joined, from: ["identifier[0].value", missing, "identifier[1].value"], transform: join,
             args: {sep: "/"}}
    """)
    assert m.apply(REQUEST) == {"first": "a", "upper": "F-1", "joined": "P-1/F-1"}


def test_per_value_maps_every_value_and_drops_repeats_and_empties(tmp_path: Path) -> None:
    m = mapping(tmp_path, """
        rules:
          - {target: "modality[]", from: [NoSuchThing, ModalitiesInStudy], transform: modality_coding, per_value: true}
          - {target: "lower[]", value: [A, a, B], transform: lower, per_value: true}
          - {target: "sex[]", value: [male, unknown], transform: fhir_gender_to_dicom, per_value: true}
    """.replace("NoSuchThing", "StudyDescription"), source="dicom")
    dcm = "http://dicom.nema.org/resources/ontology/DCM"
    assert m.apply(STUDY) == {
        "modality": [{"system": dcm, "code": "CT"}, {"system": dcm, "code": "MR"}],
        "lower": ["a", "b"],
        "sex": ["M"],
    }


def test_a_transform_is_not_called_without_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setitem(FUNCTIONS, "spy", lambda value: calls.append(value) or "called")
    m = mapping(tmp_path, """
        rules:
          - {target: a, from: missing, transform: spy}
          - {target: b, from: flag, transform: spy}
    """)
    assert m.apply(REQUEST) == {"b": "called"}
    assert calls == [True]


def test_defaults_and_required(tmp_path: Path) -> None:
    m = mapping(tmp_path, """
        rules:
          - {target: a, from: missing, default: none}
          - {target: b, from: missing, default: ""}
          - {target: c, from: flag}
          - {target: d, from: needed, required: true}
    """)
    with pytest.raises(MappingError, match=r"m\.yaml:10: d: required, but the result is empty"):
        m.apply(REQUEST)
    assert m.apply({**REQUEST, "needed": 0}) == {"a": "none", "c": True, "d": 0}


def test_dicom_targets(tmp_path: Path) -> None:
    m = mapping(tmp_path, """
        rules:
          - {target: StudyInstanceUID, value: "1.2.3"}
          - {target: PatientName, value: "Doe^Jane"}
          - {target: OtherPatientIDs, value: [X, Y]}
          - {target: SeriesNumber, value: "12"}
          - {target: PatientWeight, value: "70.5"}
          - {target: PatientBirthDate, from: missing, default: ""}
          - {target: ReferencedStudySequence, default: ""}
          - {target: "ScheduledProcedureStepSequence[+].Modality", value: CT}
          - {target: "ScheduledProcedureStepSequence[-1].ScheduledStationAETitle", value: CT01}
          - {target: "ScheduledProcedureStepSequence[+].Modality", value: MR}
          - {target: ScheduledProtocolCodeSequence, value: {CodeValue: "1", CodingSchemeDesignator: DCM,
                                                            CodeMeaning: One, ContextGroupVersion: ""}}
          - {target: "ScheduledProtocolCodeSequence[+]", value: {CodeValue: "2"}}
    """, target="dicom")
    assert m.apply({}) == {
        "00081110": {"vr": "SQ"},
        "00100010": el("PN", {"Alphabetic": "Doe^Jane"}),
        "00100030": {"vr": "DA"},
        "00101000": el("LO", "X", "Y"),
        "00101030": el("DS", 70.5),
        "0020000D": el("UI", "1.2.3"),
        "00200011": el("IS", 12),
        "00400008": el("SQ", {"00080100": el("SH", "1"), "00080102": el("SH", "DCM"), "00080104": el("LO", "One")},
                       {"00080100": el("SH", "2")}),
        "00400100": el("SQ", {"00080060": el("CS", "CT"), "00400001": el("AE", "CT01")},
                       {"00080060": el("CS", "MR")}),
    }
    assert list(m.apply({})) == sorted(m.apply({}))


@pytest.mark.parametrize(("value", "message"), [
    ("{Nonsense: 1}", "unknown DICOM keyword Nonsense"),
    ("plain", "a sequence item must be an object"),
])
def test_bad_sequence_items_fail_at_apply_time(tmp_path: Path, value: str, message: str) -> None:
    m = mapping(tmp_path, f"rules:\n  - {{target: ReferencedStudySequence, value: {value}}}\n", target="dicom")
    with pytest.raises(MappingError, match=re.escape(f"m.yaml:6: ReferencedStudySequence: {message}")):
        m.apply({})


def test_a_number_element_refuses_text(tmp_path: Path) -> None:
    m = mapping(tmp_path, "rules:\n  - {target: SeriesNumber, from: x}\n", target="dicom")
    with pytest.raises(MappingError) as caught:
        m.apply({"x": "Jane Doe"})
    assert "IS element takes an integer" in caught.value.message
    assert "Jane" not in caught.value.message


def test_a_list_target_cannot_be_set_into(tmp_path: Path) -> None:
    m = mapping(tmp_path, """
        rules:
          - {target: "a[+]", value: 1}
          - {target: a.b, value: 2}
    """)
    with pytest.raises(MappingError, match=r"m\.yaml:8: a\.b: a holds a list"):
        m.apply({})


def test_output_shares_nothing_with_the_documents(tmp_path: Path) -> None:
    m = mapping(tmp_path, "rules:\n  - {target: subject, from: $context.subject}\n")
    context = {"subject": {"reference": "Patient/1"}}
    out = m.apply({}, context=context)
    out["subject"]["reference"] = "changed"
    assert context == {"subject": {"reference": "Patient/1"}}


# --- conditions ------------------------------------------------------------------------------

@pytest.mark.parametrize(("condition", "holds"), [
    ("{present: flag}", True),
    ("{present: empty}", False),
    ("{absent: missing}", True),
    ("{equals: [flag, true]}", True),
    ("{equals: [flag, 'true']}", False),
    ("{equals: [code.coding.code, b]}", True),
    ("{in: [code.coding.code, [x, b]]}", True),
    ("{in: [code.coding.code, [x, y]]}", False),
    ("{all: [{present: flag}, {present: code}]}", True),
    ("{all: [{present: flag}, {present: missing}]}", False),
    ("{any: [{present: missing}, {present: code}]}", True),
    ("{not: {present: code}}", False),
    ("{equals: [$context.n, 3]}", True),
    ("{equals: [$context.n, '3']}", True),
])
def test_conditions(tmp_path: Path, condition: str, holds: bool) -> None:
    m = mapping(tmp_path, f"rules:\n  - {{target: out, value: yes, when: {condition}}}\n")
    assert (m.apply(REQUEST, context={"n": 3}) == {"out": "yes"}) is holds


# --- each and sections -----------------------------------------------------------------------

def test_each_appends_one_element_per_item_that_gave_something(tmp_path: Path) -> None:
    m = mapping(tmp_path, """
        rules:
          - target: series
            each: series
            rules:
              - {target: uid, from: SeriesInstanceUID}
              - {target: study, from: $root.StudyInstanceUID}
              - target: instance
                each: instances
                rules:
                  - {target: uid, from: SOPInstanceUID}
          - target: "codes[+]"
            each: "ProcedureCodeSequence[*]"
            rules:
              - {target: code, from: $this.CodeValue, when: {equals: [CodingSchemeDesignator, LN]}}
    """, source="dicom")
    assert m.apply(STUDY) == {
        "series": [{"uid": "1.2.3.1", "study": "1.2.3", "instance": [{"uid": "1.2.3.1.1"}]},
                   {"uid": "1.2.3.2", "study": "1.2.3"}],
        "codes": [{"code": "C1"}],
    }


def test_required_each_needs_an_element(tmp_path: Path) -> None:
    m = mapping(tmp_path, """
        rules:
          - target: things
            each: missing
            required: true
            rules:
              - {target: x, from: $this}
    """)
    with pytest.raises(MappingError, match=r"m\.yaml:7: things: required, but no item gave anything"):
        m.apply({})


def test_sections(tmp_path: Path) -> None:
    m = mapping(tmp_path, """
        rules:
          - {target: main, value: 1}
        sections:
          one:
            rules:
              - {target: code, from: "code.coding[0].code"}
          many:
            each: code.coding
            rules:
              - {target: code, from: code}
              - {target: display, from: display}
          nothing:
            rules:
              - {target: x, from: missing}
    """)
    assert m.apply(REQUEST) == {"main": 1}
    assert m.apply_section("one", REQUEST) == [{"code": "a"}]
    assert m.apply_section("many", REQUEST) == [{"code": "a"}, {"code": "b", "display": "B"}]
    assert m.apply_section("nothing", REQUEST) == [{}]
    with pytest.raises(MappingError, match="no section other"):
        m.apply_section("other", REQUEST)


# --- choosing among files --------------------------------------------------------------------

def test_choose_takes_the_first_file_that_applies(tmp_path: Path) -> None:
    (tmp_path / "20-default.yaml").write_text("name: fallback\nversion: 1\nsource: fhir\ntarget: fhir\n")
    (tmp_path / "10-ct.yaml").write_text(
        "name: ct\nversion: 2\nsource: fhir\ntarget: fhir\nwhen: {equals: [modality, CT]}\n")
    (tmp_path / "notes.txt").write_text("not a mapping")
    mappings = load_folder(tmp_path)
    assert [(m.name, m.version, m.path.name) for m in mappings] == [
        ("ct", 2, "10-ct.yaml"), ("fallback", 1, "20-default.yaml")]
    assert choose(mappings, {"modality": "CT"}).name == "ct"
    assert choose(mappings, {"modality": "MR"}).name == "fallback"
    with pytest.raises(MappingError, match=r"no mapping applies to this input \(tried: ct\)"):
        choose(mappings[:1], {"modality": "MR"})


def test_a_folder_with_two_files_of_one_name_is_refused(tmp_path: Path) -> None:
    for file in ("a.yaml", "b.yaml"):
        (tmp_path / file).write_text("name: same\nversion: 1\nsource: fhir\ntarget: fhir\n")
    with pytest.raises(MappingError, match=r"b\.yaml:1: name: same is already the name of a\.yaml"):
        load_folder(tmp_path)


# --- load-time errors ------------------------------------------------------------------------

HEADER = "name: bad\nversion: 1\nsource: dicom\ntarget: fhir\n"


@pytest.mark.parametrize(("rules", "expected"), [
    ("  - {target: a, from: X, colour: red}", "6: rules[0].colour: unknown key"),
    ("  - {from: X}", "6: rules[0].target: required key missing"),
    ("  - {target: a, from: StudyDate, transform: nope}", "6: rules[0].transform: unknown transform nope"),
    ("  - {target: a, from: StudyDate, transform: truncate}",
     "6: rules[0].args: transform truncate needs the argument length"),
    ("  - {target: a, from: StudyDate, transform: truncate, args: {length: ten}}",
     "6: rules[0].args.length: transform truncate: length must be int"),
    ("  - {target: a, from: StudyDate, transform: upper, args: {colour: 1}}",
     "6: rules[0].args.colour: transform upper has no argument colour (it takes: none)"),
    ("  - {target: a, from: [StudyDate, StudyTime, StudyTime, StudyTime], transform: dicom_datetime_to_fhir}",
     "6: rules[0].from: transform dicom_datetime_to_fhir takes 1 to 3 inputs, got 4"),
    ("  - {target: a, from: StudyDat}", "6: rules[0].from: unknown DICOM keyword StudyDat"),
    ("  - {target: a, from: [StudyDate, Bogus]}", "6: rules[0].from[1]: unknown DICOM keyword Bogus"),
    ("  - {target: a, from: 'code[0'}", "6: rules[0].from: unbalanced ["),
    ("  - {target: 'a..b', value: 1}", "6: rules[0].target: empty component"),
    ("  - {target: a, from: StudyDate, rules: [{target: b, value: 1}]}", "6: rules[0].rules: nested rules need each"),
    ("  - {target: a, from: StudyDate, value: 1}", "6: rules[0].value: a rule has from or value, not both"),
    ("  - {target: a}", "6: rules[0]: a rule needs from, value, each or default"),
    ("  - {target: a, value: 1, args: {sep: x}}", "6: rules[0].args: args need a transform"),
    ("  - {target: a, each: series, from: StudyDate, rules: [{target: b, value: 1}]}",
     "6: rules[0].from: not allowed with each"),
    ("  - {target: a, each: series}", "6: rules[0].each: each needs nested rules"),
    ("  - {target: 'a[]', each: series, rules: [{target: b, value: 1}]}", "6: rules[0].target: each appends"),
    ("  - {target: a, value: 1, when: {exists: X}}", "6: rules[0].when: a condition is one key of"),
    ("  - {target: a, value: 1, when: {equals: StudyDate}}", "6: rules[0].when.equals: expects [path, constant]"),
    ("  - {target: a, value: 1, when: {all: [{present: Nope}]}}",
     "6: rules[0].when.all[0].present: unknown DICOM keyword Nope"),
    ("  - {target: a, value: 1, per_value: yes}", "6: rules[0].per_value: input should be a valid boolean"),
    ("  - target: s\n    each: series\n    rules:\n      - {target: b, from: Nonsense}",
     "9: rules[0].rules[0].from: unknown DICOM keyword Nonsense"),
])
def test_load_errors_name_file_line_and_field(tmp_path: Path, rules: str, expected: str) -> None:
    message = load_error(tmp_path, HEADER + "rules:\n" + rules + "\n")
    assert re.search(r"^\S*bad\.yaml:" + re.escape(expected), message, re.MULTILINE | re.IGNORECASE), message


@pytest.mark.parametrize(("text", "expected"), [
    ("name: Bad_Name\nversion: 1\nsource: fhir\ntarget: fhir\n", ":1: name: String should match pattern"),
    ("name: x\nversion: '1'\nsource: fhir\ntarget: fhir\n", ":2: version: Input should be a valid integer"),
    ("name: x\nversion: 1\nsource: hl7\ntarget: fhir\n", ":3: source: Input should be 'dicom' or 'fhir'"),
    ("name: x\nversion: 1\nsource: fhir\n", ":1: target: required key missing"),
    ("name: x\nversion: 1\nsource: fhir\ntarget: fhir\nname: y\n", ":5: name: duplicate key"),
    ("name: x\nversion: 1\nsource: fhir\ntarget: fhir\nrules: [\n", ":6: (yaml):"),
    ("name: x\nversion: 1\nsource: fhir\ntarget: fhir\nwhen: {present: 'a['}\n", ":5: when.present: unbalanced ["),
    ("name: x\nversion: 1\nsource: fhir\ntarget: fhir\nsections: {s: {each: 'a..b', rules: []}}\n",
     ":5: sections.s.each: empty component"),
    ("- just\n- a list\n", ":1: (file): Input should be a valid dictionary"),
])
def test_file_level_errors(tmp_path: Path, text: str, expected: str) -> None:
    message = load_error(tmp_path, text)
    assert expected in message, message


def test_every_error_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    message = load_error(tmp_path, HEADER + "rules:\n  - {target: a, from: Nope1}\n  - {target: b, from: Nope2}\n")
    assert message.splitlines() == [
        f"{tmp_path / 'bad.yaml'}:6: rules[0].from: unknown DICOM keyword Nope1",
        f"{tmp_path / 'bad.yaml'}:7: rules[1].from: unknown DICOM keyword Nope2",
    ]


def test_yaml_dates_stay_text_and_only_true_false_are_booleans(tmp_path: Path) -> None:
    m = mapping(tmp_path, "rules:\n  - {target: a, value: 2024-01-31}\n  - {target: b, value: NO}\n")
    assert m.apply({}) == {"a": "2024-01-31", "b": "NO"}


def test_check_mappings_reports_every_file(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two" / "deeper").mkdir(parents=True)
    (tmp_path / "one" / "ok.yaml").write_text("name: ok\nversion: 1\nsource: fhir\ntarget: fhir\n")
    (tmp_path / "one" / "bad.yaml").write_text("name: bad\nversion: 1\nsource: fhir\ntarget: fhir\ncolour: red\n")
    (tmp_path / "two" / "deeper" / "bad.yaml").write_text("name: b\nversion: x\nsource: fhir\ntarget: fhir\n")
    errors = check_mappings(tmp_path)
    assert errors == [
        f"{tmp_path / 'one' / 'bad.yaml'}:5: colour: unknown key",
        f"{tmp_path / 'two' / 'deeper' / 'bad.yaml'}:2: version: Input should be a valid integer",
    ]
    assert check_mappings(tmp_path / "missing") == [f"{tmp_path / 'missing'}: not a folder"]


def test_the_shipped_mappings_are_valid() -> None:
    assert check_mappings(ROOT / "mappings") == []


# --- apply-time errors -----------------------------------------------------------------------

def test_bad_data_names_file_line_target_and_transform_but_not_the_value(tmp_path: Path) -> None:
    m = mapping(tmp_path, """
        rules:
          - target: series
            each: series
            rules:
              - {target: number, from: SeriesNumber, transform: unsigned_int}
    """, source="dicom")
    study = {"series": [{"00200011": el("IS", "Müller-Lüdenscheidt")}]}
    with pytest.raises(MappingError) as caught:
        m.apply(study)
    expected = f"{tmp_path / 'm.yaml'}:10: series.number: transform unsigned_int: expected an integer"
    assert caught.value.message == expected
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_foreign_value_error_is_reported_without_its_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def leaky(value: Any) -> Any:
        raise ValueError(f"invalid literal: {value!r}")

    monkeypatch.setitem(FUNCTIONS, "leaky", leaky)
    m = mapping(tmp_path, "rules:\n  - {target: name, from: name, transform: leaky}\n")
    with pytest.raises(MappingError) as caught:
        m.apply({"name": "Jane Doe"})
    assert caught.value.message.endswith("m.yaml:6: name: transform leaky cannot use the value")
    assert "Jane" not in caught.value.message


def test_bad_value_is_a_value_error() -> None:
    assert issubclass(BadValue, ValueError)
