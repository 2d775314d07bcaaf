"""A request's life as events: tokens in, ``ChunkEvent``/``DoneEvent``/``ErrorEvent`` out.

This is pure bookkeeping (no MLX, no threads): the decode loop says which token a
request got and why it ended; the functions here turn that into what the client
reads (text cut at stop strings, log-probabilities, timings). Both decode paths
(solo and batch) and every rank of a group go through the same functions.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..protocol import (
    ChunkEvent,
    DoneEvent,
    DoneReason,
    ErrorEvent,
    Event,
    SamplingOptions,
    TokenLogprob,
)
from .stops import StopStringFilter

__all__ = ["Job", "start_job", "record_token", "finish_job", "fail_job", "keep_leading_space"]


@dataclass
class Job:
    """One completion request as the worker sees it; events flow back through ``events``."""

    request_id: str
    prompt_tokens: list[int]
    options: SamplingOptions
    arrived: float = field(default_factory=time.perf_counter)
    events: queue.SimpleQueue[Event] = field(default_factory=queue.SimpleQueue)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    raw: bool = False  # a raw prompt's continuation: its text keeps a leading space
    constraint: Any = None  # a runner.constraints.CompiledConstraint: masks every step
    # A chat answer of a model that thinks or calls tools: its text split by state
    # (runner/reasoning.py), tool calls parsed by ``parse_tools`` (text -> events).
    splitter: Any = None
    parse_tools: Any = None
    # Worker-side state.
    uid: int = -1
    detokenizer: Any = None  # mlx-lm's streaming detokenizer, one per request
    stop_filter: StopStringFilter | None = None
    started: float = 0.0
    first_token_at: float = 0.0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finished: bool = False
    thinking_tokens: int = 0
    tool_text: str = ""  # the tool call being read (its tags stripped)
    draft_tokens: int = 0  # a draft model's guesses checked (runner/speculative.py)
    draft_accepted: int = 0


def start_job(job: Job, detokenizer: Any, cached_tokens: int) -> None:
    """The request starts decoding now, with ``cached_tokens`` of its prompt already cached."""
    job.cached_tokens = cached_tokens
    job.started = time.perf_counter()
    job.detokenizer = keep_leading_space(detokenizer) if job.raw else detokenizer
    job.stop_filter = StopStringFilter(job.options.stop)


def _unchanged(text: str) -> str:
    return text


def keep_leading_space(detokenizer: Any) -> Any:
    """Make one of mlx-lm's streaming detokenizers keep the first space of its text.

    They drop it (right for a chat answer); a continuation of "The capital of France
    is" must read " Paris", or prompt + text reads "isParis". Set once per request.
    """
    if hasattr(detokenizer, "trim_space"):  # SPMStreamingDetokenizer's own switch
        detokenizer.trim_space = False
    elif hasattr(detokenizer, "_maybe_trim_space"):  # BPEStreamingDetokenizer: no switch
        detokenizer._maybe_trim_space = _unchanged
    return detokenizer


def record_token(job: Job, token: int, finish_reason: str | None, *, is_eos: bool,
                 logprob: TokenLogprob | None, draft: bool = False) -> DoneReason | None:
    """Emit what ``token`` adds to the text; the reason the request is done now, if it is.

    ``finish_reason`` is the decoder's ("stop": an end token, "length": the budget);
    a stop string in the text also ends the request (reason "stop"). ``draft``: the
    token is a draft model's guess that the model accepted (flagged in its chunk).
    """
    assert job.stop_filter is not None, "start_job() first"
    if not job.first_token_at:
        job.first_token_at = time.perf_counter()
    if not is_eos:
        job.completion_tokens += 1
        job.detokenizer.add_token(token)
    if finish_reason is not None:
        job.detokenizer.finalize()
    text = job.stop_filter.feed(job.detokenizer.last_segment)
    logprobs = (logprob,) if logprob is not None else ()
    if job.splitter is not None:
        return _record_split(job, text, token, finish_reason, is_eos=is_eos, logprobs=logprobs,
                             draft=draft)
    if text or logprobs:
        job.events.put(ChunkEvent(content=text, tokens=() if is_eos else (token,),
                                  logprobs=logprobs, draft=(True,) if draft and not is_eos else ()))
    stopped = job.stop_filter.stopped
    if finish_reason is None:
        return "stop" if stopped else None
    tail = "" if stopped else job.stop_filter.flush()
    if tail:
        job.events.put(ChunkEvent(content=tail))
    return "stop" if stopped or finish_reason == "stop" else "length"


def _record_split(job: Job, text: str, token: int, finish_reason: str | None, *, is_eos: bool,
                  logprobs: tuple[TokenLogprob, ...], draft: bool = False) -> DoneReason | None:
    """:func:`record_token` for a split answer: thinking and answer chunks apart, tool calls
    as events when their text ends; the token goes with the token's last piece of text."""
    splitter = job.splitter
    segments = splitter.feed(text)
    assert job.stop_filter is not None
    stopped = job.stop_filter.stopped
    if finish_reason is not None:
        tail = "" if stopped else job.stop_filter.flush()
        if tail:
            segments += splitter.feed(tail)
        segments.append(splitter.flush())
    if not is_eos and (splitter.state == "reasoning"
                       or any(s == "reasoning" and t for s, t in segments)):
        job.thinking_tokens += 1
    tokens = () if is_eos else (token,)
    flags = (True,) if draft and tokens else ()
    last = max((i for i, (s, t) in enumerate(segments) if t and s != "tool"), default=-1)
    for i, (state, piece) in enumerate(segments):
        if state == "tool":
            job.tool_text += piece
            continue
        if job.tool_text:  # the call's text ended: parse it now, before what follows
            _emit_tools(job)
        if piece:
            job.events.put(ChunkEvent(content=piece, tokens=tokens if i == last else (),
                                      logprobs=logprobs if i == last else (),
                                      thinking=state == "reasoning",
                                      draft=flags if i == last else ()))
    if finish_reason is not None and job.tool_text:
        _emit_tools(job)  # a call cut by the end: parse what came (the parser says if it fails)
    if last < 0 and logprobs:
        job.events.put(ChunkEvent(content="", tokens=tokens, logprobs=logprobs,
                                  thinking=splitter.state == "reasoning", draft=flags))
    if finish_reason is None:
        return "stop" if stopped else None
    return "stop" if stopped or finish_reason == "stop" else "length"


def _emit_tools(job: Job) -> None:
    text, job.tool_text = job.tool_text, ""
    if text.strip() and job.parse_tools is not None:
        for event in job.parse_tools(text):
            job.events.put(event)


def finish_job(job: Job, reason: DoneReason, *, peak_memory: int,
               error: str | None = None) -> float | None:
    """Send the job's ``DoneEvent`` (once); returns its decode speed in tokens/s, if known."""
    if job.finished:
        return None
    job.finished = True
    now = time.perf_counter()
    first = job.first_token_at or now
    eval_duration = max(0.0, now - first)
    job.events.put(DoneEvent(
        done_reason=reason,
        prompt_tokens=len(job.prompt_tokens), completion_tokens=job.completion_tokens,
        cached_tokens=job.cached_tokens,
        prompt_duration=max(0.0, first - (job.started or job.arrived)),
        eval_duration=eval_duration,
        time_to_first_token=max(0.0, first - job.arrived) if job.first_token_at else 0.0,
        peak_memory=peak_memory, request_id=job.request_id, error=error,
        thinking_tokens=job.thinking_tokens,
        in_thinking=job.splitter is not None and job.splitter.state == "reasoning",
        draft_tokens=job.draft_tokens, draft_accepted=job.draft_accepted))
    if job.completion_tokens > 1 and eval_duration > 0:
        return (job.completion_tokens - 1) / eval_duration  # the first token is the prefill's
    return None


def fail_job(job: Job, message: str) -> None:
    """End a job that the worker can no longer serve (it failed, or the runner stops)."""
    if not job.finished:
        job.finished = True
        job.events.put(ErrorEvent(error=message, request_id=job.request_id))
