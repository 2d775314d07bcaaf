"""The runner's MLX side: one worker thread loads the model, then serves every request.

HTTP handler threads never touch MLX: they put a :class:`Job` on a queue and read
its events. The worker feeds all jobs through mlx-lm's ``BatchGenerator``
(continuous batching: concurrent cells decode together), and reuses the KV cache
of earlier requests that share a prefix (chat turns) through mlx-lm's
``LRUPromptCache`` with a byte budget.
"""

from __future__ import annotations

import os
import queue
import secrets
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any

import mlx.core as mx
import psutil
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import LRUPromptCache, trim_prompt_cache

from ..protocol import (
    ChunkEvent,
    DoneEvent,
    ErrorEvent,
    Event,
    MemoryInfo,
    ProgressEvent,
    SamplingOptions,
)
from .distributed import Admit, Distributed, Plan
from .models import LoadedModel, load_model
from .sampling import make_request_processors, make_request_sampler, token_logprob
from .solo import SoloDecoder
from .stops import StopStringFilter

_CACHE_KEY = "model"  # one model per runner: every cache entry shares this key
_IDLE_POLL_SECONDS = 0.5
_RANK_REPORT_SECONDS = 2.0  # how often rank 0 gathers the other ranks' memory for the status


@dataclass
class Job:
    """One completion request as the worker sees it; events flow back through ``events``."""

    request_id: str
    prompt_tokens: list[int]
    options: SamplingOptions
    arrived: float = field(default_factory=time.perf_counter)
    events: queue.SimpleQueue[Event] = field(default_factory=queue.SimpleQueue)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    # Worker-side state.
    uid: int = -1
    detokenizer: Any = None
    stop_filter: StopStringFilter | None = None
    started: float = 0.0
    first_token_at: float = 0.0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finished: bool = False


class Engine:
    """Owns the model and the worker thread; thread-safe ``submit``/``cancel``/``status``."""

    def __init__(self, spec: str, *, dtype: str | None = None, context_length: int | None = None,
                 max_batch: int = 8, prompt_cache_bytes: int | None = None,
                 prefill_step: int = 512, distributed: Distributed | None = None,
                 batch_only: bool = False) -> None:
        self.spec = spec
        # A request alone is decoded by runner/solo.py unless batch_only (or in a group).
        self.solo_enabled = not batch_only and distributed is None
        self.distributed = distributed
        # Ranks > 0 follow rank 0's plans; they serve no requests of their own.
        self.follower = distributed is not None and distributed.rank != 0
        self.ranks: list[dict[str, Any]] = []  # rank 0: every rank's facts, for the status
        self.dtype = dtype
        self.max_batch = max_batch
        self.prefill_step = prefill_step
        self.requested_context = context_length
        self.prompt_cache_bytes = prompt_cache_bytes
        self.state = "loading"
        self.progress = 0.0
        self.progress_message = "starting"
        self.error: str | None = None
        self.loaded: LoadedModel | None = None
        self.last_tokens_per_second = 0.0
        self.ready_event = threading.Event()  # set when the state leaves "loading"
        self.finished_event = threading.Event()  # set when the worker thread ends
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._jobs: dict[str, Job] = {}
        self._jobs_lock = threading.Lock()
        self._stopping = threading.Event()
        self._free_wanted = threading.Event()  # set by free(); the worker clears it when done
        self._solo: tuple[SoloDecoder, Job] | None = None  # a request decoded alone
        self._solo_uid = 0  # solo uids count down from -1: never a BatchGenerator uid
        self._eos_set: set[int] = set()
        self._stream: Any = None
        self._freed = threading.Condition()
        self._frees_done = 0
        self.last_freed_bytes = 0
        self._removals: list[str] = []  # stopped by a stop string; leave the batch next step
        self._last_report = 0.0
        self._thread = threading.Thread(target=self._main, name="mlx-worker", daemon=True)

    # ------------------------------------------------------------ called from any thread

    def start(self) -> None:
        self._thread.start()

    @property
    def context_length(self) -> int:
        native = self.loaded.context_length if self.loaded else 0
        if self.requested_context:
            return min(self.requested_context, native) if native else self.requested_context
        return native

    def submit(self, job: Job) -> None:
        with self._jobs_lock:
            self._jobs[job.request_id] = job
        self._inbox.put(job)

    def cancel(self, request_id: str) -> bool:
        with self._jobs_lock:
            job = self._jobs.get(request_id)
        if job is None or job.finished:
            return False
        job.cancel_requested.set()
        self._inbox.put(None)  # wake the worker if it sleeps
        return True

    def free(self, timeout: float = 30.0) -> int | None:
        """Drop the reusable prompt cache and MLX's buffer cache, on the worker (every rank).

        Returns the prompt-cache bytes dropped, or None if the worker did not get to it
        within ``timeout`` s (it is busy with a long step; it will still do it).
        """
        with self._freed:
            target = self._frees_done + 1
            self._free_wanted.set()
            self._inbox.put(None)  # wake the worker if it sleeps
            if not self._freed.wait_for(lambda: self._frees_done >= target, timeout):
                return None
            return self.last_freed_bytes

    def active_requests(self) -> int:
        with self._jobs_lock:
            return len(self._jobs)

    def memory(self) -> MemoryInfo:
        weights = self.loaded.weight_bytes if self.loaded else 0
        rss = psutil.Process().memory_info().rss
        return MemoryInfo(active=mx.get_active_memory(), peak=mx.get_peak_memory(),
                          cache=mx.get_cache_memory(), weights=weights,
                          limit=mx.get_memory_limit(), rss=rss)

    def shutdown(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        self._inbox.put(None)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------ worker thread

    def _main(self) -> None:
        try:
            self._main_inner()
        finally:
            self.finished_event.set()

    def _main_inner(self) -> None:
        dist = self.distributed
        try:
            if dist is not None:
                self.progress_message = "connecting to the other ranks"
                dist.connect()
            self.loaded = load_model(self.spec, progress=self._on_load_progress,
                                     dtype=_resolve_dtype(self.dtype),
                                     prepare=dist.prepare if dist is not None else None)
        except Exception as exc:  # the load error is reported, not raised: the process exits
            self.error = " ".join(str(exc).split()) or type(exc).__name__
            self.state = "error"
            self.ready_event.set()
            return
        try:
            self._serve()
        except Exception as exc:  # a bug in the loop, or a lost rank: fail every request, exit
            if dist is None or "[ring]" not in str(exc):
                traceback.print_exc(file=sys.stderr)
            self.error = f"runner worker failed: {type(exc).__name__}: {exc}"
            self.state = "error"
            self.ready_event.set()
            self._fail_all(self.error)

    def _on_load_progress(self, percent: float, message: str) -> None:
        self.progress = max(0.0, min(100.0, float(percent)))
        self.progress_message = message

    def _serve(self) -> None:
        assert self.loaded is not None
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        stream = mx.new_stream(mx.default_device())  # streams are per thread in MLX
        if self.distributed is not None:
            self.distributed.stream = stream
        eos = sorted(tokenizer.eos_token_ids)
        generator = BatchGenerator(
            model, stop_tokens=[[t] for t in eos], completion_batch_size=self.max_batch,
            prefill_batch_size=self.max_batch, prefill_step_size=self.prefill_step, stream=stream)
        budget = self.prompt_cache_bytes
        if budget is None:
            budget = min(1 << 30, max(64 << 20, mx.get_memory_limit() // 10))
        cache = LRUPromptCache(max_size=16, max_bytes=budget)
        self._warm_up(generator)
        self._report_ranks()
        self.progress, self.progress_message = 100.0, "ready"
        self.state = "ready"
        self.ready_event.set()
        active: dict[int, Job] = {}
        eos_set = set(eos)
        self._eos_set, self._stream = eos_set, stream
        self._warm_up_solo(model)
        while True:
            plan = self._next_plan(active)
            if plan.stop:
                break
            self._apply(plan, generator, cache, active)
            if self._solo is not None:
                self._solo_step(cache, active)
                continue
            if not active:
                mx.clear_cache()  # give freed buffers back between bursts
                continue
            _, responses = generator.next()
            for response in responses:
                job = active.get(response.uid)
                if job is not None:
                    self._on_token(job, response, eos_set, cache, active)
        self._fail_all("runner is shutting down")

    def _warm_up_solo(self, model: Any) -> None:
        solo = SoloDecoder(model, -1, rest=[0, 0], cache=None, cached=[], max_tokens=1,
                           sampler=None, processors=[], stop_tokens=set(), stream=self._stream,
                           prefill_step=self.prefill_step)
        while solo.step() is None:
            pass

    # ------------------------------------------------------------ one request alone

    def _start_solo(self, job: Job, cache: LRUPromptCache, active: dict[int, Job]) -> None:
        """Decode ``job`` alone (runner/solo.py) until another request arrives."""
        assert self.loaded is not None
        prompt_cache, rest, cached = self._prepare_job(job, cache)
        self._solo_uid -= 1
        job.uid = self._solo_uid
        solo = SoloDecoder(
            self.loaded.model, job.uid, rest=rest, cache=prompt_cache,
            cached=job.prompt_tokens[:cached], max_tokens=job.options.max_tokens,
            sampler=make_request_sampler(job.options),
            processors=make_request_processors(job.options), stop_tokens=self._eos_set,
            stream=self._stream, prefill_step=self.prefill_step)
        self._solo = (solo, job)
        active[job.uid] = job

    def _solo_step(self, cache: LRUPromptCache, active: dict[int, Job]) -> None:
        assert self._solo is not None
        solo, job = self._solo
        response = solo.step()
        if response is not None:
            self._on_token(job, response, self._eos_set, cache, active)
        elif len(job.prompt_tokens) > self.prefill_step and not self.follower:
            # A long prompt: say how far it got (the notebook shows it until the first token).
            job.events.put(ProgressEvent(processed=len(solo.fed), total=len(job.prompt_tokens)))
        if job.finished:  # its end, or a stop string (then the next plan removes nothing)
            self._solo = None
            active.pop(job.uid, None)

    def _hand_over(self, generator: BatchGenerator, cache: LRUPromptCache,
                   active: dict[int, Job]) -> None:
        """Another request came: move the one decoded alone into the batch, mid-stream."""
        assert self._solo is not None
        solo, job = self._solo
        self._solo = None
        response, rest = solo.hand_over()
        if response is not None:
            self._on_token(job, response, self._eos_set, cache, active)
        active.pop(job.uid, None)
        if rest is None or job.finished:
            return
        (job.uid,) = generator.insert(
            [rest.prompt], max_tokens=[rest.max_tokens], caches=[rest.cache],
            all_tokens=[rest.all_tokens], samplers=[solo.request_sampler],
            logits_processors=[solo.processors])
        active[job.uid] = job

    def _warm_up(self, generator: BatchGenerator) -> None:
        """One tiny generation so the first real request does not pay for lazy set-up."""
        self.progress_message = "warming up"
        (uid,) = generator.insert([[0, 0]], max_tokens=[1])
        for _ in range(1000):
            _, responses = generator.next()
            if any(r.uid == uid and r.finish_reason for r in responses):
                return
        generator.remove([uid])

    def _next_plan(self, active: dict[int, Job]) -> Plan:
        """Rank 0 (or a single runner) decides the step; the other ranks receive it."""
        dist = self.distributed
        if self.follower:
            assert dist is not None
            data = dist.share(None)
            return Plan.from_bytes(data) if data else Plan()
        plan = Plan(stop=self._stopping.is_set())
        if not plan.stop:
            for job in self._take_inbox(block=not active):
                if job.cancel_requested.is_set():
                    self._finish(job, "cancel")
                    continue
                if dist is not None and job.options.temperature > 0 and job.options.seed is None:
                    # Every rank must draw the same token: give the request its own seed.
                    job.options = replace(job.options, seed=secrets.randbits(63))
                plan.admit.append(Admit(job.request_id, job.prompt_tokens, job.options))
            cancelled = [j.request_id for j in active.values() if j.cancel_requested.is_set()]
            plan.remove = list(dict.fromkeys(self._removals + cancelled))
            self._removals = []
            if self._free_wanted.is_set():  # read after the inbox: free() wakes it
                self._free_wanted.clear()
                plan.free = True
        if dist is not None:
            now = time.monotonic()
            plan.report = now - self._last_report > _RANK_REPORT_SECONDS
            dist.share(None if plan.empty else plan.to_bytes())
        return plan

    def _take_inbox(self, block: bool) -> list[Job]:
        try:
            item = self._inbox.get(timeout=_IDLE_POLL_SECONDS) if block else self._inbox.get_nowait()
        except queue.Empty:
            return []
        items = [item]
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return [i for i in items if i is not None]

    def _apply(self, plan: Plan, generator: BatchGenerator, cache: LRUPromptCache,
               active: dict[int, Job]) -> None:
        """The same on every rank: remove, admit, maybe report; the generator stays in step."""
        if plan.remove:
            wanted = set(plan.remove)
            if self._solo is not None and self._solo[1].request_id in wanted:
                solo_job = self._solo[1]
                self._solo = None
                active.pop(solo_job.uid, None)
                self._finish(solo_job, "cancel")
            uids = [uid for uid, job in active.items() if job.request_id in wanted]
            generator.remove(uids)
            for uid in uids:
                self._finish(active.pop(uid), "cancel")  # a no-op for jobs already done
        for admit in plan.admit:
            with self._jobs_lock:
                job = self._jobs.get(admit.request_id)
            if job is None:  # a follower: a shadow job that nobody reads
                job = Job(admit.request_id, admit.tokens, admit.options)
            if self._solo is not None:
                self._hand_over(generator, cache, active)
            if self.solo_enabled and not active and len(plan.admit) == 1:
                self._start_solo(job, cache, active)
            else:
                self._start_job(job, generator, cache, active)
        if plan.report:
            self._report_ranks()
        if plan.free:
            self._free(cache)

    def _free(self, cache: LRUPromptCache) -> None:
        before = cache.nbytes
        cache.trim_to(n_sequences=0)
        mx.clear_cache()
        with self._freed:
            self.last_freed_bytes = before
            self._frees_done += 1
            self._freed.notify_all()

    def _report_ranks(self) -> None:
        if self.distributed is not None:
            self._last_report = time.monotonic()
            facts = self.distributed.gather(self.distributed.facts())
            if not self.follower:
                self.ranks = facts

    def _start_job(self, job: Job, generator: BatchGenerator, cache: LRUPromptCache,
                   active: dict[int, Job]) -> None:
        prompt_cache, rest, cached = self._prepare_job(job, cache)
        tokens = job.prompt_tokens
        (job.uid,) = generator.insert(
            [rest], max_tokens=[job.options.max_tokens], caches=[prompt_cache],
            all_tokens=[tokens[:cached]], samplers=[make_request_sampler(job.options)],
            logits_processors=[make_request_processors(job.options)])
        active[job.uid] = job

    def _prepare_job(self, job: Job, cache: LRUPromptCache) -> tuple[Any, list[int], int]:
        """The nearest prompt cache, the tokens it lacks and how many it holds; job timers."""
        assert self.loaded is not None
        tokens = job.prompt_tokens
        prompt_cache, rest = cache.fetch_nearest_cache(_CACHE_KEY, tokens)
        if prompt_cache is not None and not rest:
            trim_prompt_cache(prompt_cache, 1)  # exact hit: re-feed the last token for logits
            rest = tokens[-1:]
        cached = len(tokens) - len(rest)
        job.cached_tokens = cached
        job.started = time.perf_counter()
        job.detokenizer = self.loaded.tokenizer.detokenizer
        job.stop_filter = StopStringFilter(job.options.stop)
        return prompt_cache, rest, cached

    def _on_token(self, job: Job, response: Any, eos: set[int], cache: LRUPromptCache,
                  active: dict[int, Job]) -> None:
        assert self.loaded is not None and job.stop_filter is not None
        if self.follower:  # only what keeps the generator and prompt cache as on rank 0
            if response.finish_reason is not None:
                active.pop(job.uid, None)
                self._keep_cache(response, cache)
            return
        if not job.first_token_at:
            job.first_token_at = time.perf_counter()
        token = int(response.token)
        is_eos = response.finish_reason == "stop" and token in eos
        logprobs = ()
        if job.options.logprobs:  # also for the end token: "the model would stop here" is news
            logprobs = (token_logprob(response.logprobs, token, job.options.logprobs,
                                      self.loaded.tokenizer.decode),)
        if not is_eos:
            job.completion_tokens += 1
            job.detokenizer.add_token(token)
        if response.finish_reason is not None:
            job.detokenizer.finalize()
        text = job.stop_filter.feed(job.detokenizer.last_segment)
        if text or logprobs:
            job.events.put(ChunkEvent(content=text, tokens=() if is_eos else (token,),
                                      logprobs=logprobs))
        stopped = job.stop_filter.stopped
        if response.finish_reason is not None:
            tail = "" if stopped else job.stop_filter.flush()
            if tail:
                job.events.put(ChunkEvent(content=tail))
            active.pop(job.uid, None)
            self._keep_cache(response, cache)
            self._finish(job, "stop" if stopped or response.finish_reason == "stop" else "length")
        elif stopped:
            # Done now; it leaves the batch at the next plan, on every rank at once.
            self._removals.append(job.request_id)
            self._finish(job, "stop")

    @staticmethod
    def _keep_cache(response: Any, cache: LRUPromptCache) -> None:
        if response.prompt_cache is not None and response.all_tokens:
            cache.insert_cache(_CACHE_KEY, list(response.all_tokens), response.prompt_cache)

    def _finish(self, job: Job, reason: str, error: str | None = None) -> None:
        if job.finished:
            return
        job.finished = True
        now = time.perf_counter()
        first = job.first_token_at or now
        prompt_done = first if job.first_token_at else now
        eval_duration = max(0.0, now - first)
        if job.completion_tokens > 1 and eval_duration > 0:
            self.last_tokens_per_second = (job.completion_tokens - 1) / eval_duration
        job.events.put(DoneEvent(
            done_reason=reason,  # type: ignore[arg-type]
            prompt_tokens=len(job.prompt_tokens), completion_tokens=job.completion_tokens,
            cached_tokens=job.cached_tokens,
            prompt_duration=max(0.0, prompt_done - (job.started or job.arrived)),
            eval_duration=eval_duration,
            time_to_first_token=max(0.0, first - job.arrived) if job.first_token_at else 0.0,
            peak_memory=mx.get_peak_memory(), request_id=job.request_id, error=error))
        with self._jobs_lock:
            self._jobs.pop(job.request_id, None)

    def _fail_all(self, message: str) -> None:
        with self._jobs_lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
        for job in jobs:
            if not job.finished:
                job.finished = True
                job.events.put(ErrorEvent(error=message, request_id=job.request_id))


def _resolve_dtype(dtype: str | None) -> str | None:
    if dtype in (None, "native"):
        return None
    if dtype == "auto":
        from .fastblas import auto_dtype

        return auto_dtype(mx.default_device().type.name.lower())
    return dtype


def runner_device() -> str:
    """A short description of where MLX runs, for the status."""
    device = mx.default_device()
    blas = " + OpenBLAS" if "openblas" in os.environ.get("LD_PRELOAD", "") else ""
    return f"{device.type.name.lower()}{blas}"
