"""Fill ``{name}`` fields of a prompt from the user's namespace.

>>> interpolate("Translate {word!r} to {lang}.", {"word": "cat", "lang": "French"})
"Translate 'cat' to French."

Rules: ``{{`` and ``}}`` are literal braces; a field is a name followed by
attribute (``{obj.attr}``) and item (``{x[0]}``, ``{d[key]}``) look-ups, with the
usual ``!r``/``!s``/``!a`` conversions and ``:spec`` formats. Nothing is evaluated:
private names and attributes (``_x``, ``_ih``, dunders) are refused, so a prompt
cannot reach into interpreter internals, and a width or precision above
:data:`MAX_WIDTH` is refused before it allocates. An unknown name is an error
that names it, never a blank.
"""

from __future__ import annotations

import re
import string
from _string import formatter_field_name_split  # type: ignore[import-not-found]  # no stub
from collections.abc import Mapping
from typing import Any

from .errors import InterpolationError

_HINT = "write {{ and }} for literal braces, or use --no-interpolate"
_FORMATTER = string.Formatter()
MAX_WIDTH = 10_000  # the widest field (and longest precision) a format spec may ask for
_NUMBER = re.compile(r"\d+")
PRIVATE_NAME = "{{{field}}}: names starting with '_' are not allowed in a prompt ({name!r}); {hint}."
WIDTH_TOO_BIG = ("{{{field}:{spec}}}: {number} is too wide (a format width or precision "
                 "may be at most {max:,}).")


def fields(template: str) -> list[str]:
    """The field expressions of ``template``, in order (``{{`` escapes excluded)."""
    return [name for _, name, _, _ in _parse(template) if name is not None]


def interpolate(template: str, namespace: Mapping[str, Any]) -> str:
    """Return ``template`` with every ``{field}`` filled from ``namespace``.

    Raises :class:`InterpolationError` naming every unknown name at once.
    """
    parts = _parse(template)
    for _, name, _, _ in parts:
        root = _root(name) if name else ""
        if root.startswith("_") and _valid_root(root):
            raise InterpolationError(PRIVATE_NAME.format(field=name, name=root, hint=_HINT))
    missing = [
        _root(name) for _, name, _, _ in parts
        if name and _valid_root(_root(name)) and _root(name) not in namespace
    ]
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        raise InterpolationError(
            f"Unknown name{'s' if len(set(missing)) > 1 else ''} in prompt: {names} "
            f"(define {'them' if len(set(missing)) > 1 else 'it'} first, or {_HINT})."
        )
    out: list[str] = []
    for literal, name, spec, conversion in parts:
        out.append(literal)
        if name is None:
            continue
        value = _lookup(name, namespace)
        if conversion:
            value = _FORMATTER.convert_field(value, conversion)
        if spec and "{" in spec:
            spec = interpolate(spec, namespace)
        _check_spec(name, spec or "")
        try:
            out.append(format(value, spec or ""))
        except (ValueError, TypeError, OverflowError, MemoryError) as exc:
            raise InterpolationError(f"Cannot format {{{name}:{spec}}}: {exc}") from exc
    return "".join(out)


def _check_spec(name: str, spec: str) -> None:
    """Refuse a width or precision that would build a huge string (MemoryError, or a hang)."""
    for number in _NUMBER.findall(spec):
        if int(number) > MAX_WIDTH:
            raise InterpolationError(WIDTH_TOO_BIG.format(field=name, spec=spec, number=number,
                                                          max=MAX_WIDTH))


def _parse(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise InterpolationError(f"Unbalanced brace in prompt ({exc}); {_HINT}.") from exc


def _root(name: str) -> str:
    try:
        first, _ = formatter_field_name_split(name)
    except ValueError:
        return name
    return str(first)


def _valid_root(root: str) -> bool:
    return root.isidentifier()


def _lookup(name: str, namespace: Mapping[str, Any]) -> Any:
    if not name:
        raise InterpolationError(f"Empty {{}} in prompt; {_HINT}.")
    try:
        first, rest = formatter_field_name_split(name)
        steps = list(rest)
    except ValueError as exc:
        raise InterpolationError(f"Cannot read field {{{name}}}: {exc}; {_HINT}.") from exc
    if not isinstance(first, str) or not first.isidentifier():
        raise InterpolationError(f"{{{name}}} is not a name from the namespace; {_HINT}.")
    value = namespace[first]
    for is_attr, key in steps:
        if is_attr:
            if key.startswith("_"):
                raise InterpolationError(f"{{{name}}}: private attribute {key!r} is not allowed.")
            try:
                value = getattr(value, key)
            except AttributeError as exc:
                raise InterpolationError(f"{{{name}}}: {exc}") from exc
        else:
            try:
                value = value[key]
            except (LookupError, TypeError) as exc:
                raise InterpolationError(
                    f"{{{name}}}: no item {key!r} ({type(exc).__name__})"
                ) from exc
    return value
