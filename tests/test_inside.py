"""Look inside the model (issue 21): score, choose, lens, attention, with real runners.

The numbers are checked against the model itself: a score equals the logprobs of the
runner's own greedy generation, the lens's last layer is the model's next-token
distribution, and attention maps match a reference computed here with plain MLX ops
on the same weights (and reproduce the block's own attention output).
"""

from __future__ import annotations

import math
import threading
import time

import pytest
from IPython.core.error import UsageError

import mlx_notebook as mn
from mlx_notebook.control.client import RunnerClient
from mlx_notebook.errors import GenerationError, InvalidArgumentError
from mlx_notebook.inside import Score
from mlx_notebook.inside_protocol import LensRequest
from mlx_notebook.protocol import CompletionRequest, SamplingOptions
from tests import frontend_helpers
from tests.fixtures_runner import running

shell = frontend_helpers.shell  # fixture

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, test_registry):
    """The tiny model with 8-token prefill chunks: a short text is already many chunks."""
    yield from running(RunnerClient(str(tiny_model_dir), name="tiny-inside",
                                    registry=test_registry, extra_args=["--prefill-step", "8"]))


def _greedy(client, prompt, *, max_tokens, logprobs):
    request = CompletionRequest(prompt=prompt, options=SamplingOptions(
        max_tokens=max_tokens, logprobs=logprobs))
    with client.stream(request) as stream:
        return [lp for chunk in stream for lp in chunk.logprobs]


def test_score_equals_the_logprobs_of_the_greedy_generation(tiny):
    generated = _greedy(tiny, PROMPT, max_tokens=6, logprobs=1)
    text = tiny.detokenize([g.token for g in generated])
    # The same token ids when prompt and text are tokenized together (compared by id).
    assert tiny.tokenize(PROMPT + text).tokens == \
        tiny.tokenize(PROMPT).tokens + [g.token for g in generated]
    score = mn.score(text, context=PROMPT, model=tiny)
    assert [t.token for t in score.tokens] == [g.token for g in generated]
    assert score.total == pytest.approx(sum(g.logprob for g in generated), abs=1e-3)
    for mine, theirs in zip(score.tokens, generated, strict=True):
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-4)
        assert mine.rank == 1  # greedy: every token was the model's first choice
    assert score.mean == pytest.approx(score.total / len(score.tokens))
    assert score.perplexity == pytest.approx(math.exp(-score.mean))
    assert score.start == len(tiny.tokenize(PROMPT).tokens)


def test_without_context_the_first_token_is_unscored(tiny):
    score = mn.score("Hello world", model=tiny, top_k=3)
    assert score.tokens[0].logprob is None and score.tokens[0].rank is None
    assert all(t.logprob is not None and len(t.top) == 3 for t in score.tokens[1:])
    assert "perplexity" in str(score) and "mlxnb-score" in score._repr_html_()


def test_choose_is_batched_and_matches_each_score_alone(tiny):
    options = [" Paris", " Rome is a city", " Jupyter notebooks run cells"]
    choice = mn.choose(PROMPT, options, model=tiny)
    alone = {o: mn.score(o, context=PROMPT, model=tiny).total for o in options}
    for ranked in choice.ranked:  # right padding in the batch changes nothing
        assert ranked.total == pytest.approx(alone[ranked.text], abs=1e-3)
    assert choice.best == max(alone, key=alone.__getitem__)
    assert [r.rank for r in choice.ranked] == [1, 2, 3]
    assert choice.best_normalized == max(choice.ranked, key=lambda r: r.mean).text
    assert "per token" in choice._repr_html_() and "per token" in str(choice)


def test_lens_last_layer_is_the_models_next_token_distribution(tiny):
    generated = _greedy(tiny, PROMPT, max_tokens=1, logprobs=5)
    own = generated[0].top
    lens = mn.lens(PROMPT, top_k=5, model=tiny)
    n_tokens = len(tiny.tokenize(PROMPT).tokens)
    assert lens.layers == tuple(range(lens.num_layers + 1))  # embeddings, then every block
    assert lens.positions == tuple(range(max(0, n_tokens - 16), n_tokens))
    final = lens.grid[-1][-1]
    assert [c.token for c in final] == [t.token for t in own]
    for mine, theirs in zip(final, own, strict=True):
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-4)
    assert lens.final_top == own[0].text
    html = lens._repr_html_()
    assert html.count('class="mlxnb-lens-cell"') == len(lens.layers) * len(lens.positions)
    assert "<script" not in html and "title=" in html
    assert "final top" in str(lens)


def test_lens_positions_and_layers(tiny):
    lens = mn.lens(PROMPT, positions=[0, -1], layers=[0, -1], top_k=2, model=tiny)
    n = len(lens.tokens)
    assert lens.positions == (0, n - 1) and lens.layers == (0, lens.num_layers)
    assert all(len(cell) == 2 for row in lens.grid for cell in row)
    assert mn.lens(PROMPT, positions=2, model=tiny).positions == (n - 2, n - 1)
    assert len(mn.lens("Hi", positions=100, model=tiny).positions) == len(tiny.tokenize("Hi").tokens)
    with pytest.raises(GenerationError, match="position 99 is out of range"):
        mn.lens(PROMPT, positions=[99], model=tiny)
    with pytest.raises(GenerationError, match="layer 9 is out of range"):
        mn.lens(PROMPT, layers=[9], model=tiny)


def _reference_attention(model, tokens, layer):
    """Block ``layer``'s attention probabilities from its weights with plain MLX ops."""
    import mlx.core as mx

    inner = model.model
    h = inner.embed_tokens(mx.array(tokens)[None])
    for block in inner.layers[:layer]:
        h = block(h, "causal")
    block = inner.layers[layer]
    attn = block.self_attn
    x = mx.fast.rms_norm(h, block.input_layernorm.weight, block.input_layernorm.eps)
    n, heads, kv = len(tokens), attn.n_heads, attn.n_kv_heads
    q = (x @ attn.q_proj.weight.T).reshape(1, n, heads, -1).transpose(0, 2, 1, 3)
    k = (x @ attn.k_proj.weight.T).reshape(1, n, kv, -1).transpose(0, 2, 1, 3)
    dim = q.shape[-1]
    q = mx.fast.rope(q, dim, traditional=False, base=10000.0, scale=1.0, offset=0)
    k = mx.fast.rope(k, dim, traditional=False, base=10000.0, scale=1.0, offset=0)
    k = mx.concatenate([k[:, i // (heads // kv)][:, None] for i in range(heads)], axis=1)
    scores = (q @ k.transpose(0, 1, 3, 2)) / math.sqrt(dim)
    mask = mx.triu(mx.full((n, n), -mx.inf), k=1)
    return mx.softmax(scores + mask, axis=-1)[0], x, block


def test_attention_rows_sum_to_one_and_match_a_plain_mlx_reference(tiny, tiny_model_dir):
    import mlx.core as mx
    from mlx_lm import load

    text = "The quick brown fox jumps over the lazy dog."
    att = mn.attention(text, layer=1, head=1, model=tiny)
    tokens = list(att.tokens)
    assert tokens == tiny.tokenize(text).tokens and att.heads == 4 and att.layer == 1
    for head in att.weights:
        for i, row in enumerate(head):
            assert len(row) == i + 1 and sum(row) == pytest.approx(1.0, abs=1e-3)
    model, _ = load(str(tiny_model_dir))
    reference, x, block = _reference_attention(model, tokens, 1)
    for h in range(att.heads):
        for mine_row, ref_row in zip(att.head(h), reference[h].tolist(), strict=True):
            assert mine_row == pytest.approx(ref_row, abs=2e-4)
    # The weights are the ones the block uses: weights @ values through o_proj is its output.
    attn = block.self_attn
    v = (x @ attn.v_proj.weight.T).reshape(1, len(tokens), attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
    v = mx.repeat(v, attn.n_heads // attn.n_kv_heads, axis=1)
    mine = (mx.array([att.head(h) for h in range(att.heads)])[None] @ v)
    mine = attn.o_proj(mine.transpose(0, 2, 1, 3).reshape(1, len(tokens), -1))
    own = attn(x, mask="causal")
    assert mx.abs(mine - own).max().item() < 1e-3
    assert att.head_shown == 1
    html = att._repr_html_()
    assert html.count('class="mlxnb-attention-head"') == att.heads + 1 and "<title>" in html


def test_attention_refusals(tiny):
    with pytest.raises(GenerationError, match="at most 128 tokens"):
        mn.attention("word " * 40, layer=0, model=tiny)
    with pytest.raises(GenerationError, match="layer 5 is out of range: the model has 2 blocks"):
        mn.attention(PROMPT, layer=5, model=tiny)
    with pytest.raises(InvalidArgumentError, match="head 9 is out of range") as info:
        mn.attention(PROMPT, layer=-1, head=9, model=tiny)
    assert info.value.field == "head"


@pytest.mark.parametrize(("call", "field"), [
    (lambda: mn.score(""), "text"),
    (lambda: mn.score("x", top_k=21), "top_k"),
    (lambda: mn.choose("Q", ["only one"]), "options"),
    (lambda: mn.choose("Q", "A,B"), "options"),
    (lambda: mn.lens("x", positions=0), "positions"),
    (lambda: mn.lens("x", layers=[]), "layers"),
    (lambda: mn.attention("x", layer="1"), "layer"),
])
def test_the_api_refuses_bad_arguments_before_any_request(call, field):
    with pytest.raises(InvalidArgumentError) as info:
        call()
    assert info.value.field == field


def test_a_long_lens_runs_between_the_decode_steps_of_a_generation(tiny):
    """A lens of 300 tokens is ~40 chunks here: the generation's tokens keep coming."""
    long_text = " ".join(["The capital of France is Paris."] * 45)
    arrivals: list[float] = []
    request = CompletionRequest(prompt="Hello", options=SamplingOptions(max_tokens=200))

    def generate() -> None:
        with tiny.stream(request) as stream:
            for _ in stream:
                arrivals.append(time.perf_counter())

    thread = threading.Thread(target=generate)
    thread.start()
    while not arrivals:
        time.sleep(0.01)
    progress: list[int] = []
    begin = time.perf_counter()
    lens = tiny.lens(LensRequest(text=long_text, last=4),
                     on_progress=lambda done, total: progress.append(done))
    end = time.perf_counter()
    thread.join(60)
    assert len(lens.tokens) > 250 and len(progress) > 20
    during = [t for t in arrivals if begin < t < end]
    assert len(during) >= 10, (len(during), end - begin)


def test_magics_score_choose_lens_attention(shell, tiny_model_dir, capsys):
    mn.load(str(tiny_model_dir), name="tiny-inside-magic")
    try:
        shell.run_cell_magic("mlx", "score --context 'The capital of' -o s", " France is Paris.")
        assert isinstance(shell.user_ns["s"], Score)
        assert shell.user_ns["s"].context == "The capital of"
        shell.run_cell_magic("mlx", "choose --options 'Paris, Rome' -o c", PROMPT)
        assert [r.text for r in sorted(shell.user_ns["c"].ranked, key=lambda r: r.text)] == \
            [" Paris", " Rome"]
        shell.run_line_magic("mlx", "lens The capital of France --positions 2 --layers 0,-1 -o l")
        assert len(shell.user_ns["l"].positions) == 2 and shell.user_ns["l"].layers[0] == 0
        shell.run_line_magic("mlx", "attention The cat sat --layer 0 --head 1 -o a")
        assert shell.user_ns["a"].head_shown == 1
        out = capsys.readouterr().out
        assert "perplexity" in out and "final top" in out and "attention of block 0" in out
        with pytest.raises(UsageError, match="--top-k"):
            shell.run_line_magic("mlx", "lens hello --top-k 0")
        with pytest.raises(UsageError, match="--options"):
            shell.run_cell_magic("mlx", "choose --options 'one'", PROMPT)
        with pytest.raises(UsageError, match="--positions"):
            shell.run_line_magic("mlx", "lens hello --positions x")
        with pytest.raises(UsageError, match="needs a cell"):
            shell.run_line_magic("mlx", "score")
    finally:
        mn.unload("tiny-inside-magic")
