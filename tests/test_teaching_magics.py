"""The teaching tools through the magics: --dry-run, --logprobs, compare, explore."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

import mlx_notebook as mn
from mlx_notebook.control.manager import get_manager
from mlx_notebook.notebook.teaching.logprob_view import logprobs_text
from tests import frontend_helpers

shell = frontend_helpers.shell  # fixture


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    mn.load(str(tiny_model_dir), name="tiny-teach")
    try:
        yield "tiny-teach"
    finally:
        mn.unload("tiny-teach")


def test_dry_run_shows_the_templated_prompt_and_generates_nothing(shell, tiny, capsys):
    shell.run_cell_magic("mlx", "generate --dry-run -m tiny-teach --system Be-brief", "Hi {{x}}")
    out = capsys.readouterr().out
    client = get_manager().get(tiny)
    count = len(client.tokenize(messages=[{"role": "system", "content": "Be-brief"},
                                          {"role": "user", "content": "Hi {x}"}]).tokens)
    assert "Be-brief" in out and "Hi {x}" in out
    assert f"{count} prompt tokens" in out
    assert client.status().active_requests == 0


def test_logprobs_magic_stores_a_result_with_probabilities(shell, tiny):
    shell.run_cell_magic("mlx", "generate --logprobs 3 --max-tokens 4 -m tiny-teach -o lp",
                         "hello")
    result = shell.user_ns["lp"]
    assert result.text and len(result.logprobs) >= 4
    for lp in result.logprobs:
        top = [t.logprob for t in lp.top]
        assert top == sorted(top, reverse=True) and len(top) == 3
    assert "<span" in result._repr_html_()


def test_logprobs_with_a_constraint_outline_where_it_overruled_the_model(shell, tiny):
    shell.run_cell_magic("mlx", "generate --logprobs 2 --choice yes,no -m tiny-teach -o lp",
                         "hello")
    result = shell.user_ns["lp"]
    assert result.text in ("yes", "no")
    overruled = [lp for lp in result.logprobs if lp.unconstrained is not None]
    assert overruled  # the random tiny model never starts with yes or no by itself
    page = result._repr_html_()
    assert page.count('data-overruled="1"') == len(overruled)
    assert "the constraint ruled it out" in page and "dashed" in page
    assert logprobs_text(result.logprobs).count("the model wanted") == len(overruled)


@pytest.mark.parametrize("flag", ["--logprobs 0", "--logprobs 21", "--logprobs x"])
def test_bad_logprobs_is_a_usage_error(shell, tiny, flag):
    with pytest.raises(UsageError):
        shell.run_cell_magic("mlx", f"generate {flag} -m tiny-teach", "hello")


def test_compare_magic_runs_every_setting(shell, tiny):
    shell.run_cell_magic("mlx", "compare -m tiny-teach --temp 0,0.9 --seed 3 --max-tokens 5 -o r",
                         "hello")
    records = shell.user_ns["r"]
    assert [r["options"]["temperature"] for r in records] == [0.0, 0.9]
    assert all(r["text"] and r["tokens"] == 5 for r in records)


def test_compare_needs_a_cell_and_valid_lists(shell, tiny):
    with pytest.raises(UsageError):
        shell.run_line_magic("mlx", "compare --temp 0,1")
    with pytest.raises(UsageError):
        shell.run_cell_magic("mlx", "compare -m tiny-teach --temp zero,1", "hello")


def test_explore_magic_displays_a_live_distribution(shell, tiny):
    shown = []
    shell.display_pub.publish = lambda data, **kw: shown.append(data)
    shell.run_line_magic("mlx", "explore -m tiny-teach hello")
    assert shown, "nothing displayed"
