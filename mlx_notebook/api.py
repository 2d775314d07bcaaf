"""The plain Python API; every ``%mlx``/``%%mlx`` magic is one call of one of these.

>>> import mlx_notebook as mn
>>> mn.load("demo")                                   # doctest: +SKIP
>>> r = mn.generate("What is the capital of France?", max_tokens=12)  # doctest: +SKIP
>>> r.text, r.tokens_per_second                       # doctest: +SKIP
>>> for piece in mn.stream("Tell me a story"):        # doctest: +SKIP
...     print(piece, end="")

Sampling arguments left as ``None`` take their value from :mod:`mlx_notebook.config`.
The manager (and with it httpx) is imported on first use, never at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from . import protocol, views
from .chat_history import get_history
from .config import get_config
from .data_map import map  # noqa: A004 - mn.map; it calls back into this module lazily
from .errors import GenerationError, InvalidArgumentError
from .generation import Generation, GenerationResult
from .inside import attention, choose, lens, score
from .kv_format import KvFormat
from .prompt_cache_api import cache_prompt, load_prompt_cache, prompt_caches, remove_prompt_cache
from .protocol import ChatMessage, CompletionRequest, SamplingOptions, Status, ToolCall
from .serving import ServeInfo, openai_client, serve
from .structured import output_spec
from .training import TrainResult, fuse, train

if TYPE_CHECKING:
    from .control.connection import RunnerConnection
    from .control.manager import RunnerInfo, RunnerManager
    from .control.remote import RemoteRunner

__all__ = [
    "Generation", "GenerationResult", "attention", "chat", "choose", "connect", "conversation",
    "free_memory", "generate", "lens", "load", "ps", "score",
    "reset_chat", "status", "stream", "tokenize", "unload", "use",
    "map", "serve", "openai_client", "ServeInfo",
    "train", "fuse", "TrainResult",
    "cache_prompt", "load_prompt_cache", "prompt_caches", "remove_prompt_cache",
]

REMOTE_TOKEN_ENV = "MLX_REMOTE_TOKEN"  # where connect() looks for a remote runner's token


# ---------------------------------------------------------------- helpers


def _manager() -> RunnerManager:
    from .control.manager import get_manager

    return get_manager()


def sampling_options(*, max_tokens: int | None = None, temperature: float | None = None,
                     top_p: float | None = None, top_k: int | None = None,
                     min_p: float | None = None, seed: int | None = None,
                     stop: str | Sequence[str] | None = None, repeat_penalty: float | None = None,
                     repeat_last_n: int | None = None, presence_penalty: float | None = None,
                     frequency_penalty: float | None = None,
                     logit_bias: Mapping[int, float] | None = None,
                     logprobs: int | None = None) -> SamplingOptions:
    """The options a generation sends: the config's defaults, then those given (None: default).

    A sampled run without a seed gets one picked here, so its result says how to
    reproduce it. The teaching tools build their requests with this too.
    """
    if isinstance(stop, str):
        stop = [stop]
    opts = get_config().options(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        seed=seed, stop=tuple(stop) if stop else None, repeat_penalty=repeat_penalty,
        repeat_last_n=repeat_last_n, presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty, logprobs=logprobs,
        logit_bias=tuple(sorted(logit_bias.items())) if logit_bias else None)
    if opts.seed is None and opts.temperature > 0:
        opts = dataclasses.replace(opts, seed=random.randrange(2**31))
    return opts


def chat_messages(prompt: str, system: str | None = None) -> tuple[ChatMessage, ...]:
    """The messages a plain prompt becomes: the system prompt (``None``: the config's), the prompt."""
    sys_text = get_config().system if system is None else system
    head = (ChatMessage("system", sys_text),) if sys_text else ()
    return (*head, ChatMessage("user", prompt))


def completion_request(prompt: str, options: SamplingOptions, *, system: str | None = None,
                       raw: bool = False,
                       messages: Sequence[ChatMessage] | None = None) -> CompletionRequest:
    """What :func:`stream` sends: ``messages`` as given, a raw prompt as is, or chat messages."""
    _check_raw(raw, system)
    if messages is not None:
        return CompletionRequest(messages=tuple(messages), options=options)
    if raw:
        return CompletionRequest(prompt=prompt, options=options)
    return CompletionRequest(messages=chat_messages(prompt, system), options=options)


def get_client(model: str | RunnerConnection | None = None) -> RunnerConnection:
    """The runner called ``model`` (None: the default one); a runner object is returned as is.

    For tools that talk to a runner directly (the teaching views), by name or by object.
    """
    if model is not None and not isinstance(model, str):
        return model
    return _manager().get(model)


def _check_raw(raw: bool, system: str | None) -> None:
    if raw and system:
        raise InvalidArgumentError(RAW_WITH_SYSTEM, field="system")


# Argument checks: the API refuses what cannot work, so a function and its magic
# refuse the same input. A message names arguments through ``names`` (default: the
# keywords), so the magics can say ``--ranks`` where the API says ``ranks``.
ArgNames = Mapping[str, str]
ARG_NAMES: ArgNames = {"context_length": "context_length", "ranks": "ranks", "hosts": "hosts",
                       "backend": "backend", "token_env": "token_env", "name": "a name",
                       "all": "all=True", "draft": "draft", "num_draft": "num_draft"}
CONTEXT_NOT_POSITIVE = "{context_length} must be a positive number of tokens"
RANKS_BELOW_ONE = "{ranks} must be 1 or more"
RANKS_AND_HOSTS = "give {ranks} or {hosts}, not both (the hostfile sets the number of ranks)"
BACKEND_ALONE = "{backend} goes with {hosts} or {ranks}"
TOKEN_ENV_NOT_A_NAME = ("{token_env} needs a variable name, got {value!r} "
                        "(put the token in that variable, not here)")
TOKEN_ENV_UNSET = ("environment variable {value} is not set or is empty: set it to the "
                   "runner's {token} (os.environ[{value!r}] = getpass.getpass())")
NAME_AND_ALL = "give {name} or {all}, not both"
RAW_WITH_SYSTEM = "system has no effect with raw=True (the prompt is sent as is)"
NUM_DRAFT_BELOW_ONE = "{num_draft} must be 1 or more (tokens the draft model guesses per round)"
NUM_DRAFT_ALONE = "{num_draft} goes with {draft} (a draft model to guess with)"
DRAFT_WITH_KV = ("a {draft} model goes with full-precision, unbounded KV caches only (its "
                 "rounds rewind the caches): drop kv_bits/max_kv, or the draft")
DRAFT_IN_GROUP = ("a {draft} model does not work with {ranks}/{hosts} yet (speculative decoding "
                  "runs in one process): load the model alone")


def _invalid(template: str, field: str, names: ArgNames | None, **values: Any) -> InvalidArgumentError:
    return InvalidArgumentError(template.format(**{**ARG_NAMES, **(names or {}), **values}),
                                field=field)


def check_load_args(*, context_length: int | None = None, ranks: int = 1,
                    hosts: str | None = None, backend: str | None = None,
                    draft: str | None = None, num_draft: int | None = None,
                    kv_bits: int | None = None, kv_group_size: int | None = None,
                    kv_start: int | None = None, max_kv: int | None = None,
                    names: ArgNames | None = None) -> KvFormat:
    """Refuse :func:`load` arguments that cannot go together (``InvalidArgumentError``).

    Returns the KV-cache format the arguments ask for.
    """
    if context_length is not None and context_length < 1:
        raise _invalid(CONTEXT_NOT_POSITIVE, "context_length", names)
    if ranks < 1:
        raise _invalid(RANKS_BELOW_ONE, "ranks", names)
    if hosts is not None and ranks != 1:
        raise _invalid(RANKS_AND_HOSTS, "hosts", names)
    if backend is not None and hosts is None and ranks == 1:
        raise _invalid(BACKEND_ALONE, "backend", names)
    if num_draft is not None and num_draft < 1:
        raise _invalid(NUM_DRAFT_BELOW_ONE, "num_draft", names)
    if num_draft is not None and draft is None:
        raise _invalid(NUM_DRAFT_ALONE, "num_draft", names)
    if draft is not None and (ranks > 1 or hosts):
        raise _invalid(DRAFT_IN_GROUP, "draft", names)
    if draft is not None and (kv_bits is not None or max_kv is not None):
        raise _invalid(DRAFT_WITH_KV, "draft", names)
    return KvFormat.build(kv_bits=kv_bits, kv_group_size=kv_group_size, kv_start=kv_start,
                          max_kv=max_kv, ranks=ranks, sharded=hosts is not None, names=names)


def check_connect_args(*, token_env: str, names: ArgNames | None = None) -> None:
    """Refuse a :func:`connect` ``token_env`` that is not a variable name (a pasted token?)."""
    if not token_env.isidentifier():
        raise _invalid(TOKEN_ENV_NOT_A_NAME, "token_env", names, value=token_env)


def check_unload_args(*, name: str | None = None, all: bool = False,  # noqa: A002
                      names: ArgNames | None = None) -> None:
    """Refuse :func:`unload` given both a name and ``all=True``."""
    if all and name:
        raise _invalid(NAME_AND_ALL, "all", names)


# ---------------------------------------------------------------- public functions


def load(model: str = "demo", *, name: str | None = None, context_length: int | None = None,
         force: bool = False, show: bool = False, ranks: int = 1, shard: str = "tensor",
         hosts: str | None = None, backend: str | None = None,
         on_progress: Callable[[Status], None] | None = None,
         adapter: str | os.PathLike[str] | None = None, draft: str | None = None,
         num_draft: int | None = None, kv_bits: int | None = None,
         kv_group_size: int | None = None, kv_start: int | None = None,
         max_kv: int | None = None) -> RunnerConnection:
    """Start a runner for ``model`` (``demo``, a Hugging Face id, a folder or a .gguf file).

    ``show=True`` draws a progress bar (text in a terminal) while it loads; ``ranks=2``
    shards the model over two local processes, ``hosts="hosts.json"`` (an mlx.launch
    hostfile, or IPs separated by commas) over those machines (``shard``: tensor or
    pipeline; see docs/distributed.md). ``adapter`` applies a fine-tuned adapter folder
    (``mn.train``'s, or ``mlx_lm.lora``'s) on top. Arguments that cannot go together raise
    :class:`~mlx_notebook.errors.InvalidArgumentError` before anything starts.

    ``draft`` (a small model of the same tokenizer, any spec ``model`` takes) turns on
    speculative decoding: the draft guesses up to ``num_draft`` tokens a round (default
    3; after a miss, one more than it got right), the model checks them in one pass. A
    request that runs alone decodes so; requests running together batch as usual,
    without the draft. Greedy text is the same as without a draft; sampled text follows
    the same distribution, but a ``seed`` gives other text than without the draft (the
    random stream advances differently). Requests with a repetition/presence penalty or
    a constraint decode without the draft. A draft of another tokenizer fails the load
    (:class:`~mlx_notebook.errors.RunnerStartError`).

    ``kv_bits=8`` (or 4) holds the KV cache quantized, in groups of ``kv_group_size``
    (64), once a request's cache reaches ``kv_start`` tokens (256); ``max_kv=N`` bounds it
    to a rotating cache of N tokens (older ones are dropped, the first 4 kept). The
    status shows the format and its bytes (mlx_notebook/kv_format.py says more). A draft
    model goes with neither (its rounds rewind full-precision caches).

    >>> mn.load("demo", draft="/models/tiny-smollm", num_draft=4)   # doctest: +SKIP
    """
    kv = check_load_args(context_length=context_length, ranks=ranks, hosts=hosts,
                         backend=backend, draft=draft, num_draft=num_draft, kv_bits=kv_bits,
                         kv_group_size=kv_group_size, kv_start=kv_start, max_kv=max_kv)
    adapter_dir = None if adapter is None else _check_adapter(adapter, ranks, hosts)
    manager = _manager()
    return _with_progress(name or model, show, on_progress, lambda report, say: manager.load(
        model, name, context_length=context_length, force=force, on_progress=report,
        on_message=say, ranks=ranks, shard=shard, hosts=hosts, backend=backend,
        adapter=adapter_dir, draft=_local_or_spec(draft), num_draft=num_draft, kv=kv))


def _local_or_spec(spec: str | None) -> str | None:
    """A draft that names a local folder or file, made absolute (the runner's cwd may differ)."""
    if spec is None:
        return None
    path = os.path.expanduser(spec)
    return os.path.abspath(path) if os.path.exists(path) else spec


def _check_adapter(adapter: str | os.PathLike[str], ranks: int, hosts: str | None) -> str:
    folder = os.path.abspath(os.path.expanduser(os.fspath(adapter)))
    if ranks > 1 or hosts:
        raise InvalidArgumentError("an adapter cannot be applied to a sharded model yet "
                                   "(drop ranks/hosts, or fuse it first: mn.fuse)",
                                   field="adapter")
    for need in ("adapter_config.json", "adapters.safetensors"):
        if not os.path.isfile(os.path.join(folder, need)):
            raise InvalidArgumentError(f"adapter folder {folder} has no {need}",
                                       field="adapter")
    return folder


def connect(url: str, *, token_env: str = REMOTE_TOKEN_ENV, name: str | None = None,
            show: bool = False, on_progress: Callable[[Status], None] | None = None,
            ) -> RemoteRunner:
    """Attach to a runner already running at ``url`` (maybe on another machine).

    The token is read from the environment variable ``token_env``, so it never lands
    in the notebook. The runner is then used like a loaded one; ``unload`` only
    disconnects (it keeps running). Its name defaults to ``MODEL@HOST``.

    >>> os.environ["MLX_REMOTE_TOKEN"] = getpass.getpass()      # doctest: +SKIP
    >>> mn.connect("http://10.0.0.5:50123")                      # doctest: +SKIP
    """
    check_connect_args(token_env=token_env)
    token = os.environ.get(token_env, "")
    if not token:
        raise _invalid(TOKEN_ENV_UNSET, "token_env", None, value=token_env,
                       token=protocol.TOKEN_ENV)
    manager = _manager()
    return _with_progress(name or url, show, on_progress, lambda report, _say: manager.connect(
        url, token=token, name=name, token_source=f"${token_env}", on_progress=report))


_Client = TypeVar("_Client", bound="RunnerConnection")


def _with_progress(label: str, show: bool, on_progress: Callable[[Status], None] | None,
                   start: Callable[[Callable[[Status], None] | None, Callable[[str], None] | None],
                                   _Client]) -> _Client:
    """Run ``start(on_progress, on_message)``, with a progress view when ``show``."""
    if not show:
        return start(on_progress, None)
    with views.current().load(label) as progress:
        def report(status: Status) -> None:
            progress.update(status)
            if on_progress is not None:
                on_progress(status)

        client = start(report, progress.message)
        progress.done(client.status())
    return client


def unload(name: str | None = None, *, all: bool = False) -> None:  # noqa: A002
    """Stop one runner (the default one when ``name`` is None), or every runner."""
    check_unload_args(name=name, all=all)
    manager = _manager()
    if all:
        manager.unload_all()
        get_history().reset()
    else:
        resolved = manager.get(name).name
        manager.unload(resolved)
        get_history().reset(resolved)


def use(name: str) -> None:
    """Make ``name`` the model that calls without ``model=`` use."""
    _manager().use(name)


def stream(prompt: str, *, model: str | None = None, system: str | None = None,
           raw: bool = False, messages: Sequence[ChatMessage] | None = None,
           max_tokens: int | None = None, temperature: float | None = None,
           top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
           seed: int | None = None, stop: Sequence[str] | None = None,
           repeat_penalty: float | None = None, schema: Any = None, json: bool = False,
           choices: Sequence[str] | str | None = None, regex: str | None = None,
           think: bool | None = None, tools: Sequence[dict[str, Any]] | None = None) -> Generation:
    """Start a generation and return it; iterate it for the text as it is made.

    The chat template is applied unless ``raw=True`` (then ``prompt`` goes as is).
    Structured output: ``schema`` (a pydantic model class or a JSON-schema dict),
    ``json=True`` (any JSON value), ``choices`` (one of these strings) or ``regex`` (a
    full match; :data:`~mlx_notebook.structured.REGEX_DIALECT`): the runner masks every
    token that would leave it, and ``result.value`` is the parsed, validated answer.
    """
    _check_raw(raw, system)
    output = output_spec(schema=schema, json=json, choices=choices, regex=regex)
    manager = _manager()
    client = manager.get(model)
    opts = sampling_options(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                            top_k=top_k, min_p=min_p, seed=seed, stop=stop,
                            repeat_penalty=repeat_penalty)
    request = completion_request(prompt, opts, system=system, raw=raw, messages=messages)
    if output is not None:
        request = dataclasses.replace(request, constraint=output.constraint)
    if think is not None or tools:  # a thinking model's enable_thinking; tool schemas
        if request.messages is None:
            raise InvalidArgumentError("think and tools need the chat template (not raw=True)",
                                       field="think" if think is not None else "tools")
        request = dataclasses.replace(request, think=think, tools=tuple(tools) if tools else None)

    def ended(_result: GenerationResult) -> None:
        with contextlib.suppress(Exception):  # bookkeeping must never hide the answer
            manager.touch(client.name)
        manager.notify("generated", client.name)

    gen = Generation(client, request, on_end=ended, output=output)
    manager.notify("generating", client.name)
    return gen


def generate(prompt: str, *, show: bool = False, format: str | None = None,  # noqa: A002
             on_interrupt: Literal["raise", "return"] = "raise", **kwargs: Any) -> GenerationResult:
    """Generate a whole answer; takes the same arguments as :func:`stream`.

    ``show=True`` streams the text into the cell (prints in a terminal) with a
    footer line. On KeyboardInterrupt the generation is cancelled on the runner;
    ``on_interrupt="return"`` then returns the partial result (``stopped=True``)
    instead of raising.
    """
    return _run(stream(prompt, **kwargs), show=show, format=format, on_interrupt=on_interrupt)


def _run(gen: Generation, *, show: bool, format: str | None,  # noqa: A002
         on_interrupt: Literal["raise", "return"]) -> GenerationResult:
    view = None
    if show:
        cfg = get_config()
        if format is None and gen.output is not None and gen.output.is_json:
            format = "json"  # noqa: A001 - pretty-printed as it streams
        view = views.current().stream(format or cfg.format, cfg.updates_per_second, cfg.footer)
        view.start()
        gen.on_prefill = view.prefill
        gen.on_thinking = getattr(view, "think", None)  # a thinking model's block
    interrupted = False
    try:
        with gen:
            for piece in gen:
                if view is not None:
                    view.append(piece)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        if view is not None and gen.result is not None:
            view.finish(gen.result, footer=False)
        raise
    assert gen.result is not None
    if view is not None:
        view.finish(gen.result)
    if interrupted and on_interrupt == "raise":
        raise KeyboardInterrupt
    return gen.result


CONTEXT_NEARLY_FULL = ("[context] this conversation holds {used:,} of the model's {context:,} "
                       "tokens: the answer may be cut to {room:,} tokens. Start over with "
                       "%mlx chat --reset (mn.reset_chat()), or drop the oldest turns with "
                       "--drop-oldest (drop_oldest=True).")
CONTEXT_NEXT_TURN = ("[context] this conversation now holds {used:,} of the model's {context:,} "
                     "tokens: at this rate the next turn will not fit. Start over with "
                     "%mlx chat --reset (mn.reset_chat()), or drop the oldest turns with "
                     "--drop-oldest (drop_oldest=True).")
CONTEXT_FULL = ("this conversation ({used:,} tokens) no longer fits the model's context of "
                "{context:,} tokens: start over with %mlx chat --reset (mn.reset_chat()), or "
                "drop the oldest turns with --drop-oldest (drop_oldest=True)")
CONTEXT_DROPPED = ("[context] dropped the {n} oldest turn{s} of this conversation to fit the "
                   "model's context ({used:,} of {context:,} tokens now)")


def _say(text: str, show: bool) -> None:
    """A line before the answer: printed into the cell when shown, else a warning."""
    if show:
        print(text)
    else:
        import warnings

        warnings.warn(text, UserWarning, stacklevel=3)


def _fit_context(name: str, message: str, sys_text: str | None, max_tokens: int,
                 drop_oldest: bool, show: bool) -> tuple[list[ChatMessage], int]:
    """The messages of the next turn, checked against the context before anything is sent.

    One tokenize call a turn: a conversation that would cut the answer short says so,
    one that cannot fit at all fails here (not with the runner's 400 on every turn),
    and ``drop_oldest`` drops the oldest turns until it fits (said in the cell).
    """
    history = get_history()
    msgs = history.prompt(name, message, system=sys_text)
    client = _manager().get(name)
    context = (client.last_status or client.status()).context_length  # the runner's own
    if not context:
        return msgs, 0
    used = len(client.tokenize(messages=msgs).tokens)
    want = min(max_tokens, context)
    dropped = 0
    while drop_oldest and used + want > context and history.drop_oldest(name):
        dropped += 1
        msgs = history.prompt(name, message, system=sys_text)
        used = len(client.tokenize(messages=msgs).tokens)
    if dropped:
        _say(CONTEXT_DROPPED.format(n=dropped, s="s" if dropped > 1 else "", used=used,
                                    context=context), show)
    if used >= context:
        raise GenerationError(CONTEXT_FULL.format(used=used, context=context))
    if used + want > context:
        _say(CONTEXT_NEARLY_FULL.format(used=used, context=context, room=context - used), show)
    return msgs, context


def _warn_next_turn(name: str, result: GenerationResult, context: int, show: bool) -> None:
    """After an answer: say so when another turn of the average size would not fit."""
    turns = sum(m.role == "user" for m in get_history().messages(name))
    used = result.prompt_tokens + result.completion_tokens
    if context and turns and used + used / turns > context:
        _say(CONTEXT_NEXT_TURN.format(used=used, context=context), show)


def chat(message: str, *, model: str | None = None, system: str | None = None,
         show: bool = False, format: str | None = None,  # noqa: A002
         on_interrupt: Literal["raise", "return"] = "raise", drop_oldest: bool = False,
         tools: Sequence[Callable[..., Any]] | None = None, max_tool_rounds: int = 5,
         confirm: bool | Callable[[ToolCall], bool] = False,
         **kwargs: Any) -> GenerationResult:
    """One turn of the conversation kept for ``model``; ``system`` sets its system prompt.

    ``tools``: Python functions the model may call (schemas from their signatures); each
    call runs here with validated arguments, its result (or its error) goes back to the
    model, until it answers or ``max_tool_rounds`` rounds were made; ``confirm=True`` asks
    before each call. ``think=False`` turns a thinking model's thinking off.

    A stopped answer is kept (it is what you saw); a failed turn is not recorded.
    Before a turn that would outgrow the model's context, a line says so (a warning
    when not ``show``); ``drop_oldest=True`` drops the oldest turns until it fits.
    """
    name = _manager().get(model).name
    sys_text = system if system is not None else (get_config().system or None)
    history = get_history()
    max_tokens = kwargs.get("max_tokens") or get_config().options().max_tokens
    msgs, context = _fit_context(name, message, sys_text, max_tokens, drop_oldest, show)
    if tools:
        from .tool_loop import chat_with_tools

        return chat_with_tools(stream, _run, message, name=name, messages=msgs, tools=tools,
                               max_tool_rounds=max_tool_rounds, confirm=confirm, show=show,
                               format=format, on_interrupt=on_interrupt, sys_text=sys_text,
                               **kwargs)
    gen = stream(message, model=name, messages=msgs, **kwargs)
    try:
        result = _run(gen, show=show, format=format, on_interrupt=on_interrupt)
    except KeyboardInterrupt:
        if gen.result is not None and gen.result.text:
            history.record(name, message, gen.result.text, system=sys_text)
        raise
    if result.text or not result.stopped:
        history.record(name, message, result.text, system=sys_text)
        _warn_next_turn(name, result, context, show)
    return result


def reset_chat(model: str | None = None, *, all: bool = False) -> None:  # noqa: A002
    """Forget the conversation with ``model`` (the default one), or all of them."""
    if all:
        get_history().reset()
    else:
        get_history().reset(_manager().get(model).name)


def conversation(model: str | None = None) -> list[ChatMessage]:
    """The messages of the conversation with ``model`` so far."""
    return get_history().messages(_manager().get(model).name)


def chat_history_markdown(model: str | None = None) -> str:
    """The conversation with ``model`` as Markdown (what ``%mlx chat --history`` shows)."""
    return get_history().render(_manager().get(model).name)


def default_model() -> str | None:
    """Name of the model used when ``model=`` is left out (None if nothing is loaded)."""
    return _manager().default


def tokenize(text: str, *, model: str | None = None) -> protocol.TokenizeResponse:
    """Token ids and their text pieces, as the model's tokenizer splits ``text``."""
    return _manager().get(model).tokenize(text)


def status(model: str | None = None) -> Status:
    """The runner's live status: state, progress, memory, context length, speed."""
    return _manager().get(model).status()


def free_memory(model: str | None = None) -> protocol.FreeResponse:
    """Drop a runner's reusable prompt cache and MLX's buffer cache; the model stays loaded.

    Later prompts are read from scratch once (no prompt-cache hits). In a runner
    group every rank frees its own share.
    """
    manager = _manager()
    client = manager.get(model)
    freed = client.free_memory()
    manager.notify("freed", client.name)
    return freed


def ps() -> list[RunnerInfo]:
    """One row per runner: name, model, state, memory, pid, idle time."""
    return _manager().list()
