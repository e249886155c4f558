"""Matching files: how alike a request and a study are, as a confidence, a decision and its reasons.

See: docs/matching.md (the file format, the default file and how to tune it); issue 6.

Rules:
1. Both documents are DICOM JSON (PS3.18 Annex F): the request's worklist item and the study's
   attributes merged with its first instance's. Fields read them with the engine's DICOM paths.
2. A field is compared when both sides have a value; otherwise ``when_missing`` says whether it is
   left out (``skip``) or scores 0 (``mismatch``). confidence = Σ(weight × score) / Σ(weight) over
   the fields counted, so a perfect match is exactly 1.0 and nothing counted is 0.
3. A veto fires when both sides have a value and the score is below ``veto_below``: the decision is
   then at most ``auto-unsure``, whatever the confidence.
4. ``auto-certain`` needs confidence ≥ auto_certain, no veto, and at least ``min_evidence`` weight
   actually compared; ``auto-unsure`` needs confidence ≥ auto_unsure; otherwise ``unlinked``.
4a. Among a study's candidates (``choose``) only the best may be linked, and it stays ``auto-certain``
   only when it leads every rival without a veto by at least ``thresholds.margin`` and no candidate
   at all scores the same: two open orders of one patient that differ in the station alone are a
   question for a person, not a coin toss.
5. A request and a study are candidates only when one blocking key agrees; keys are namespaced by
   the index of their rule (``"0:PID-1"``).
6. Values reach results as text for a review page; they never appear in errors or logs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from . import compare
from .paths import PathError, SourcePath, parse_source
from .schema import Loc, Where, validate_as

Side = Literal["request", "study"]
DECISIONS = ("auto-certain", "auto-unsure", "unlinked")
COMPARATORS = ("exact", "normalized", "person_name", "date", "code_set", "contains", "time_window")
BLOCKING_KEYS = ("exact", "normalized", "phonetic_family", "year")
_OPTIONS = {"threshold": ("person_name",), "window_days": ("date",), "partial": ("date",),
            "minutes": ("time_window",)}


# --- the file's shape ------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ScopeModel(_Strict):
    """Paths of a namespace (IssuerOfPatientID): values compare only where the namespaces agree."""

    request: StrictStr
    study: StrictStr


class FieldModel(_Strict):
    """One compared field as written."""

    name: StrictStr = Field(pattern=r"^[a-z0-9_]+$")
    request: StrictStr | list[StrictStr]
    study: StrictStr | list[StrictStr]
    compare: StrictStr
    weight: float
    when_missing: Literal["skip", "mismatch"] = "skip"
    veto: Literal["mismatch"] | None = None
    veto_below: float = 0.5
    threshold: float | None = None
    window_days: int | None = None
    partial: float | None = None
    minutes: int | None = None
    scope: ScopeModel | None = None


class BlockingPartModel(_Strict):
    """One part of a blocking key: a declared field and how its value becomes a key."""

    field: StrictStr
    key: StrictStr


class ThresholdsModel(_Strict):
    auto_certain: float
    auto_unsure: float
    margin: float = 0.0


class MatchingModel(_Strict):
    """A whole matching file."""

    name: StrictStr = Field(pattern=r"^[a-z0-9-]+$")
    version: int
    description: StrictStr = ""
    fields: list[FieldModel] = Field(min_length=1)
    blocking: list[list[BlockingPartModel]] = Field(min_length=1)
    thresholds: ThresholdsModel
    min_evidence: float = 0.0


def validate(data: Any, where: Where) -> tuple[MatchingModel | None, list[str]]:
    """A matching file's model, or the located messages of everything wrong with its shape."""
    return validate_as(MatchingModel, data, where)


# --- results ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldScore:
    """What one field contributed: ``compared`` False when it was skipped for a missing value."""

    field: str
    weight: float
    score: float
    compared: bool


@dataclass(frozen=True)
class Difference:
    """A field whose two sides disagree, as text for the review page (never for logs)."""

    field: str
    request_value: str
    study_value: str


@dataclass(frozen=True)
class MatchResult:
    """The confidence of a link, the decision it allows, and why."""

    confidence: float
    decision: str
    contributions: tuple[FieldScore, ...]
    differences: tuple[Difference, ...]
    vetoes: tuple[str, ...]


@dataclass(frozen=True)
class Choice:
    """What becomes of a study's best candidate (rule 4a): ``decision`` for ``ranked[0]``, and why an
    auto-certain score was held back to auto-unsure (``held_back``: None, "tie" or "margin")."""

    decision: str
    held_back: str | None = None


_EPSILON = 1e-9  # confidences are sums of float products: equal scores may differ in the last bits


# --- compiled fields -------------------------------------------------------------------------

Comparator = Callable[[Sequence[Any], Sequence[Any]], float]


@dataclass(frozen=True)
class MatchField:
    """A compiled field: its paths per side, comparator and policy."""

    name: str
    request: tuple[SourcePath, ...]
    study: tuple[SourcePath, ...]
    compare: str
    comparator: Comparator
    weight: float
    when_missing: str
    veto: bool
    veto_below: float
    scope: tuple[SourcePath, SourcePath] | None

    def values(self, document: dict[str, Any], side: Side) -> list[Any]:
        """The values of one side; for ``time_window`` the moments of (date, time)."""
        paths = self.request if side == "request" else self.study
        if self.compare == "time_window":
            days, times = (p.read(document, {}) for p in paths)
            moments = [compare.moment(d, t) for d in days[:1] for t in times[:1]]
            return [m for m in moments if m is not None]
        return paths[0].read(document, {})

    def in_scope(self, request: dict[str, Any], study: dict[str, Any]) -> bool:
        """False when both sides name their namespace and the namespaces differ."""
        if self.scope is None:
            return True
        ours = {compare.text_of(v) for v in self.scope[0].read(request, {})}
        theirs = {compare.text_of(v) for v in self.scope[1].read(study, {})}
        return not (ours and theirs) or bool(ours & theirs)


def _time_window(minutes: int) -> Comparator:
    def score(request: Sequence[Any], study: Sequence[Any]) -> float:
        return max((compare.time_window(a, b, minutes) for a in request for b in study), default=0.0)
    return score


def _comparator(model: FieldModel) -> Comparator:
    if model.compare == "person_name":
        return partial(compare.person_name, threshold=model.threshold or 0.0)
    if model.compare == "date":
        return partial(compare.date_score, window_days=model.window_days or 0, partial=model.partial or 0.0)
    if model.compare == "time_window":
        return _time_window(model.minutes if model.minutes is not None else 60)
    simple: dict[str, Comparator] = {"exact": compare.exact, "normalized": compare.normalized,
                                     "code_set": compare.code_set, "contains": compare.contains}
    return simple[model.compare]


def _block_values(field: MatchField, key: str, values: list[Any]) -> set[str]:
    texts = [compare.text_of(v) for v in values]
    if key == "exact":
        return {t for t in texts if t}
    if key == "normalized":
        return {n for t in texts if (n := compare.normalize_text(t))}
    if key == "phonetic_family":
        return {k for t in texts for k in compare.phonetic_keys(t)}
    return {d.strftime("%Y") for v in values if (d := compare.parse_date(v))}  # year


@dataclass(frozen=True)
class MatchingRules:
    """A compiled matching file."""

    name: str
    version: int
    description: str
    fields: tuple[MatchField, ...]
    blocking: tuple[tuple[tuple[str, str], ...], ...]
    auto_certain: float
    auto_unsure: float
    min_evidence: float
    margin: float = 0.0

    def choose(self, ranked: Sequence[MatchResult]) -> Choice:
        """The decision for the best of a study's candidates, ``ranked`` best first (rule 4a)."""
        if not ranked or ranked[0].decision == "unlinked":
            return Choice("unlinked")
        best, rivals = ranked[0], ranked[1:]
        if any(r.confidence >= best.confidence - _EPSILON for r in rivals):
            return Choice("auto-unsure", "tie" if best.decision == "auto-certain" else None)
        if best.decision == "auto-certain" and any(
                best.confidence - r.confidence < self.margin - _EPSILON for r in rivals if not r.vetoes):
            return Choice("auto-unsure", "margin")
        return Choice(best.decision)

    def blocking_keys(self, document: dict[str, Any], side: Side) -> frozenset[str]:
        """Keys under which a document is indexed: a request and a study are candidates when they share one."""
        by_name = {f.name: f for f in self.fields}
        keys: set[str] = set()
        for n, rule in enumerate(self.blocking):
            parts = [sorted(_block_values(by_name[name], how, by_name[name].values(document, side)))
                     for name, how in rule]
            keys.update(f"{n}:" + "|".join(combo) for combo in itertools.product(*parts))
        return frozenset(keys)

    def score(self, request: dict[str, Any], study: dict[str, Any]) -> MatchResult:
        """The confidence that the study answers the request, the decision, and the reasons."""
        contributions: list[FieldScore] = []
        differences: list[Difference] = []
        vetoes: list[str] = []
        for field in self.fields:
            ours, theirs = field.values(request, "request"), field.values(study, "study")
            compared = bool(ours and theirs) and field.in_scope(request, study)
            if compared:
                score = field.comparator(ours, theirs)
                if field.veto and score < field.veto_below:
                    vetoes.append(field.name)
            else:
                score = 0.0
                compared = field.when_missing == "mismatch"
            contributions.append(FieldScore(field.name, field.weight, score, compared))
            ours_text, theirs_text = _text(ours), _text(theirs)
            if score < 1.0 if compared else ours_text != theirs_text:
                differences.append(Difference(field.name, ours_text, theirs_text))
        counted = [c for c in contributions if c.compared]
        total = sum(c.weight for c in counted)
        confidence = min(1.0, sum(c.weight * c.score for c in counted) / total) if total else 0.0
        if confidence >= self.auto_certain and not vetoes and total >= self.min_evidence:
            decision = "auto-certain"
        elif confidence >= self.auto_unsure:
            decision = "auto-unsure"
        else:
            decision = "unlinked"
        return MatchResult(confidence, decision, tuple(contributions), tuple(differences), tuple(vetoes))


def _text(values: list[Any]) -> str:
    return "\\".join(compare.text_of(v) if not hasattr(v, "isoformat") else v.isoformat(sep=" ")
                     for v in values)


# --- compiling -------------------------------------------------------------------------------

def _paths(spec: str | list[str], count: int, loc: Loc, where: Where, errors: list[str]) -> tuple[SourcePath, ...]:
    texts = [spec] if isinstance(spec, str) else spec
    if len(texts) != count:
        what = "one path" if count == 1 else "two paths: [date, time]"
        errors.append(where.error(loc, f"takes {what}"))
        return ()
    out: list[SourcePath] = []
    for n, text in enumerate(texts):
        at = loc if isinstance(spec, str) else (*loc, n)
        try:
            out.append(parse_source(text, "dicom"))
        except PathError as exc:
            errors.append(where.error(at, str(exc)))
    return tuple(out)


def _compile_field(n: int, model: FieldModel, where: Where, errors: list[str]) -> MatchField | None:
    at: Loc = ("fields", n)
    before = len(errors)
    if model.compare not in COMPARATORS:
        errors.append(where.error((*at, "compare"),
                                  f"unknown comparator {model.compare} (one of {', '.join(COMPARATORS)})"))
    if model.weight <= 0:
        errors.append(where.error((*at, "weight"), "must be greater than 0"))
    if not 0 < model.veto_below <= 1:
        errors.append(where.error((*at, "veto_below"), "must be in (0, 1]"))
    for option, comparators in _OPTIONS.items():
        if getattr(model, option) is not None and model.compare not in comparators:
            errors.append(where.error((*at, option), f"is an option of compare: {comparators[0]} only"))
    for option in ("threshold", "partial"):
        value = getattr(model, option)
        if value is not None and not 0 <= value <= 1:
            errors.append(where.error((*at, option), "must be in [0, 1]"))
    for option in ("window_days", "minutes"):
        if (getattr(model, option) or 0) < 0:
            errors.append(where.error((*at, option), "must not be negative"))
    count = 2 if model.compare == "time_window" else 1
    request = _paths(model.request, count, (*at, "request"), where, errors)
    study = _paths(model.study, count, (*at, "study"), where, errors)
    scope = None
    if model.scope is not None:
        scope_paths = (_paths(model.scope.request, 1, (*at, "scope", "request"), where, errors)
                       + _paths(model.scope.study, 1, (*at, "scope", "study"), where, errors))
        scope = (scope_paths[0], scope_paths[1]) if len(scope_paths) == 2 else None
    if len(errors) > before:
        return None
    return MatchField(model.name, request, study, model.compare, _comparator(model), model.weight,
                      model.when_missing, model.veto is not None, model.veto_below, scope)


def compile_matching(model: MatchingModel, where: Where, errors: list[str]) -> MatchingRules | None:
    """The compiled rules, or None with located messages appended to ``errors``."""
    before = len(errors)
    fields: list[MatchField] = []
    declared: dict[str, str] = {}
    for n, field_model in enumerate(model.fields):
        if field_model.name in declared:
            errors.append(where.error(("fields", n, "name"), f"{field_model.name} is declared twice"))
        declared[field_model.name] = field_model.compare
        compiled = _compile_field(n, field_model, where, errors)
        if compiled is not None:
            fields.append(compiled)
    blocking: list[tuple[tuple[str, str], ...]] = []
    for n, rule in enumerate(model.blocking):
        if not rule:
            errors.append(where.error(("blocking", n), "a blocking key needs at least one field"))
        for m, part in enumerate(rule):
            at: Loc = ("blocking", n, m)
            if part.field not in declared:
                errors.append(where.error((*at, "field"), f"{part.field} is not a declared field"))
            if part.key not in BLOCKING_KEYS:
                errors.append(where.error((*at, "key"), f"unknown key {part.key} (one of {', '.join(BLOCKING_KEYS)})"))
            elif part.key == "phonetic_family" and declared.get(part.field, "person_name") != "person_name":
                errors.append(where.error((*at, "key"), "phonetic_family needs a person_name field"))
            elif part.key == "year" and declared.get(part.field, "date") != "date":
                errors.append(where.error((*at, "key"), "year needs a date field"))
        blocking.append(tuple((p.field, p.key) for p in rule))
    thresholds = model.thresholds
    if not 0 <= thresholds.auto_unsure <= thresholds.auto_certain <= 1:
        errors.append(where.error(("thresholds",), "need 0 <= auto_unsure <= auto_certain <= 1"))
    if not 0 <= thresholds.margin < 1:
        errors.append(where.error(("thresholds", "margin"), "must be in [0, 1)"))
    if model.min_evidence < 0:
        errors.append(where.error(("min_evidence",), "must not be negative"))
    if len(errors) > before:
        return None
    return MatchingRules(model.name, model.version, model.description, tuple(fields), tuple(blocking),
                         thresholds.auto_certain, thresholds.auto_unsure, model.min_evidence, thresholds.margin)
