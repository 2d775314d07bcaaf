"""Property-based fuzzing of the magics' argument parsing: bad input is a UsageError, never a crash."""

from __future__ import annotations

import shlex

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from mlx_notebook.errors import MLXNotebookError
from mlx_notebook.notebook.magics import SUBCOMMANDS
from mlx_notebook.notebook.parsers import _Exit
from tests import frontend_helpers

shell = frontend_helpers.shell  # fixture

FLAGS = ["--max-tokens", "--temp", "--top-p", "--top-k", "--min-p", "--seed", "--stop",
         "--system", "--format", "-o", "--raw", "--logprobs", "--dry-run", "-m", "--as",
         "--context", "--force", "--all", "--reset", "--history", "--models", "--no-interpolate"]
WORDS = st.sampled_from(FLAGS) | st.text(max_size=8) | st.integers(-5, 10**12).map(str) \
    | st.floats(allow_nan=True).map(str)
LINES = st.lists(WORDS, max_size=6).map(lambda ws: " ".join(shlex.quote(w) for w in ws)) \
    | st.text(max_size=40)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(sub=st.sampled_from(sorted(SUBCOMMANDS)), line=LINES)
def test_parsers_raise_only_usage_errors(sub, line):
    try:
        argv = shlex.split(line)
    except ValueError:  # unbalanced quotes: the magic reports shlex's error (see test_magics)
        return
    try:
        SUBCOMMANDS[sub].parser.parse_args(argv)
    except (UsageError, _Exit):  # _Exit: -h printed the help
        pass
    except Exception as exc:  # pragma: no cover - this is the failure being searched for
        raise AssertionError(f"%mlx {sub} {line!r} raised {exc!r}") from exc


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sub=st.sampled_from(["generate", "chat", "compare", "use", "unload", "ps", "config",
                            "help", "tokenize"]), line=LINES, cell=st.none() | st.text(max_size=20))
def test_magics_with_no_model_fail_cleanly(shell, sub, line, cell):
    """With nothing loaded, every call ends in a one-line error of ours, or succeeds."""
    try:
        if cell is None:
            shell.run_line_magic("mlx", f"{sub} {line}")
        else:
            shell.run_cell_magic("mlx", f"{sub} {line}", cell)
    except (UsageError, MLXNotebookError):
        pass
