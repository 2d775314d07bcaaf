"""Prompt interpolation: {name} from the namespace, {{ escapes, safe look-ups."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mlx_notebook.errors import MLXNotebookError
from mlx_notebook.notebook.interpolate import InterpolationError, fields, interpolate

NS = {"x": [10, 20], "d": {"k": "v", 3: "three"}, "obj": SimpleNamespace(attr="A"),
      "name": "Ada", "pi": 3.14159, "w": 6}


@pytest.mark.parametrize(("template", "expected"), [
    ("Hello {name}!", "Hello Ada!"),
    ("{x[0]} and {x[1]}", "10 and 20"),
    ("{d[k]} {d[3]}", "v three"),
    ("{obj.attr}", "A"),
    ("{name!r}", "'Ada'"),
    ("{pi:.2f}", "3.14"),
    ("[{name:>{w}}]", "[   Ada]"),
    ("literal {{braces}} and {{{name}}}", "literal {braces} and {Ada}"),
    ("no fields at all", "no fields at all"),
    ("", ""),
])
def test_fills_fields(template: str, expected: str) -> None:
    assert interpolate(template, NS) == expected


def test_unknown_names_are_named_all_at_once() -> None:
    with pytest.raises(InterpolationError) as info:
        interpolate("{who} met {name} and {where} and {who}", NS)
    msg = str(info.value)
    assert "who, where" in msg and "--no-interpolate" in msg and "{{" in msg
    assert isinstance(info.value, MLXNotebookError)


@pytest.mark.parametrize("template", ["{obj.__class__}", "{obj._private}", "{x.__len__}"])
def test_private_attributes_refused(template: str) -> None:
    with pytest.raises(InterpolationError, match="private attribute"):
        interpolate(template, NS)


@pytest.mark.parametrize(("template", "match"), [
    ("code: {}", "Empty {}"),
    ('json: {"a": 1}', "not a name"),
    ("a } b", "Unbalanced"),
    ("a { b", "Unbalanced"),
    ("{x[5]}", "no item 5"),
    ("{d[zz]}", "no item 'zz'"),
    ("{obj.nope}", "nope"),
    ("{name:d}", "Cannot format"),
    ("{0}", "not a name"),
])
def test_bad_fields_are_clear_errors(template: str, match: str) -> None:
    with pytest.raises(InterpolationError, match=match):
        interpolate(template, NS)


def test_nothing_is_evaluated() -> None:
    calls = []
    ns = {"f": lambda: calls.append(1)}
    with pytest.raises(InterpolationError):
        interpolate("{f()}", ns)
    assert calls == []


def test_fields_lists_expressions() -> None:
    assert fields("a {x[0]} {{no}} {obj.attr!r:>3}") == ["x[0]", "obj.attr"]
