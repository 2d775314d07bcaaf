"""GenerationResult: what one generation produced and how, kept after the cell ran.

Its fields come from the runner's done event where there is one, else from what the
kernel measured itself (a stopped or failed stream never sends one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .protocol import DoneEvent, SamplingOptions

if TYPE_CHECKING:
    from .api import Generation

__all__ = ["FinishReason", "GenerationResult", "make_result"]

FinishReason = Literal["stop", "length", "cancel", "error"]


@dataclass(frozen=True)
class GenerationResult:
    """One finished (or stopped) generation: the text and how it was made."""

    text: str
    model: str
    finish_reason: FinishReason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    time_to_first_token: float = 0.0
    tokens_per_second: float = 0.0
    duration: float = 0.0
    options: SamplingOptions = field(default_factory=SamplingOptions)
    seed: int | None = None
    stopped: bool = False
    name: str = ""
    request_id: str = ""
    prompt: str = ""  # the prompt (or chat message) as sent, after interpolation

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return (f"GenerationResult(text={text!r}, model={self.model!r}, "
                f"finish_reason={self.finish_reason!r}, tokens={self.completion_tokens}, "
                f"tokens_per_second={self.tokens_per_second:.1f}"
                f"{', stopped=True' if self.stopped else ''})")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        from .notebook.display import footer_line

        p.text(f"{self.text}\n{footer_line(self)}")



def make_result(gen: Generation, done: DoneEvent | None, wall: float) -> GenerationResult:
    """The result of ``gen``, from the runner's done event (None when it never came)."""
    opts = gen.request.options
    n = done.completion_tokens if done else 0
    ttft = (done.time_to_first_token if done and done.time_to_first_token else gen._first) or 0.0
    tps = 0.0
    if done and done.eval_duration > 0 and n > 1:
        tps = (n - 1) / done.eval_duration
    elif n and wall > ttft:
        tps = n / max(wall - ttft, 1e-9)
    reason: FinishReason = "cancel" if gen._stopped else (done.done_reason if done else "cancel")
    return GenerationResult(
        text=gen.text, model=getattr(gen.client, "spec", gen.name) or gen.name,
        finish_reason=reason, prompt_tokens=done.prompt_tokens if done else 0,
        completion_tokens=n, cached_tokens=done.cached_tokens if done else 0,
        time_to_first_token=ttft, tokens_per_second=tps, duration=wall, options=opts,
        seed=opts.seed, stopped=gen._stopped, name=gen.name,
        request_id=(done.request_id if done else "") or gen._stream.request_id,
        prompt=gen.request.prompt if gen.request.prompt is not None
        else gen.request.messages[-1].content if gen.request.messages else "",
    )
