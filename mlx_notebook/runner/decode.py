"""The decode loop: one thread, one ``BatchGenerator``, one prompt cache, the active jobs.

Every request goes through mlx-lm's ``BatchGenerator`` (continuous batching:
concurrent cells decode together), except one that arrives to an idle runner:
that one is decoded alone by :mod:`runner.solo` and handed over to the batch,
mid-stream, when a second request comes. Earlier requests that share a prefix
(chat turns) lend their KV cache through mlx-lm's ``LRUPromptCache``. Caches are
in the runner's KV format: runner/kv_cache.py says how each path holds a quantized
or rotating one.

In a runner group every rank runs this loop as a replicated state machine: rank 0
decides each step's :class:`~runner.distributed.Plan`, every rank applies it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import LRUPromptCache, trim_prompt_cache

from ..kv_format import FULL_PRECISION, KvFormat
from ..protocol import DoneReason, KvInfo, KvRequest, ProgressEvent
from . import kv_cache
from .distributed import Admit, Distributed, Plan
from .inspect import InspectJob, InspectQueue
from .jobs import Job, fail_job, finish_job, record_token, start_job
from .mailbox import Mailbox
from .models import LoadedModel
from .sampling import make_request_processors, make_request_sampler, token_logprob
from .solo import SoloDecoder
from .speculative import DraftCache, SpeculativeDecoder

__all__ = ["DecodeSettings", "DecodeLoop"]

_CACHE_KEY = "model"  # one model per runner: every cache entry shares this key
_DRAFT_KEY = "draft"  # the draft model's caches (speculative decoding), beside the model's
_RANK_REPORT_SECONDS = 2.0  # how often rank 0 gathers the other ranks' memory for the status
_KV_REPORT_STEPS = 16  # how often (in loop steps) the KV bytes for the status are measured
# Requests that come in waves (mn.map, a pool of API clients) reach an idle worker a few
# milliseconds apart. Right after batching, an idle worker woken by one request expects the
# rest of its wave (runner/mailbox.py waits a few milliseconds for it), so they are read in
# one forward pass, not the first alone and the others after it.
_RECENT_BATCH_SECONDS = 1.0  # "right after batching": a batch step this recently


@dataclass(frozen=True)
class DecodeSettings:
    max_batch: int = 8  # concurrent generations decoded together
    prefill_step: int = 512  # prompt tokens per forward pass
    prompt_cache_bytes: int | None = None  # None: 10% of memory, at most 1 GiB
    solo: bool = True  # decode a request that runs alone without the batch
    num_draft: int = 3  # most tokens a draft model guesses per round (with a draft model)
    kv: KvFormat = FULL_PRECISION  # quantized / rotating KV caches (runner/kv_cache.py)


class DecodeLoop:
    """Owns the generator, the prompt cache and the active jobs; lives on the worker thread.

    Build it on the thread that runs it: MLX streams belong to the thread that made them.
    """

    def __init__(self, loaded: LoadedModel, mailbox: Mailbox, settings: DecodeSettings,
                 distributed: Distributed | None = None, *,
                 on_speed: Callable[[float], None] = lambda _tps: None,
                 on_ranks: Callable[[list[dict[str, Any]]], None] = lambda _facts: None,
                 draft: LoadedModel | None = None,
                 on_kv: Callable[[KvInfo], None] = lambda _info: None) -> None:
        self.loaded, self.mailbox, self.settings = loaded, mailbox, settings
        self.draft = draft  # a request alone is then decoded speculatively (runner/speculative.py)
        self.distributed = distributed
        # Ranks > 0 follow rank 0's plans; they serve no requests of their own.
        self.follower = distributed is not None and distributed.rank != 0
        self.on_speed, self.on_ranks, self.on_kv = on_speed, on_ranks, on_kv
        self._kv_steps = 0
        self.stream = mx.new_stream(mx.default_device())
        if distributed is not None:
            distributed.stream = self.stream
        eos = sorted(loaded.tokenizer.eos_token_ids)
        self.eos = set(eos)
        self.generator = BatchGenerator(
            loaded.model, stop_tokens=[[t] for t in eos],
            completion_batch_size=settings.max_batch, prefill_batch_size=settings.max_batch,
            prefill_step_size=settings.prefill_step, stream=self.stream)
        budget = settings.prompt_cache_bytes
        if budget is None:
            budget = min(1 << 30, max(64 << 20, mx.get_memory_limit() // 10))
        self.cache = LRUPromptCache(max_size=16, max_bytes=budget)
        self.active: dict[int, Job] = {}  # by generator uid (solo uids are negative)
        self._solo: tuple[SoloDecoder | SpeculativeDecoder, Job] | None = None  # decoded alone
        self._solo_uid = 0  # counts down from -1: never a BatchGenerator uid
        self._removals: list[str] = []  # stopped by a stop string; leave the batch next step
        self._last_report = 0.0
        self._last_batched = -_RECENT_BATCH_SECONDS  # when a step last decoded >= 2 requests
        # A single runner warms the batch only when it first batches (its empty generator):
        # the first request is decoded alone, so a load need not wait for it.
        self._batch_warm = False
        # Look-inside passes (score, lens, attention): one chunk between decode steps.
        self.inspecting = InspectQueue(self.stream, mailbox.forget)

    # ------------------------------------------------------------ set-up

    def warm_up(self) -> None:
        """One tiny generation so the first real request does not pay for lazy set-up."""
        self._batch_warm = True
        (uid,) = self.generator.insert([[0, 0]], max_tokens=[1])
        for _ in range(1000):
            _, responses = self.generator.next()
            if any(r.uid == uid and r.finish_reason for r in responses):
                return
        self.generator.remove([uid])

    def warm_up_solo(self) -> None:
        solo = SoloDecoder(self.loaded.model, -1, rest=[0, 0], cache=None, cached=[],
                           max_tokens=1, sampler=None, processors=[], stop_tokens=set(),
                           stream=self.stream, prefill_step=self.settings.prefill_step)
        while solo.step() is None:
            pass
        if self.draft is not None:
            speculative = SpeculativeDecoder(
                self.loaded.model, self.draft.model, -1, rest=[0, 0], cache=None, cached=[],
                draft=None, prompt=[0, 0], max_tokens=2, sampler=None, stop_tokens=set(),
                stream=self.stream, prefill_step=self.settings.prefill_step,
                num_draft=self.settings.num_draft)
            while not speculative.step():
                pass

    def report_ranks(self) -> None:
        """Gather every rank's facts (a collective: all ranks call it at the same step)."""
        if self.distributed is not None:
            self._last_report = time.monotonic()
            facts = self.distributed.gather(self.distributed.facts())
            if not self.follower:
                self.on_ranks(facts)

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        """Plan, apply, decode one step; until a plan says stop. Then fail what is left."""
        while True:
            plan = self._next_plan()
            if plan.stop:
                break
            self._apply(plan)
            if self.inspecting.busy:
                self.inspecting.step()
            self._kv_steps += 1
            if self._kv_steps >= _KV_REPORT_STEPS:
                self.report_kv()
            if self._solo is not None:
                self._solo_step()
                continue
            if not self.active:
                if not self.inspecting.busy:
                    mx.clear_cache()  # give freed buffers back between bursts
                continue
            if len(self.active) > 1:
                self._last_batched = time.monotonic()
            _, responses = self.generator.next()
            for response in responses:
                job = self.active.get(response.uid)
                if job is not None:
                    self._on_token(job, response)
        self.mailbox.fail_all("runner is shutting down")

    def _next_plan(self) -> Plan:
        """Rank 0 (or a single runner) decides the step; the other ranks receive it."""
        dist = self.distributed
        if self.follower:
            assert dist is not None
            data = dist.share(None)
            return Plan.from_bytes(data) if data else Plan()
        plan = Plan(stop=self.mailbox.stopping.is_set())
        if not plan.stop:
            idle = not self.active and not self.inspecting.busy
            wave = idle and dist is None \
                and time.monotonic() - self._last_batched < _RECENT_BATCH_SECONDS
            for job in self.mailbox.take(block=idle, expect_wave=wave,
                                         most=self.settings.max_batch):
                if isinstance(job, InspectJob):
                    if dist is None:
                        self.inspecting.add(job)
                    else:  # refused by the server already; never part of a plan
                        fail_job(job, "look-inside views do not run in a runner group")
                        self.mailbox.forget(job)
                    continue
                if job.cancel_requested.is_set():
                    self._finish(job, "cancel")
                    continue
                if dist is not None and job.options.temperature > 0 and job.options.seed is None:
                    # Every rank must draw the same token: give the request its own seed.
                    job.options = replace(job.options, seed=secrets.randbits(63))
                plan.admit.append(Admit(job.request_id, job.prompt_tokens, job.options))
            cancelled = [j.request_id for j in self.active.values() if j.cancel_requested.is_set()]
            plan.remove = list(dict.fromkeys(self._removals + cancelled))
            self._removals = []
            plan.free = self.mailbox.take_free_request()  # after take(): a request wakes it
        if dist is not None:
            now = time.monotonic()
            plan.report = now - self._last_report > _RANK_REPORT_SECONDS
            dist.share(None if plan.empty else plan.to_bytes())
        return plan

    def _apply(self, plan: Plan) -> None:
        """The same on every rank: remove, admit, maybe report; the generator stays in step."""
        if plan.remove:
            wanted = set(plan.remove)
            if self._solo is not None and self._solo[1].request_id in wanted:
                solo_job = self._solo[1]
                self._solo = None
                self.active.pop(solo_job.uid, None)
                self._finish(solo_job, "cancel")
            uids = [uid for uid, job in self.active.items() if job.request_id in wanted]
            self.generator.remove(uids)
            for uid in uids:
                self._finish(self.active.pop(uid), "cancel")  # a no-op for jobs already done
        for admit in plan.admit:
            job = self.mailbox.job(admit.request_id)
            if job is None:  # a follower: a shadow job that nobody reads
                job = Job(admit.request_id, admit.tokens, admit.options)
            if self._solo is not None:
                self._hand_over()
            if self.settings.solo and self.distributed is None and not self.active \
                    and len(plan.admit) == 1:
                self._start_solo(job)
            else:
                self._start_batched(job)
        if plan.report:
            self.report_ranks()
        if plan.free:
            self._free()
        if plan.admit or plan.free:
            self.report_kv()

    def _free(self) -> None:
        before = self.cache.nbytes
        self.cache.trim_to(n_sequences=0)
        mx.clear_cache()
        self.mailbox.freed(before)

    # ------------------------------------------------------------ starting a request

    def _prepare(self, job: Job) -> tuple[Any, list[int], int]:
        """The nearest prompt cache, the tokens it lacks and how many it holds."""
        tokens = job.prompt_tokens
        prompt_cache, rest = self.cache.fetch_nearest_cache(_CACHE_KEY, tokens)
        if prompt_cache is not None and not rest:
            # Exact hit: re-feed the last token for logits. A wrapped rotating cache cannot
            # give it back (it is never kept, but a cache that cannot is not lent either).
            if kv_cache.reusable(prompt_cache) and trim_prompt_cache(prompt_cache, 1) == 1:
                rest = tokens[-1:]
            else:
                prompt_cache, rest = None, tokens
        cached = len(tokens) - len(rest)
        start_job(job, self.loaded.tokenizer.detokenizer, cached)
        return prompt_cache, rest, cached

    def _start_batched(self, job: Job) -> None:
        if not self._batch_warm:
            self.warm_up()
        prompt_cache, rest, cached = self._prepare(job)
        (job.uid,) = self.generator.insert(
            [rest], max_tokens=[job.options.max_tokens], caches=[self._for_batch(prompt_cache)],
            all_tokens=[job.prompt_tokens[:cached]], samplers=[make_request_sampler(job.options)],
            logits_processors=[make_request_processors(job.options, job.constraint)])
        self.active[job.uid] = job

    def _start_solo(self, job: Job) -> None:
        """Decode ``job`` alone (runner/solo.py) until another request arrives."""
        prompt_cache, rest, cached = self._prepare(job)
        self._solo_uid -= 1
        job.uid = self._solo_uid
        processors = make_request_processors(job.options, job.constraint)
        if self.draft is not None and not processors:  # processors see one position at a time
            self._solo = (self._speculative(job, prompt_cache, rest, cached), job)
            self.active[job.uid] = job
            return
        solo = SoloDecoder(
            self.loaded.model, job.uid, rest=rest, cache=prompt_cache,
            cached=job.prompt_tokens[:cached], max_tokens=job.options.max_tokens,
            sampler=make_request_sampler(job.options),
            processors=processors, stop_tokens=self.eos,
            stream=self.stream, prefill_step=self.settings.prefill_step, kv=self.settings.kv)
        self._solo = (solo, job)
        self.active[job.uid] = job

    def _speculative(self, job: Job, prompt_cache: Any, rest: list[int], cached: int
                     ) -> SpeculativeDecoder:
        """A speculative decoder for ``job``; the draft's cache from the prompt cache too."""
        assert self.draft is not None
        tokens = job.prompt_tokens
        draft_cache, draft_rest = self.cache.fetch_nearest_cache(_DRAFT_KEY, tokens)
        draft = None
        if draft_cache is not None:
            if not draft_rest:  # an exact hit: the last token is read again, as for the model
                trim_prompt_cache(draft_cache, 1)
                draft_rest = tokens[-1:]
            draft = DraftCache(draft_cache, tokens[:len(tokens) - len(draft_rest)])
        return SpeculativeDecoder(
            self.loaded.model, self.draft.model, job.uid, rest=rest, cache=prompt_cache,
            cached=tokens[:cached], draft=draft, prompt=tokens, max_tokens=job.options.max_tokens,
            sampler=make_request_sampler(job.options), stop_tokens=self.eos, stream=self.stream,
            prefill_step=self.settings.prefill_step, num_draft=self.settings.num_draft)

    def _speculative_step(self, solo: SpeculativeDecoder, job: Job) -> None:
        responses = solo.step()
        job.draft_tokens, job.draft_accepted = solo.proposed, solo.accepted  # before its end
        for response in responses:
            self._on_token(job, response, draft=response.draft)
            if job.finished:
                break
        if solo.prefilling and len(job.prompt_tokens) > self.settings.prefill_step \
                and not self.follower:
            job.events.put(ProgressEvent(processed=len(solo.fed), total=len(job.prompt_tokens)))
        if not solo.todo and solo.draft.tokens:  # it ended on the round's last token
            self.cache.insert_cache(_DRAFT_KEY, list(solo.draft.tokens), solo.draft.cache)

    def _solo_step(self) -> None:
        assert self._solo is not None
        solo, job = self._solo
        if isinstance(solo, SpeculativeDecoder):
            self._speculative_step(solo, job)
            if job.finished:
                self._solo = None
                self.active.pop(job.uid, None)
            return
        response = solo.step()
        if response is not None:
            self._on_token(job, response)
        elif len(job.prompt_tokens) > self.settings.prefill_step and not self.follower:
            # A long prompt: say how far it got (the notebook shows it until the first token).
            job.events.put(ProgressEvent(processed=len(solo.fed), total=len(job.prompt_tokens)))
        if job.finished:  # its end, or a stop string (then the next plan removes nothing)
            self._solo = None
            self.active.pop(job.uid, None)

    def _hand_over(self) -> None:
        """Another request came: move the one decoded alone into the batch, mid-stream."""
        assert self._solo is not None
        solo, job = self._solo
        self._solo = None
        response, rest = solo.hand_over()
        if response is not None:
            self._on_token(job, response)
        self.active.pop(job.uid, None)
        if rest is None or job.finished:
            return
        if not self._batch_warm:
            self.warm_up()
        (job.uid,) = self.generator.insert(
            [rest.prompt], max_tokens=[rest.max_tokens], caches=[self._for_batch(rest.cache)],
            all_tokens=[rest.all_tokens], samplers=[solo.request_sampler],
            logits_processors=[solo.processors])
        self.active[job.uid] = job

    def _for_batch(self, cache: list[Any] | None) -> list[Any] | None:
        return kv_cache.for_batch(cache, self.loaded.model, self.settings.kv)

    # ------------------------------------------------------------ a token, an end

    def _on_token(self, job: Job, response: Any, draft: bool = False) -> None:
        """``response`` is a ``BatchGenerator`` response or a :class:`SoloResponse`;
        ``draft``: the token is a draft model's accepted guess."""
        if self.follower:  # only what keeps the generator and prompt cache as on rank 0
            if response.finish_reason is not None:
                self.active.pop(job.uid, None)
                self._keep_cache(response)
            return
        token = int(response.token)
        logprob = None
        if job.options.logprobs:  # also for the end token: "the model would stop here" is news
            active = job.constraint.active if job.constraint is not None else None
            logprob = token_logprob(response.logprobs, token, job.options.logprobs,
                                    self.loaded.tokenizer.decode,
                                    active.take_first_choice() if active is not None else None)
        is_eos = response.finish_reason == "stop" and token in self.eos
        done = record_token(job, token, response.finish_reason, is_eos=is_eos, logprob=logprob,
                            draft=draft)
        if response.finish_reason is not None:
            self.active.pop(job.uid, None)
            self._keep_cache(response)
        elif done is not None:
            # Done now; it leaves the batch at the next plan, on every rank at once.
            self._removals.append(job.request_id)
        if done is not None:
            self._finish(job, done)

    def _keep_cache(self, response: Any) -> None:
        cache = response.prompt_cache
        if cache is not None and response.all_tokens and kv_cache.reusable(cache):
            self.cache.insert_cache(_CACHE_KEY, list(response.all_tokens),
                                    kv_cache.for_prompt_cache(cache, self.settings.kv))

    def _finish(self, job: Job, reason: DoneReason) -> None:
        speed = finish_job(job, reason, peak_memory=mx.get_peak_memory())
        if speed is not None:
            self.on_speed(speed)
        self.mailbox.forget(job)
        self.report_kv()

    def report_kv(self) -> None:
        """Measure the KV caches for the status: between steps, never per token."""
        self._kv_steps = 0
        if self.follower:
            return
        shares = kv_cache.batch_shares(self.generator)
        requests = []
        for uid, job in self.active.items():
            if job.finished:
                continue
            if self._solo is not None and self._solo[1] is job:
                solo = self._solo[0]
                requests.append(KvRequest(job.request_id, len(solo.fed),
                                          kv_cache.cache_bytes(solo.cache)))
            else:
                tokens = len(job.prompt_tokens) + job.completion_tokens
                requests.append(KvRequest(job.request_id, tokens, shares.get(uid, 0)))
        self.on_kv(KvInfo(format=self.settings.kv.describe(),
                          bytes=sum(r.bytes for r in requests),
                          prompt_cache_bytes=self.cache.nbytes, requests=tuple(requests)))
