"""Next-token explorer: the distribution over the next token, live under sampling settings.

>>> ex = NextTokenExplorer("The capital of France is")   # doctest: +SKIP
>>> ex                        # sliders, and one bar per candidate token; click a bar to append it
>>> ex.top_k = 3; ex.distribution          # [(' Paris', 0.81), (' the', 0.12), (' a', 0.07)]
>>> ex.choose(0); ex.text                  # 'The capital of France is Paris'

Each step is one runner request (``max_tokens=1, logprobs=20``, greedy) on the text
so far as a raw prompt; the runner's prompt cache reuses the prefix. Temperature,
top-p and top-k are applied here, in plain Python, to those 20 most likely
tokens, in the runner's own order: top-p and top-k on the model's probabilities,
then temperature over what is left.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
from traitlets import Float, Int, Unicode, link

from ... import api
from ...errors import InvalidArgumentError
from ...protocol import CompletionRequest, SamplingOptions, TopLogprob
from ..tokens import REPLACEMENT, byte_label, is_whole

if TYPE_CHECKING:
    from ...control.connection import RunnerConnection

__all__ = ["NextTokenExplorer", "explore", "next_token_logprobs", "transform_distribution"]

TOP_N = 20  # the most alternatives the runner sends


def next_token_logprobs(client: RunnerConnection, text: str) -> tuple[TopLogprob, ...]:
    """The 20 most likely next tokens after ``text`` (raw), best first; () if it would end."""
    request = CompletionRequest(prompt=text, options=SamplingOptions(
        max_tokens=1, logprobs=TOP_N, temperature=0.0))
    with client.stream(request) as stream:
        for chunk in stream:
            if chunk.logprobs:
                return chunk.logprobs[0].top
    return ()  # the greedy token was end-of-sequence: the runner sends no logprobs for it


def transform_distribution(top: Sequence[TopLogprob], *, temperature: float = 1.0,
                           top_p: float = 1.0, top_k: int = 0) -> list[tuple[int, float]]:
    """``(index into top, probability)`` after top-p, top-k, then temperature; sums to 1."""
    probs = [math.exp(t.logprob) for t in top]
    keep = len(probs)
    if 0 < top_p < 1:
        total, keep = 0.0, 0
        for p in probs:  # the smallest best-first set holding top_p of the mass
            keep += 1
            total += p
            if total >= top_p:
                break
    if top_k > 0:
        keep = min(keep, top_k)
    if keep == 0:
        return []
    if temperature <= 0:
        return [(0, 1.0)]
    weights = [p ** (1.0 / temperature) if p > 0 else 0.0 for p in probs[:keep]]
    norm = sum(weights) or 1.0
    return [(i, w / norm) for i, w in enumerate(weights)]


def candidate_labels(client: RunnerConnection, top: Sequence[TopLogprob]) -> list[str]:
    """How each candidate is shown: its text, or its bytes (``<E4 BD>``) where the token is
    only part of a character (its text would be U+FFFD)."""
    labels = [t.text for t in top]
    if not any(REPLACEMENT in t.text for t in top):
        return labels
    raw = client.token_bytes([t.token for t in top])
    if len(raw) != len(labels):  # a runner that predates token bytes
        return labels
    return [text if is_whole(b) else byte_label(b) for text, b in zip(labels, raw, strict=True)]


def _show(text: str) -> str:
    return text.replace("\n", "↵").replace(" ", "␣") or "∅"


class NextTokenExplorer(widgets.VBox):
    """A prompt, three sampling sliders and a clickable bar chart of the next token."""

    text = Unicode("", help="the text so far; the distribution is for the token after it")
    temperature = Float(1.0, help="0 puts all mass on the most likely token")
    top_p = Float(1.0, help="keep the fewest best tokens holding this much probability")
    top_k = Int(0, help="keep only the k best tokens (0: all 20)")

    def __init__(self, text: str = "", *, model: str | RunnerConnection | None = None,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 **kwargs: Any) -> None:
        self.client = api.get_client(model)
        self.top: tuple[TopLogprob, ...] = ()
        self.labels: list[str] = []  # each of top as shown: text, or <bytes> of a partial char
        self.distribution: list[tuple[str, float]] = []
        self._indices: list[int] = []
        self.prompt_box = widgets.Textarea(description="text", continuous_update=False,
                                           layout=widgets.Layout(width="100%", height="5em"))
        style = {"description_width": "7em"}
        self.temperature_slider = widgets.FloatSlider(
            description="temperature", min=0.0, max=2.0, step=0.05, style=style)
        self.top_p_slider = widgets.FloatSlider(
            description="top-p", min=0.0, max=1.0, step=0.01, style=style)
        self.top_k_slider = widgets.IntSlider(
            description="top-k (0: all)", min=0, max=TOP_N, style=style)
        self.info = widgets.HTML()
        self.bars = widgets.VBox()
        self.sample_button = widgets.Button(description="sample one", icon="random")
        self.sample_button.on_click(lambda _b: self.sample())
        super().__init__(children=[self.prompt_box, self.temperature_slider, self.top_p_slider,
                                   self.top_k_slider, self.info, self.bars, self.sample_button],
                         **kwargs)
        link((self, "text"), (self.prompt_box, "value"))
        link((self, "temperature"), (self.temperature_slider, "value"))
        link((self, "top_p"), (self.top_p_slider, "value"))
        link((self, "top_k"), (self.top_k_slider, "value"))
        with self.hold_trait_notifications():
            self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.observe(lambda _c: self._redraw(), names=["temperature", "top_p", "top_k"])
        self.observe(lambda _c: self.refresh(), names=["text"])
        self.text = text
        if not text:
            self._redraw()

    def refresh(self) -> None:
        """Ask the runner for the next-token distribution after the current text."""
        self.top = next_token_logprobs(self.client, self.text) if self.text else ()
        self.labels = candidate_labels(self.client, self.top)
        self._redraw()

    def choose(self, index: int) -> str:
        """Append the ``index``-th token of :attr:`distribution` and move on; returns it.

        A token that is only part of a character cannot continue a text: refused.
        """
        if self._partial(index):
            raise InvalidArgumentError(
                f"token {self.labels[self._indices[index]]} is only part of a character: the "
                "explorer continues a text, choose a whole one", field="index")
        token = self.distribution[index][0]
        self.text += token
        return token

    def _partial(self, index: int) -> bool:
        """The ``index``-th token of :attr:`distribution` is only part of a character."""
        i = self._indices[index]
        return bool(self.labels) and self.labels[i] != self.top[i].text

    def sample(self, rng: random.Random | None = None) -> str:
        """Draw a token from :attr:`distribution` (as the runner would) and append it;
        tokens that are only part of a character are left out (they are not text)."""
        weights = [0.0 if self._partial(n) else p for n, (_, p) in enumerate(self.distribution)]
        if not any(weights):
            raise ValueError("nothing to sample: the text is empty or the model would stop here")
        index = (rng or random).choices(range(len(weights)), weights=weights)[0]
        return self.choose(index)

    def _redraw(self) -> None:
        kept = transform_distribution(self.top, temperature=self.temperature, top_p=self.top_p,
                                      top_k=self.top_k)
        self._indices = [i for i, _ in kept]
        self.distribution = [(self.top[i].text, p) for i, p in kept]
        bars = []
        for n, (token, p) in enumerate(self.distribution):
            partial = self._partial(n)
            label = self.labels[self._indices[n]] if partial else _show(token)
            button = widgets.Button(
                description=label, disabled=partial, layout=widgets.Layout(width="10em"),
                tooltip="only part of a character: not a text to append" if partial
                else repr(token))
            button.on_click(lambda _b, n=n: self.choose(n))
            model_p = math.exp(self.top[self._indices[n]].logprob)
            bar = widgets.HTML(
                f'<div style="display:flex;align-items:center;gap:6px">'
                f'<div style="background:#4a90d9;height:14px;width:{p * 300:.0f}px"></div>'
                f"<span>{p:.1%} <span style='color:#888'>(model {model_p:.1%})</span></span></div>")
            bars.append(widgets.HBox([button, bar]))
        self.bars.children = bars
        shown = sum(math.exp(t.logprob) for t in self.top)
        if not self.text:
            note = "Type a text to see what the model would write next."
        elif not self.top:
            note = "The model would most likely <b>end the text here</b> (end of sequence)."
        else:
            note = (f"{len(self.distribution)} of the {len(self.top)} most likely next tokens "
                    f"(together {shown:.1%} of the model's probability); click one to append it.")
        self.info.value = f"<span style='color:#555'>{note}</span>"


def explore(text: str = "", *, model: str | RunnerConnection | None = None,
            **settings: Any) -> NextTokenExplorer:
    """What ``%mlx explore [TEXT] [-m NAME]`` shows: a new explorer on ``text``."""
    return NextTokenExplorer(text, model=model, **settings)
