"""Safety, measured (issue 6, deliverable 5): the shipped default matching file on an adversarial population.

Every study of the seeded population (``tests/support/matching_population.py``) is scored against the
requests sharing a blocking key with it, and the best-scoring candidate is decided on as
``StudyMatcher`` does (``MatchingRules.choose``: a tie at the top, or a rival within the file's margin, is
never auto-certain). The default file must never link a study automatically-certain to a request it
does not answer, and must auto-link exact copies. ``-s`` prints the table; ``PACSBRIDGE_WRITE_RESULTS=1``
writes it to ``bench/results/matching-safety.json``.

Failures name scenarios and patients' scenario ids (``P00042``), never a patient's name.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..support.matching_population import (
    EXACT,
    SCENARIOS,
    UNSCHEDULED,
    WRONG_ACCESSION,
    LabelledStudy,
    Population,
    generate_population,
    value,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "mappings" / "matching" / "default.yaml"
RESULTS = ROOT / "bench" / "results" / "matching-safety.json"
SEED = 20240611


@dataclass(frozen=True)
class Outcome:
    study: LabelledStudy
    chosen: str | None  # the best candidate, None when it is unlinked
    decision: str  # "auto-certain", "auto-unsure" or "unlinked"
    confidence: float
    candidates: int
    truth_in_candidates: bool
    tie: bool

    @property
    def correct(self) -> bool:
        return self.chosen is not None and self.chosen == self.study.truth


@dataclass(frozen=True)
class Evaluation:
    population: Population
    outcomes: list[Outcome]


@pytest.fixture(scope="module")
def population() -> Population:
    return generate_population(SEED)


@pytest.fixture(scope="module")
def evaluation(population: Population) -> Evaluation:
    from pacsbridge.mapping import load_matching

    rules = load_matching(DEFAULT)
    index: dict[str, set[str]] = defaultdict(set)
    for request_id, document in population.requests.items():
        for key in rules.blocking_keys(document, "request"):
            index[key].add(request_id)
    outcomes = []
    for study in population.studies:
        candidates: set[str] = set()
        for key in rules.blocking_keys(study.document, "study"):
            candidates |= index.get(key, set())
        scored = sorted(((rules.score(population.requests[c], study.document), c) for c in candidates),
                        key=lambda pair: (-pair[0].confidence, pair[1]))
        choice = rules.choose([result for result, _ in scored])  # as StudyMatcher takes it
        tie = len(scored) > 1 and abs(scored[1][0].confidence - scored[0][0].confidence) < 1e-9
        outcomes.append(Outcome(study, scored[0][1] if choice.decision != "unlinked" else None, choice.decision,
                                scored[0][0].confidence if scored else 0.0, len(candidates),
                                study.truth in candidates, tie))
    return Evaluation(population, outcomes)


def _ratio(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _row(outcomes: list[Outcome]) -> dict[str, Any]:
    with_truth = sum(1 for o in outcomes if o.study.truth is not None)
    row: dict[str, Any] = {"n": len(outcomes), "with_truth": with_truth}
    for decision, label in (("auto-certain", "certain"), ("auto-unsure", "unsure")):
        made = [o for o in outcomes if o.decision == decision]
        right = sum(1 for o in made if o.correct)
        row[f"{label}_links"] = len(made)
        row[f"{label}_precision"] = _ratio(right, len(made))
        row[f"{label}_recall"] = _ratio(right, with_truth)
    row["wrong_certain"] = sum(1 for o in outcomes if o.decision == "auto-certain" and not o.correct)
    row["ties"] = sum(1 for o in outcomes if o.tie)
    row["truth_not_in_candidates"] = sum(1 for o in outcomes if o.study.truth and not o.truth_in_candidates)
    return row


def table(evaluation: Evaluation) -> dict[str, Any]:
    by_scenario: dict[str, list[Outcome]] = defaultdict(list)
    for o in evaluation.outcomes:
        by_scenario[o.study.scenario].append(o)
    counts = [o.candidates for o in evaluation.outcomes]
    return {
        "matching_file": str(DEFAULT.relative_to(ROOT)),
        "seed": SEED,
        "requests": len(evaluation.population.requests),
        "studies": len(evaluation.outcomes),
        "mean_candidates": round(sum(counts) / len(counts), 2),
        "max_candidates": max(counts),
        "overall": _row(evaluation.outcomes),
        "scenarios": {s: _row(by_scenario[s]) for s in SCENARIOS},
    }


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"


# --- the population itself --------------------------------------------------------------------

def test_population_is_deterministic() -> None:
    a = generate_population(7, n_requests=360, studies_per_scenario=12)
    b = generate_population(7, n_requests=360, studies_per_scenario=12)
    c = generate_population(8, n_requests=360, studies_per_scenario=12)
    assert json.dumps(a.requests, sort_keys=True) == json.dumps(b.requests, sort_keys=True)
    assert a.studies == b.studies
    assert a.studies != c.studies


def test_every_scenario_is_present(population: Population) -> None:
    counts: dict[str, int] = defaultdict(int)
    for s in population.studies:
        counts[s.scenario] += 1
    assert set(counts) == set(SCENARIOS)
    assert min(counts.values()) >= 100
    assert len({p for p in population.request_patient.values()}) >= 2000


def test_truths_are_consistent(population: Population) -> None:
    answered = [s.truth for s in population.studies if s.truth is not None]
    assert len(answered) == len(set(answered)), "a request answered by two studies"
    accessions = {value(d, "AccessionNumber"): rid for rid, d in population.requests.items()}
    for s in population.studies:
        study_accession = value(s.document, "AccessionNumber")
        if s.scenario == UNSCHEDULED:
            assert s.truth is None and study_accession is None
            continue
        if s.truth is not None:
            assert population.request_patient[s.truth] == s.patient
        if s.accession == "kept":
            assert study_accession == value(population.requests[s.truth], "AccessionNumber")
        elif s.accession == "missing":
            assert study_accession is None
        else:
            assert s.scenario == WRONG_ACCESSION
            target = accessions[study_accession]
            assert target != s.truth and population.request_patient[target] != s.patient
        if s.scenario == EXACT:
            request = population.requests[s.truth]
            for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber"):
                assert value(s.document, keyword) == value(request, keyword)


# --- the default matching file on it ----------------------------------------------------------

def test_blocking_keeps_candidates_far_below_quadratic(evaluation: Evaluation) -> None:
    counts = [o.candidates for o in evaluation.outcomes]
    mean = sum(counts) / len(counts)
    assert mean < 0.01 * len(evaluation.population.requests), f"mean candidates {mean:.1f}"


def test_no_wrong_auto_certain_link(evaluation: Evaluation) -> None:
    patients = evaluation.population.request_patient
    wrong = [
        f"{o.study.scenario}: study of {o.study.patient} (truth {o.study.truth}) linked to {o.chosen} of "
        f"{patients[o.chosen]}{' (same patient)' if patients[o.chosen] == o.study.patient else ''}, "
        f"confidence {o.confidence:.3f}"
        for o in evaluation.outcomes if o.decision == "auto-certain" and not o.correct
    ]
    assert not wrong, f"{len(wrong)} wrong auto-certain links:\n" + "\n".join(wrong[:30])


def test_exact_copies_are_auto_certain(evaluation: Evaluation) -> None:
    row = table(evaluation)["scenarios"][EXACT]
    assert row["certain_recall"] >= 0.95, row


def test_report(evaluation: Evaluation) -> None:
    result = table(evaluation)
    lines = [f"matching safety: {result['studies']} studies, {result['requests']} requests, "
             f"mean candidates {result['mean_candidates']} (max {result['max_candidates']})",
             f"{'scenario':<24}{'n':>5}  {'certain P':>9} {'R':>6}  {'unsure P':>8} {'R':>6}  "
             f"{'wrong':>5} {'ties':>4} {'unblk':>5}"]
    for name, row in [*result["scenarios"].items(), ("overall", result["overall"])]:
        lines.append(f"{name:<24}{row['n']:>5}  {_fmt(row['certain_precision']):>9} {_fmt(row['certain_recall']):>6}"
                     f"  {_fmt(row['unsure_precision']):>8} {_fmt(row['unsure_recall']):>6}  "
                     f"{row['wrong_certain']:>5} {row['ties']:>4} {row['truth_not_in_candidates']:>5}")
    print("\n" + "\n".join(lines))
    if os.environ.get("PACSBRIDGE_WRITE_RESULTS") == "1":
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
