"""The matching engine: comparators, normalization, vetoes, missing values, blocking, load errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pacsbridge.domain.errors import MappingError
from pacsbridge.mapping import check_mappings, load_matching
from pacsbridge.mapping.compare import date_score, normalize_text, person_name, person_name_score, soundex

DEFAULT = Path(__file__).resolve().parents[2] / "mappings" / "matching" / "default.yaml"


def pn(value: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": value}]}


def el(vr: str, *values: str) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def patient(name: str = "Müller^Anna", pid: str = "PID-1", birth: str = "19800102", sex: str = "F",
            **extra: dict[str, Any]) -> dict[str, Any]:
    doc = {"00100010": pn(name), "00100020": el("LO", pid), "00100021": el("LO", "HOSP"),
           "00100030": el("DA", birth), "00100040": el("CS", sex), "00080050": el("SH", "ACC-1")}
    doc.update(extra)
    return doc


@pytest.mark.parametrize("variant", ["Mueller^Anna", "MULLER^ANNA", "Muller^Anna", "MÜLLER^anna", "müller^ änna"])
def test_umlaut_variants_are_one_name(variant: str) -> None:
    assert person_name_score("Müller^Anna", variant) == 1.0


def test_perfect_scores_are_exactly_one() -> None:
    assert person_name_score("Weiß^Jürgen", "WEISS^JUERGEN") == 1.0
    assert normalize_text(" O'Brien-Smith ") == normalize_text("OBRIEN SMITH")
    rules = load_matching(DEFAULT)
    result = rules.score(patient(), patient())
    assert result.confidence == 1.0 and result.decision == "auto-certain" and not result.differences


def test_swapped_names_cost_a_small_penalty() -> None:
    score = person_name_score("Müller^Anna", "Anna^Müller")
    assert 0.9 <= score < 1.0


def test_middle_and_double_names_agree_with_a_penalty() -> None:
    assert 0.85 <= person_name_score("Müller-Schmidt^Anna", "Müller^Anna") < 1.0
    assert 0.9 <= person_name_score("Müller^Anna^Maria", "Müller^Anna") < 1.0
    assert 0.85 <= person_name_score("Anna Müller", "Müller^Anna") < 1.0  # no ^: unordered words


def test_twins_score_below_the_same_name() -> None:
    twins = person_name_score("Müller^Anna", "Müller^Lena")
    assert twins < 0.9
    assert person_name(["Müller^Anna"], ["Schmidt^Karl"], threshold=0.85) == 0.0


def test_date_window_and_transposition() -> None:
    assert date_score(["20240301"], ["20240303"], window_days=3, partial=0.0) == 1.0
    assert date_score(["20240301"], ["20240305"], window_days=3, partial=0.0) == 0.0
    assert date_score(["19800304"], ["19800403"], window_days=0, partial=0.5) == 0.5
    assert date_score(["19800304"], ["not a date"], window_days=0, partial=0.5) == 0.0


def test_soundex_groups_spellings() -> None:
    assert soundex("meier") == soundex("mayer") == soundex("maier")


def test_a_conflicting_patient_id_vetoes_and_names_the_difference() -> None:
    result = load_matching(DEFAULT).score(patient(), patient(pid="PID-2"))
    assert result.vetoes == ("patient_id",)
    assert result.decision != "auto-certain"
    assert [(d.field, d.request_value, d.study_value) for d in result.differences] == [
        ("patient_id", "PID-1", "PID-2")]


def test_birth_date_and_sex_veto() -> None:
    rules = load_matching(DEFAULT)
    assert rules.score(patient(), patient(birth="19800103")).vetoes == ("birth_date",)
    assert rules.score(patient(), patient(sex="M")).vetoes == ("sex",)


def test_missing_values_are_skipped_and_min_evidence_holds() -> None:
    rules = load_matching(DEFAULT)
    study = patient()
    del study["00100020"]
    result = rules.score(patient(), study)
    assert result.confidence == 1.0 and result.decision == "auto-unsure"  # no patient ID: not enough evidence
    skipped = {c.field for c in result.contributions if not c.compared}
    assert "patient_id" in skipped and "modality" in skipped
    assert rules.score({}, {}).confidence == 0.0 and rules.score({}, {}).decision == "unlinked"


def test_other_issuer_makes_the_patient_id_not_comparable() -> None:
    study = patient(pid="X-9", **{"00100021": el("LO", "OTHER")})
    result = load_matching(DEFAULT).score(patient(), study)
    assert result.vetoes == () and result.decision == "auto-unsure"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "matching" / "m.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """\
name: m
version: 1
fields:
  - name: pid
    request: PatientID
    study: PatientID
    compare: exact
    weight: 1
  - name: name
    request: PatientName
    study: PatientName
    compare: person_name
    weight: 1
    when_missing: mismatch
blocking:
  - [{field: pid, key: exact}]
  - [{field: name, key: phonetic_family}]
thresholds: {auto_certain: 0.9, auto_unsure: 0.5}
"""


def test_blocking_keys_are_namespaced_by_rule(tmp_path: Path) -> None:
    rules = load_matching(write(tmp_path, MINIMAL))
    assert rules.blocking_keys(patient(name="Meier^Anna"), "request") == {"0:PID-1", "1:M600", "1:A500"}
    assert rules.blocking_keys({}, "study") == frozenset()


def test_when_missing_mismatch_counts_as_zero(tmp_path: Path) -> None:
    rules = load_matching(write(tmp_path, MINIMAL))
    study = patient()
    del study["00100010"]
    result = rules.score(patient(), study)
    assert result.confidence == 0.5 and result.decision == "auto-unsure"


def test_the_patient_id_is_needed_for_auto_certain_whatever_else_agrees() -> None:
    """The default file's first safety rule, kept true when a field is added: everything but the
    patient ID, all agreeing, weighs less than min_evidence."""
    rules = load_matching(DEFAULT)
    others = sum(f.weight for f in rules.fields if f.name != "patient_id")
    patient_id = next(f.weight for f in rules.fields if f.name == "patient_id")
    assert others < rules.min_evidence <= others + patient_id


def ranked(*confidences: float, vetoed: tuple[int, ...] = ()) -> list[Any]:
    """Results for a study's candidates, best first, decided by the default file's thresholds."""
    from pacsbridge.mapping import MatchResult

    rules = load_matching(DEFAULT)
    out = []
    for n, confidence in enumerate(confidences):
        vetoes = ("patient_id",) if n in vetoed else ()
        decision = ("auto-certain" if confidence >= rules.auto_certain and not vetoes else
                    "auto-unsure" if confidence >= rules.auto_unsure else "unlinked")
        out.append(MatchResult(confidence, decision, (), (), vetoes))
    return out


@pytest.mark.parametrize(("confidences", "vetoed", "decision", "held_back"), [
    ((), (), "unlinked", None),
    ((0.5, 0.4), (), "unlinked", None),
    ((1.0,), (), "auto-certain", None),
    ((1.0, 0.94), (), "auto-certain", None),          # leads by 0.06 > margin 0.05
    ((1.0, 0.95), (), "auto-certain", None),          # exactly the margin is enough
    ((1.0, 0.96), (), "auto-unsure", "margin"),       # the same patient's other order, one station apart
    ((1.0, 0.99), (0,), "auto-unsure", None),         # the best is vetoed itself: never certain
    ((1.0, 0.99), (1,), "auto-certain", None),        # a vetoed rival is no rival for the margin
    ((0.97, 0.97), (), "auto-unsure", "tie"),
    ((0.97, 0.97), (1,), "auto-unsure", "tie"),       # but a tie is a tie
    ((0.7, 0.7), (), "auto-unsure", None),
])
def test_choose_holds_back_ties_and_rivals_within_the_margin(confidences: tuple[float, ...], vetoed: tuple[int, ...],
                                                             decision: str, held_back: str | None) -> None:
    rules = load_matching(DEFAULT)
    assert rules.margin == 0.05
    choice = rules.choose(ranked(*confidences, vetoed=vetoed))
    assert (choice.decision, choice.held_back) == (decision, held_back)


@pytest.mark.parametrize(("change", "line", "field", "what"), [
    ("    compare: person_name\n", 12, "fields[1].compare", "unknown comparator fuzzy"),
    ("    weight: 1\n    when_missing", 13, "fields[1].weight", "greater than 0"),
    ("  - [{field: name, key: phonetic_family}]", 17, "blocking[1][0].field", "nom is not a declared field"),
    ("thresholds: {auto_certain: 0.9, auto_unsure: 0.5}", 18, "thresholds", "auto_unsure <= auto_certain"),
    ("thresholds: {auto_certain: 0.9, auto_unsure: 0.5}\n", 18, "thresholds.margin", "must be in [0, 1)"),
    ("    study: PatientName\n", 11, "fields[1].study", "unknown DICOM keyword PatientNam"),
])
def test_load_errors_name_file_line_and_field(tmp_path: Path, change: str, line: int, field: str, what: str) -> None:
    bad = {
        "    compare: person_name\n": "    compare: fuzzy\n",
        "    weight: 1\n    when_missing": "    weight: 0\n    when_missing",
        "  - [{field: name, key: phonetic_family}]": "  - [{field: nom, key: phonetic_family}]",
        "thresholds: {auto_certain: 0.9, auto_unsure: 0.5}": "thresholds: {auto_certain: 0.5, auto_unsure: 0.9}",
        "thresholds: {auto_certain: 0.9, auto_unsure: 0.5}\n": "thresholds: {auto_certain: 0.9, auto_unsure: 0.5, "
                                                             "margin: 1}\n",
        "    study: PatientName\n": "    study: PatientNam\n",
    }[change]
    path = write(tmp_path, MINIMAL.replace(change, bad))
    with pytest.raises(MappingError) as caught:
        load_matching(path)
    assert f"{path}:{line}: {field}: " in caught.value.message and what in caught.value.message
    assert any(what in e for e in check_mappings(tmp_path))


def test_shipped_mappings_check_clean() -> None:
    assert check_mappings(DEFAULT.parents[1]) == []
