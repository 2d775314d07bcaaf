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


@pytest.mark.parametrize("template", ["{_ih[0]}", "{__builtins__}", "{_}", "{_secret.x}",
                                      "ok {name} then {_oh}"])
def test_private_top_level_names_refused(template: str) -> None:
    # Refused whether or not the name exists (IPython's _ih, _oh, _ are always there).
    ns = {**NS, "_ih": ["%mlx load demo"], "__builtins__": __builtins__, "_": 1, "_oh": {},
          "_secret": SimpleNamespace(x=1)}
    with pytest.raises(InterpolationError, match="names starting with '_' are not allowed"):
        interpolate(template, ns)
    with pytest.raises(InterpolationError, match="not allowed"):
        interpolate(template, NS)  # not defined: still refused, not "unknown name"


@pytest.mark.parametrize("template", ["{name:1000000000}", "{pi:.1000000000f}",
                                      "{name:>{big}}", "{name:x<99999999999999999999}"])
def test_huge_format_width_is_a_clear_error(template: str) -> None:
    with pytest.raises(InterpolationError, match="too wide"):
        interpolate(template, {**NS, "big": 10**9})


def test_ordinary_widths_still_format() -> None:
    assert interpolate("{name:>10000}", NS) == "Ada".rjust(10000)
    assert interpolate("{pi:.3f}", NS) == "3.142"


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
