"""Compile a mapping file once, then apply it as a pure function of its documents.

See: DESIGN.md "The declarative mapping engine"; docs/mappings.md (the file format).

Rules:
1. Rules run in file order and write into one output object; a later rule may write into what an
   earlier one created (``series[-1].uid``) or overwrite a plain key.
2. A rule's result: ``value`` (a constant) or its ``from`` paths; with a ``transform`` of one input,
   several paths are alternatives (the first with a value is used), with a transform of several
   inputs each path is one argument (None, one value, or the list of several); without a
   transform, the first value of the first path that has one. ``per_value`` applies the transform
   to every value of the first path that has values and gives the list of distinct, non-empty
   results. A transform is not called when all its inputs are empty.
3. An empty result writes ``default`` when the rule has one (``""`` on a DICOM target: the element
   without a value), fails when ``required``, and writes nothing otherwise.
4. ``each`` runs the nested rules once per item of a source list, the item being their current
   source (``$root`` stays the source given to ``apply``), and appends one element per item that
   produced anything.
5. Errors at apply time name file, line, target and transform, never a value: values may be
   patient data.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..domain.errors import MappingError
from .functions import FUNCTIONS, BadValue
from .paths import (
    Flavour,
    PathError,
    SourcePath,
    TargetPath,
    TargetStep,
    WriteError,
    collapse,
    is_empty,
    parse_source,
    parse_target,
    sorted_dicom,
)
from .schema import Loc, MappingModel, RuleModel, Where

CONDITIONS = ("present", "absent", "equals", "in", "all", "any", "not")


@dataclass(frozen=True)
class Condition:
    """``op`` over a path (present, absent, equals, in) or over nested conditions (all, any, not)."""

    op: str
    path: SourcePath | None = None
    values: tuple[Any, ...] = ()
    parts: tuple[Condition, ...] = ()

    def holds(self, source: Any, documents: dict[str, Any]) -> bool:
        if self.op == "all":
            return all(p.holds(source, documents) for p in self.parts)
        if self.op == "any":
            return any(p.holds(source, documents) for p in self.parts)
        if self.op == "not":
            return not self.parts[0].holds(source, documents)
        assert self.path is not None
        found = self.path.read(source, documents)
        if self.op == "present":
            return bool(found)
        if self.op == "absent":
            return not found
        return any(_same(v, c) for v in found for c in self.values)  # equals, in: any value matches


def _same(value: Any, constant: Any) -> bool:
    if isinstance(value, bool) or isinstance(constant, bool):
        return value is constant
    return bool(value == constant or str(value) == str(constant))


@dataclass(frozen=True)
class Transform:
    """A registered function with its constant arguments and the arguments read from documents."""

    name: str
    function: Callable[..., Any]
    spread: bool
    args: dict[str, Any] = field(default_factory=dict)
    arg_paths: dict[str, SourcePath] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """A compiled rule; ``label`` is its target as messages name it (``series.instance.uid``)."""

    line: int
    label: str
    target: TargetPath
    sources: tuple[SourcePath, ...] = ()
    constant: Any = None
    has_constant: bool = False
    transform: Transform | None = None
    per_value: bool = False
    when: Condition | None = None
    default: Any = None
    has_default: bool = False
    required: bool = False
    each: SourcePath | None = None
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Section:
    """A named list output: one object per item of ``each``, or one object from the source."""

    each: SourcePath | None
    rules: tuple[Rule, ...]


@dataclass(frozen=True, eq=False)
class Mapping:
    """A compiled mapping file."""

    name: str
    version: int
    path: Path
    source: Flavour
    target: Flavour
    description: str
    when: Condition | None
    rules: tuple[Rule, ...]
    sections: dict[str, Section]

    def applies(self, source: Any, /, **documents: Any) -> bool:
        """Whether the file-level ``when`` holds for this input (always, without one)."""
        return self.when is None or self.when.holds(source, {**documents, "root": source})

    def apply(self, source: Any, /, **documents: Any) -> dict[str, Any]:
        """The main output: every top-level rule applied to ``source`` and the named documents."""
        out: dict[str, Any] = {}
        self._run(self.rules, source, {**documents, "root": source}, out)
        return self._finish(out)

    def apply_section(self, name: str, source: Any, /, **documents: Any) -> list[dict[str, Any]]:
        """The objects of section ``name`` (those of an ``each`` section that got something)."""
        section = self.sections.get(name)
        if section is None:
            raise MappingError(f"{self.path}: no section {name}")
        documents = {**documents, "root": source}
        items = [source] if section.each is None else section.each.read(source, documents)
        outs: list[dict[str, Any]] = []
        for item in items:
            out: dict[str, Any] = {}
            self._run(section.rules, item, documents, out)
            if out or section.each is None:
                outs.append(self._finish(out))
        return outs

    def _finish(self, out: dict[str, Any]) -> dict[str, Any]:
        return sorted_dicom(out) if self.target == "dicom" else out

    def _run(self, rules: Iterable[Rule], source: Any, documents: dict[str, Any], out: dict[str, Any]) -> None:
        for rule in rules:
            if rule.when is not None and not rule.when.holds(source, documents):
                continue
            if rule.each is not None:
                written = 0
                for item in rule.each.read(source, documents):
                    element: dict[str, Any] = {}
                    self._run(rule.rules, item, documents, element)
                    if element:
                        self._write(rule, out, element)
                        written += 1
                if rule.required and not written:
                    raise self._error(rule, "required, but no item gave anything")
                continue
            result = self._result(rule, source, documents)
            if not is_empty(result):
                self._write(rule, out, result)
            elif rule.has_default and not is_empty(rule.default):
                self._write(rule, out, rule.default)
            elif rule.has_default and self.target == "dicom":
                rule.target.write_empty(out)
            elif rule.required:
                raise self._error(rule, "required, but the result is empty")

    def _result(self, rule: Rule, source: Any, documents: dict[str, Any]) -> Any:
        if rule.has_constant:
            constant = rule.constant
            groups = [[] if is_empty(constant) else
                      list(constant) if rule.per_value and isinstance(constant, list) else [constant]]
        else:
            groups = [path.read(source, documents) for path in rule.sources]
        transform = rule.transform
        if rule.per_value:
            values = next((g for g in groups if g), [])
            results: list[Any] = []
            for value in values:
                result = value if transform is None else self._call(rule, transform, [value], source, documents)
                if not is_empty(result) and result not in results:
                    results.append(result)
            return results
        if transform is None:
            return next((g[0] for g in groups if g), None)
        if transform.spread:
            inputs = [collapse(g) for g in groups]
            return None if all(i is None for i in inputs) else self._call(rule, transform, inputs, source, documents)
        chosen = next((g for g in groups if g), None)
        return None if chosen is None else self._call(rule, transform, [collapse(chosen)], source, documents)

    def _call(
        self, rule: Rule, transform: Transform, inputs: list[Any], source: Any, documents: dict[str, Any]
    ) -> Any:
        kwargs = dict(transform.args)
        for name, path in transform.arg_paths.items():
            kwargs[name] = collapse(path.read(source, documents))
        try:
            return transform.function(*inputs, **kwargs)
        except BadValue as exc:  # our own messages name the expected form, never the value
            raise self._error(rule, f"transform {transform.name}: {exc}") from None
        except (ValueError, TypeError):  # a foreign message may quote the value: leave it out
            raise self._error(rule, f"transform {transform.name} cannot use the value") from None

    def _write(self, rule: Rule, out: dict[str, Any], value: Any) -> None:
        try:
            rule.target.write(out, value)
        except WriteError as exc:
            raise self._error(rule, str(exc)) from None

    def _error(self, rule: Rule, what: str) -> MappingError:
        return MappingError(f"{self.path}:{rule.line}: {rule.label}: {what}")


def choose(mappings: Iterable[Mapping], source: Any, /, **documents: Any) -> Mapping:
    """The first mapping (in file-name order) whose ``when`` holds; MappingError when none does."""
    tried = []
    for mapping in mappings:
        if mapping.applies(source, **documents):
            return mapping
        tried.append(mapping.name)
    raise MappingError(f"no mapping applies to this input (tried: {', '.join(tried) or 'none'})")


# --- compilation -----------------------------------------------------------------------------

def compile_mapping(model: MappingModel, path: Path, where: Where, errors: list[str]) -> Mapping | None:
    """The compiled mapping, or None with every problem appended to ``errors`` as ``file:line: field: what``."""
    compiler = _Compiler(model, where)
    mapping = Mapping(
        name=model.name, version=model.version, path=path, source=model.source, target=model.target,
        description=model.description,
        when=compiler.condition(model.when, ("when",)) if model.when is not None else None,
        rules=compiler.rules(model.rules, ("rules",), ""),
        sections={
            name: Section(
                compiler.source_path(section.each, ("sections", name, "each")) if section.each else None,
                compiler.rules(section.rules, ("sections", name, "rules"), name + "."),
            )
            for name, section in model.sections.items()
        },
    )
    errors += compiler.errors
    return None if compiler.errors else mapping


class _Compiler:
    def __init__(self, model: MappingModel, where: Where) -> None:
        self.where = where
        self.source: Flavour = model.source
        self.target: Flavour = model.target
        self.errors: list[str] = []

    def fail(self, loc: Loc, what: str) -> None:
        self.errors.append(self.where.error(loc, what))

    def source_path(self, text: str, loc: Loc) -> SourcePath | None:
        try:
            return parse_source(text, self.source)
        except PathError as exc:
            self.fail(loc, str(exc))
            return None

    def rules(self, models: list[RuleModel], loc: Loc, prefix: str) -> tuple[Rule, ...]:
        compiled = (self.rule(m, (*loc, n), prefix) for n, m in enumerate(models))
        return tuple(r for r in compiled if r is not None)

    def rule(self, model: RuleModel, loc: Loc, prefix: str) -> Rule | None:
        written = model.model_fields_set
        before = len(self.errors)
        try:
            target = parse_target(model.target, self.target)
        except PathError as exc:
            self.fail((*loc, "target"), str(exc))
            target = None
        label = prefix + model.target
        when = self.condition(model.when, (*loc, "when")) if model.when is not None else None
        if model.each is not None:
            return self.each_rule(model, loc, label, target, when, before)
        if model.rules is not None:
            self.fail((*loc, "rules"), "nested rules need each")
        if {"from_", "value"} <= written:
            self.fail((*loc, "value"), "a rule has from or value, not both")
        if not written & {"from_", "value", "default"}:
            self.fail(loc, "a rule needs from, value, each or default")
        texts = [model.from_] if isinstance(model.from_, str) else model.from_ or []
        floc = [(*loc, "from")] if isinstance(model.from_, str) else [(*loc, "from", n) for n in range(len(texts))]
        sources = tuple(self.source_path(t, at) for t, at in zip(texts, floc, strict=True))
        transform = None
        if model.transform is not None:
            inputs = 1 if "value" in written or model.per_value else len(texts)
            transform = self.transform(model, loc, inputs)
        elif model.args:
            self.fail((*loc, "args"), "args need a transform")
        if len(self.errors) > before or target is None:
            return None
        return Rule(
            line=self.where.line(loc), label=label, target=target,
            sources=tuple(s for s in sources if s is not None),
            constant=model.value, has_constant="value" in written, transform=transform,
            per_value=model.per_value, when=when, default=model.default, has_default="default" in written,
            required=model.required,
        )

    def each_rule(
        self, model: RuleModel, loc: Loc, label: str, target: TargetPath | None, when: Condition | None,
        before: int,
    ) -> Rule | None:
        for key, name in (("from_", "from"), ("value", "value"), ("transform", "transform"),
                          ("args", "args"), ("per_value", "per_value"), ("default", "default")):
            if key in model.model_fields_set:
                self.fail((*loc, name), "not allowed with each (the nested rules say what to write)")
        if not model.rules:
            self.fail((*loc, "each"), "each needs nested rules")
        each = self.source_path(model.each or "", (*loc, "each"))
        if target is not None:
            last = target.steps[-1]
            if last.mode not in ("set", "append"):
                self.fail((*loc, "target"), "each appends one element per item: write name or name[+]")
            elif self.target == "dicom" and last.vr != "SQ":
                self.fail((*loc, "target"), "each writes sequence items, and this is not a sequence")
            target = TargetPath(target.text, target.flavour,
                                (*target.steps[:-1], TargetStep(last.key, "append", last.vr)))
        nested = self.rules(model.rules or [], (*loc, "rules"), label.replace("[+]", "") + ".")
        if len(self.errors) > before or target is None or each is None:
            return None
        return Rule(line=self.where.line(loc), label=label, target=target, when=when,
                    required=model.required, each=each, rules=nested)

    def transform(self, model: RuleModel, loc: Loc, inputs: int) -> Transform | None:
        name = model.transform or ""
        function = FUNCTIONS.get(name)
        if function is None:
            self.fail((*loc, "transform"), f"unknown transform {name}")
            return None
        params = list(inspect.signature(function).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
        keywords = {p.name: p for p in params if p.kind == p.KEYWORD_ONLY}
        spread = varargs or len(positional) > 1
        least = sum(p.default is p.empty for p in positional)
        if not inputs:
            self.fail(loc, f"transform {name} needs from or value")
        elif spread and (inputs < least or (not varargs and inputs > len(positional))):
            self.fail((*loc, "from"), f"transform {name} takes {least} to {len(positional)} inputs, got {inputs}")
        hints = typing.get_type_hints(function)
        args: dict[str, Any] = {}
        arg_paths: dict[str, SourcePath] = {}
        for key, value in model.args.items():
            at = (*loc, "args", key)
            if key not in keywords:
                self.fail(at, f"transform {name} has no argument {key} (it takes: {', '.join(keywords) or 'none'})")
            elif isinstance(value, str) and value.startswith("$"):
                path = self.source_path(value, at)
                if path is not None:
                    arg_paths[key] = path
            elif not _fits(hints.get(key, Any), value):
                self.fail(at, f"transform {name}: {key} must be {_type_name(hints.get(key, Any))}")
            else:
                args[key] = value
        for key, param in keywords.items():
            if param.default is param.empty and key not in model.args:
                self.fail((*loc, "args"), f"transform {name} needs the argument {key}")
        return Transform(name, function, spread, args, arg_paths)

    def condition(self, node: Any, loc: Loc) -> Condition | None:
        if not isinstance(node, dict) or len(node) != 1 or next(iter(node)) not in CONDITIONS:
            self.fail(loc, f"a condition is one key of: {', '.join(CONDITIONS)}")
            return None
        op, arg = next(iter(node.items()))
        at = (*loc, op)
        if op in ("present", "absent"):
            if not isinstance(arg, str):
                self.fail(at, "expects a path")
                return None
            path = self.source_path(arg, at)
            return Condition(op, path) if path else None
        if op in ("equals", "in"):
            if not (isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str)
                    and (op == "equals" or isinstance(arg[1], list))):
                self.fail(at, "expects [path, constant]" if op == "equals" else "expects [path, [constants]]")
                return None
            path = self.source_path(arg[0], (*at, 0))
            values = (arg[1],) if op == "equals" else tuple(arg[1])
            return Condition(op, path, values) if path else None
        parts_in = [arg] if op == "not" else arg
        if not isinstance(parts_in, list) or not parts_in:
            self.fail(at, "expects a list of conditions")
            return None
        parts = [self.condition(p, at if op == "not" else (*at, n)) for n, p in enumerate(parts_in)]
        if any(p is None for p in parts):
            return None
        return Condition(op, parts=tuple(p for p in parts if p is not None))


def _fits(hint: Any, value: Any) -> bool:
    """Whether a constant argument suits a keyword-only parameter's annotation."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    kind = origin or hint
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return not isinstance(kind, type) or isinstance(value, kind)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
