"""errors.py draws its class tree in its docstring; the drawing and the classes agree."""

from __future__ import annotations

import inspect
import re
import signal

from mlx_notebook import errors


def _classes() -> dict[str, type]:
    return {name: cls for name, cls in vars(errors).items()
            if inspect.isclass(cls) and issubclass(cls, errors.MLXNotebookError)}


def _drawn_tree() -> dict[str, str | None]:
    """Each class drawn in the docstring, with the class drawn as its parent."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (column of the name, name)
    for line in (errors.__doc__ or "").splitlines():
        match = re.search(r"(\w+(?:Error|Timeout))\b", line)
        if not match or not re.match(r"^\s*([│ ]*[├└]── )?\w", line):
            continue
        column = match.start(1)
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[match.group(1)] = stack[-1][1] if stack else None
        stack.append((column, match.group(1)))
    return parents


def test_the_docstring_tree_draws_every_class_under_its_parent() -> None:
    classes = _classes()
    tree = _drawn_tree()
    assert sorted(tree) == sorted(classes), "draw every class of errors.py in its docstring"
    for name, parent in tree.items():
        ours = [base for base in classes[name].__bases__ if base in classes.values()]
        assert [base.__name__ for base in ours] == ([parent] if parent else []), name


def test_all_is_complete() -> None:
    assert sorted(errors.__all__) == sorted(_classes())


def test_errors_carry_fields_not_only_words() -> None:
    exited = errors.RunnerExitedError("gone", returncode=-signal.SIGKILL)
    assert exited.signal == "SIGKILL" and exited.returncode == -9
    assert errors.RunnerExitedError("gone", returncode=1).signal is None
    assert errors.ProtocolError("no", status=401, url="http://h:1").status == 401
    arg = errors.InvalidArgumentError("bad", field="ranks")
    assert arg.field == "ranks" and isinstance(arg, ValueError)
    assert str(errors.ModelNotLoadedError("No model named 'x'", name="x")) == "No model named 'x'"
    memory = errors.InsufficientMemoryError("too big", required=10, available=5)
    assert (memory.required, memory.available) == (10, 5)
