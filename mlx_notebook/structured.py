"""Structured output on the kernel side: what the answer must be, and its value once made.

The runner masks the tokens (runner/constraints.py); the kernel only sends the
constraint (a JSON schema from pydantic's ``model_json_schema()``, a regex, a list
of choices) and validates the final text itself, so ``result.value`` is a checked
object or None, never a half-parsed one.

>>> spec = output_spec(choices=["yes", "no"])
>>> spec.constraint.kind, spec.parse("yes", "stop")
('choice', ('yes', ''))
>>> spec.parse('ye', "length")
(None, 'the answer was cut at max_tokens before it was complete')
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgumentError
from .protocol import Constraint

__all__ = ["OutputSpec", "output_spec", "pretty_json_prefix", "REGEX_DIALECT"]

REGEX_DIALECT = ("Rust regex syntax (llguidance): classes, groups, alternation, repetition "
                 "{m,n}; no look-around and no back-references; the whole answer must match")
ONE_KIND = "give one of {names}, not several"
SCHEMA_TYPE = ("{schema} takes a pydantic model class or a JSON-schema dict, got {kind} "
               "(define class M(pydantic.BaseModel): ... and pass M)")
CHOICES_EMPTY = "{choices} needs at least one non-empty string, got {value!r}"
REGEX_TYPE = "{regex} takes a pattern string, got {value!r}"
CUT = "the answer was cut at max_tokens before it was complete"
NOT_FINISHED = "the generation ended ({reason}) before the answer was complete"
INVALID = "the answer does not match the {what}: {why}"
NAMES = {"schema": "schema", "json": "json", "choices": "choices", "regex": "regex"}


@dataclass(frozen=True)
class OutputSpec:
    """The constraint to send and how to read the answer back (``model``: a pydantic class)."""

    constraint: Constraint
    model: Any = None  # a pydantic BaseModel subclass, for kind "json_schema" from a class

    @property
    def is_json(self) -> bool:
        return self.constraint.kind in ("json_schema", "json")

    @property
    def fields(self) -> list[str]:
        """The top-level properties of an object schema (one DataFrame column each in mn.map)."""
        schema = self.constraint.schema or {}
        props = schema.get("properties") if schema.get("type", "object") == "object" else None
        return list(props) if isinstance(props, dict) else []

    def parse(self, text: str, finish_reason: str) -> tuple[Any, str]:
        """``(value, "")``, or ``(None, why there is none)``: a cut answer is never parsed."""
        if finish_reason != "stop":
            return None, CUT if finish_reason == "length" else NOT_FINISHED.format(
                reason=finish_reason)
        kind = self.constraint.kind
        if kind == "choice":
            if text in self.constraint.choices:
                return text, ""
            return None, INVALID.format(what="choices", why=f"{text!r} is not one of them")
        if kind == "regex":
            return text, ""  # the grammar engine's dialect is not Python's: trust its match
        if self.model is not None:
            from pydantic import ValidationError

            try:
                return self.model.model_validate_json(text), ""
            except ValidationError as exc:
                return None, INVALID.format(what=f"schema {self.model.__name__}",
                                            why=_first_error(exc))
        try:
            value = json.loads(text)
        except ValueError as exc:
            return None, INVALID.format(what="JSON grammar", why=str(exc))
        if kind == "json_schema":
            import jsonschema

            try:
                jsonschema.validate(value, self.constraint.schema or {})
            except jsonschema.ValidationError as exc:
                return None, INVALID.format(what="JSON schema", why=exc.message)
        return value, ""


def _first_error(exc: Any) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "value"
    return f"{where}: {first.get('msg', '')}"


def output_spec(*, schema: Any = None, json: bool = False,  # noqa: A002 - the user's word
                choices: Sequence[str] | str | None = None, regex: str | None = None,
                names: Mapping[str, str] | None = None) -> OutputSpec | None:
    """The :class:`OutputSpec` of the API's ``schema=``/``json=``/``choices=``/``regex=``.

    None when none is given; :class:`InvalidArgumentError` (``.field``) for what cannot
    work. ``names`` spells the arguments as the caller knows them (``--schema``).
    """
    n = {**NAMES, **(names or {})}
    given = [k for k, v in (("schema", schema is not None), ("json", bool(json)),
                            ("choices", choices is not None), ("regex", regex is not None)) if v]
    if len(given) > 1:
        raise InvalidArgumentError(ONE_KIND.format(names=", ".join(n[k] for k in given)),
                                   field=given[1])
    if schema is not None:
        return _schema_spec(schema, n["schema"])
    if json:
        return OutputSpec(Constraint(kind="json"))
    if choices is not None:
        items = [c.strip() for c in choices.split(",")] if isinstance(choices, str) \
            else list(choices)
        if not items or not all(isinstance(c, str) and c for c in items):
            raise InvalidArgumentError(CHOICES_EMPTY.format(choices=n["choices"], value=choices),
                                       field="choices")
        return OutputSpec(Constraint(kind="choice", choices=tuple(dict.fromkeys(items))))
    if regex is not None:
        if not isinstance(regex, str) or not regex:
            raise InvalidArgumentError(REGEX_TYPE.format(regex=n["regex"], value=regex),
                                       field="regex")
        return OutputSpec(Constraint(kind="regex", pattern=regex))
    return None


def _schema_spec(schema: Any, name: str) -> OutputSpec:
    if isinstance(schema, Mapping):
        return OutputSpec(Constraint(kind="json_schema", schema=dict(schema)))
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return OutputSpec(Constraint(kind="json_schema", schema=_closed(schema)), model=schema)
    raise InvalidArgumentError(SCHEMA_TYPE.format(schema=name, kind=type(schema).__name__),
                               field="schema")


def _closed(model: Any) -> dict[str, Any]:
    """The class's schema with no extra properties where pydantic would ignore them anyway:
    the model spends no tokens on fields that ``.value`` would drop."""
    schema = copy.deepcopy(model.model_json_schema())
    if model.model_config.get("extra") == "allow":
        return dict(schema)
    for node in [schema, *schema.get("$defs", {}).values()]:
        if node.get("type") == "object" and "additionalProperties" not in node:
            node["additionalProperties"] = False
    return dict(schema)


def pretty_json_prefix(text: str, indent: int = 2) -> str:
    """Any prefix of a JSON text, re-indented: what the cell shows while a JSON answer streams.

    >>> print(pretty_json_prefix('{"a": [1, 2], "b": {}}'))
    {
      "a": [
        1,
        2
      ],
      "b": {}
    }
    """
    out: list[str] = []
    depth = 0
    in_string = escaped = False
    newline = False  # a line break is due before the next significant character
    for ch in text:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch in " \t\r\n":
            continue
        if ch in "}]":
            depth = max(0, depth - 1)
            if not (out and out[-1] in "{[" and newline):
                out.append("\n" + " " * (indent * depth))
            newline = False
            out.append(ch)
            continue
        if newline:
            out.append("\n" + " " * (indent * depth))
            newline = False
        if ch in "{[":
            depth += 1
            newline = True
            out.append(ch)
        elif ch == ",":
            out.append(ch)
            newline = True
        elif ch == ":":
            out.append(": ")
        else:
            if ch == '"':
                in_string = True
            out.append(ch)
    return "".join(out)
