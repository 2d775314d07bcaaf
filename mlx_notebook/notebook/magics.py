"""The ``%mlx`` line magic and the ``%%mlx`` cell magic: parse, call :mod:`mlx_notebook.api`, show.

Usage::

    %load_ext mlx_notebook
    %mlx load demo                       # progress bar, then a status line
    %mlx connect http://10.0.0.5:50123 --token-env MLX_REMOTE_TOKEN   # a runner started by hand
    %%mlx generate --max-tokens 32 -o r  # the cell is the prompt; r: GenerationResult
    What is the capital of {country}?
    %%mlx chat --system "Be brief."      # one turn of the conversation with the model
    Hi!
    %mlx status                          # live status and memory widget

Every subcommand is one row of :data:`SUBCOMMANDS` (name, summary, grammar, cell
rule, handler), so ``%mlx help``, the dispatch and the cell checks read one table.
Every subcommand has argparse help (``%mlx help load``, ``%mlx load -h``). Bad
arguments raise a one-line ``UsageError``; our own errors (no model loaded, a
crashed runner, an unknown ``{name}``) show as one red line, and the cell fails
as it should. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand

from .. import api
from ..config import get_config
from ..errors import InvalidArgumentError, MLXNotebookError
from ..protocol import SamplingOptions, ValidationError
from . import (
    cache_magics,
    inside_magics,
    parsers,
    serve_magics,
    structured_magics,
    teaching,
    tool_magics,
)
from .interpolate import interpolate
from .parsers import Parser, _Exit, make_parser
from .train_magics import fuse_arguments, fuse_magic, train_arguments, train_magic

__all__ = ["SUBCOMMANDS", "MLXMagics", "Subcommand", "load_ipython_extension", "overview",
           "unload_ipython_extension"]


# How the API's argument checks name the arguments in a magic: by their flags.
FLAGS: Mapping[str, str] = {"context_length": "--context", "ranks": "--ranks", "hosts": "--hosts",
                            "backend": "--backend", "token_env": "--token-env", "name": "a NAME",
                            "all": "--all", "draft": "--draft", "num_draft": "--num-draft",
                            "kv_bits": "--kv-bits", "kv_group_size": "--kv-group-size",
                            "kv_start": "--kv-start", "max_kv": "--max-kv"}


@contextlib.contextmanager
def _usage(prefix: str) -> Iterator[None]:
    """The API refused an argument: the magic's one-line ``UsageError``, as for a bad flag."""
    try:
        yield
    except InvalidArgumentError as exc:
        raise UsageError(f"{prefix}: {exc}") from exc


def _one_line_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Our errors render as one red line (IPython honours ``_render_traceback_``)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except _Exit:
            return None
        except MLXNotebookError as exc:
            line = f"\x1b[31m{type(exc).__name__}\x1b[0m: {exc}"
            # IPython looks for this hook on the instance; our error classes do not declare it.
            exc._render_traceback_ = lambda: [line]  # type: ignore[attr-defined]
            raise

    return wrapper


@magics_class
class MLXMagics(Magics):
    """``%mlx`` / ``%%mlx``: local LLMs in the notebook."""

    @no_var_expand
    @line_cell_magic
    @_one_line_errors
    def mlx(self, line: str, cell: str | None = None) -> None:
        sub, _, rest = line.strip().partition(" ")
        if not sub:
            print(overview())
            return
        if sub.startswith("-") and sub in ("-h", "--help"):
            sub = "help"
        command = SUBCOMMANDS.get(sub)
        if command is None:
            raise UsageError(f"%mlx: unknown subcommand {sub!r}; one of: {', '.join(SUBCOMMANDS)}")
        if command.line_is_text and cell is None:
            args = argparse.Namespace(text=rest, model=None)
        else:
            args = self._parse(command, rest)
        if cell is not None and command.cell == "never":
            raise UsageError(f"%%mlx {sub} takes no cell body; use %mlx {sub} on one line")
        if cell is None and command.cell == "required":
            raise UsageError(f"%mlx {sub} needs a cell: write the prompt below %%mlx {sub}")
        command.handler(self, args, cell)

    # -- parsing helpers

    def _parse(self, command: Subcommand, rest: str) -> argparse.Namespace:
        try:
            argv = shlex.split(rest)
        except ValueError as exc:
            raise UsageError(f"%mlx {command.name}: {exc}") from None
        return command.parser.parse_args(argv)

    def _prompt(self, args: argparse.Namespace, cell: str, sub: str) -> str:
        text = cell.rstrip("\n") if getattr(args, "raw", False) else cell.strip()
        if not text:
            raise UsageError(f"%%mlx {sub}: the cell is empty; write the prompt below the magic")
        if args.no_interpolate or not get_config().interpolate:
            return text
        return interpolate(text, self.shell.user_ns)

    def _sampling(self, args: argparse.Namespace, sub: str) -> dict[str, Any]:
        kwargs = {"max_tokens": args.max_tokens, "temperature": args.temperature,
                  "top_p": args.top_p, "top_k": args.top_k, "min_p": args.min_p,
                  "seed": args.seed, "stop": args.stop, "repeat_penalty": args.repeat_penalty}
        opts = get_config().options(**{k: (tuple(v) if k == "stop" and v else v)
                                       for k, v in kwargs.items()})
        try:
            SamplingOptions.from_json(opts.to_json())
        except ValidationError as exc:
            flag = "--" + exc.field.removeprefix("options.").replace("_", "-")
            raise UsageError(f"%%mlx {sub}: {flag.replace('temperature', 'temp')}: "
                             f"{exc.message}") from None
        if args.output and not args.output.isidentifier():
            raise UsageError(f"%%mlx {sub}: -o needs a variable name, got {args.output!r}")
        return kwargs

    def _store(self, args: argparse.Namespace, result: api.GenerationResult) -> None:
        if args.output:
            self.shell.user_ns[args.output] = result

    # -- subcommands

    def _load(self, args: argparse.Namespace, cell: str | None) -> None:
        with _usage("%mlx load"):
            kv = dict(kv_bits=args.kv_bits, kv_group_size=args.kv_group_size,
                      kv_start=args.kv_start, max_kv=args.max_kv)
            api.check_load_args(context_length=args.context, ranks=args.ranks, hosts=args.hosts,
                                backend=args.backend, draft=args.draft,
                                num_draft=args.num_draft, names=FLAGS, **kv)
            api.load(args.model, name=args.name, context_length=args.context, force=args.force,
                     show=True, ranks=args.ranks, shard=args.shard, hosts=args.hosts,
                     backend=args.backend, adapter=args.adapter, draft=args.draft,
                     num_draft=args.num_draft, **kv)

    def _connect(self, args: argparse.Namespace, cell: str | None) -> None:
        with _usage("%mlx connect"):
            api.check_connect_args(token_env=args.token_env, names=FLAGS)
        try:
            api.connect(args.url, token_env=args.token_env, name=args.name, show=True)
        except ValueError as exc:  # the token's variable unset, a URL that is not one
            raise UsageError(f"%mlx connect: {exc}") from None

    def _unload(self, args: argparse.Namespace, cell: str | None) -> None:
        with _usage("%mlx unload"):
            api.check_unload_args(name=args.name, all=args.all, names=FLAGS)
            api.unload(args.name, all=args.all)

    def _use(self, args: argparse.Namespace, cell: str | None) -> None:
        api.use(args.name)
        print(f"Default model: {args.name}")

    def _free(self, args: argparse.Namespace, cell: str | None) -> None:
        from .display import free_message

        print(free_message(api.free_memory(args.name)))

    def _ps(self, args: argparse.Namespace, cell: str | None) -> None:
        from .display import ps_html, ps_table, show

        rows, default = api.ps(), api.default_model()
        show(ps_table(rows, default), ps_html(rows, default))

    def _status(self, args: argparse.Namespace, cell: str | None) -> None:
        from .display import in_kernel

        if in_kernel():
            from .widgets import StatusWidget

            StatusWidget().display()
        else:
            from .display import runner_statuses, status_text

            print(status_text(runner_statuses()))

    def _tokenize(self, args: argparse.Namespace, cell: str | None) -> None:
        from .display import show
        from .tokens import tokens_html, tokens_text

        if cell is None:  # the line is the text itself (line_is_text in the table)
            if not args.text:
                raise UsageError("%mlx tokenize: give a TEXT, or use %%mlx tokenize with a cell")
            model, text = None, args.text
        else:
            model, text = args.model, cell
        tok = api.tokenize(text, model=model)
        show(tokens_text(tok), tokens_html(tok))

    def _config(self, args: argparse.Namespace, cell: str | None) -> None:
        cfg = get_config()
        if args.reset:
            cfg.reset()
        for item in args.settings:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"%mlx config: expected KEY=VALUE, got {item!r}")
            cfg.set(key.strip().replace("-", "_"), value.strip())
        if not args.settings or args.reset:
            width = max(len(k) for k in cfg.settings())
            print("\n".join(f"{k:<{width}} = {v!r}" for k, v in cfg.settings().items()))

    def _help(self, args: argparse.Namespace, cell: str | None) -> None:
        print(SUBCOMMANDS[args.subcommand].parser.format_help() if args.subcommand
              else overview())

    def _generate(self, args: argparse.Namespace, cell: str | None) -> None:
        assert cell is not None  # the table says: a cell is required
        if args.raw and args.system:
            raise UsageError("%%mlx generate: --system has no effect with --raw")
        kwargs = self._sampling(args, "generate")
        output = structured_magics.output_kwargs(self, args, "generate")
        prompt = self._prompt(args, cell, "generate")
        if args.dry_run:
            teaching.show_preview(prompt, model=args.model, system=args.system, raw=args.raw)
            return
        if args.logprobs is not None:
            if not 1 <= args.logprobs <= 20:
                raise UsageError("%%mlx generate: --logprobs: must be between 1 and 20")
            result = teaching.generate_logprobs(prompt, k=args.logprobs, model=args.model,
                                                system=args.system, raw=args.raw, show=True,
                                                **kwargs, **output)
            if args.output:
                self.shell.user_ns[args.output] = result
            return
        if args.think is not None:
            kwargs["think"] = args.think
        result = api.generate(prompt, model=args.model, system=args.system, raw=args.raw,
                              show=True, format=args.format, on_interrupt="return", **kwargs,
                              **output)
        self._store(args, result)

    def _compare(self, args: argparse.Namespace, cell: str | None) -> None:
        from .teaching.compare import compare_cell

        assert cell is not None  # the table says: a cell is required
        prompt = self._prompt(args, cell, "compare")
        try:
            records = compare_cell(prompt, models=args.models, temps=args.temps,
                                   top_ps=args.top_ps, seed=args.seed, max_tokens=args.max_tokens,
                                   system=args.system, raw=args.raw)
        except ValueError as exc:
            raise UsageError(f"%%mlx compare: {exc}") from None
        if args.output:
            self.shell.user_ns[args.output] = records

    def _explore(self, args: argparse.Namespace, cell: str | None) -> None:
        from IPython.display import display

        from .teaching.explorer import explore

        display(explore(" ".join(args.text), model=args.model))

    def _chat(self, args: argparse.Namespace, cell: str | None) -> None:
        if args.reset:
            api.reset_chat(args.model, all=args.all)
            print("Conversation reset." if not args.all else "All conversations reset.")
            return
        if args.history:
            _show_markdown(api.chat_history_markdown(args.model))
            return
        if cell is None:
            raise UsageError("%mlx chat: write the message in a cell below %%mlx chat "
                             "(line form: %mlx chat --reset | --history)")
        kwargs = self._sampling(args, "chat")
        output = structured_magics.output_kwargs(self, args, "chat")
        message = self._prompt(args, cell, "chat")
        if args.think is not None:
            kwargs["think"] = args.think
        kwargs.update(tool_magics.tool_kwargs(self.shell.user_ns, args))
        result = api.chat(message, model=args.model, system=args.system, show=True,
                          format=args.format, on_interrupt="return",
                          drop_oldest=args.drop_oldest, **kwargs, **output)
        self._store(args, result)


def _show_markdown(text: str) -> None:
    from .display import in_kernel

    if in_kernel():
        from IPython.display import display

        display({"text/markdown": text, "text/plain": text}, raw=True)
    else:
        print(text)


# ---------------------------------------------------------------- the subcommand table

Handler = Callable[[MLXMagics, argparse.Namespace, str | None], None]
CellRule = Literal["never", "optional", "required"]


@dataclass(frozen=True)
class Subcommand:
    """One ``%mlx`` subcommand: the one place that says how it is named, parsed and run.

    ``cell``: whether ``%%mlx NAME`` takes a cell body (never, optional, required);
    ``line_is_text``: without a cell the rest of the line is the text, unparsed
    (``%mlx tokenize Hello world``).
    """

    name: str
    summary: str
    arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler
    cell: CellRule = "never"
    usage: str | None = None
    line_is_text: bool = False

    @functools.cached_property
    def parser(self) -> Parser:
        """Built on first use (``%mlx help`` lists the table's names, known only once it exists)."""
        prefix = "%%mlx" if self.cell == "required" else "%mlx"
        parser = make_parser(f"{prefix} {self.name}", self.summary, self.usage)
        self.arguments(parser)
        return parser


def _help_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("subcommand", nargs="?", choices=sorted(SUBCOMMANDS))


_M = MLXMagics
SUBCOMMANDS: Mapping[str, Subcommand] = {c.name: c for c in (
    Subcommand("load", "start a runner for a model (default: demo) and show its load progress",
               parsers.load, _M._load),
    Subcommand("connect", "attach to a runner started by hand (maybe on another machine) by URL",
               parsers.connect, _M._connect,
               usage="%mlx connect URL [--token-env VAR] [--as NAME]"),
    Subcommand("unload", "stop a runner (the default one), or all of them; disconnect a remote one",
               parsers.unload, _M._unload),
    Subcommand("use", "make a loaded model the default", parsers.use, _M._use),
    Subcommand("free", "drop a runner's prompt cache and MLX's buffer cache; the model stays loaded",
               parsers.free, _M._free),
    Subcommand("ps", "table of loaded models: name, model, state, memory, pid, idle time",
               parsers.no_arguments, _M._ps),
    Subcommand("status", "live status and memory widget (text in a terminal)",
               parsers.no_arguments, _M._status),
    Subcommand("tokenize", "show how the model splits a text into tokens", parsers.tokenize,
               _M._tokenize, cell="optional", line_is_text=True,
               usage="%mlx tokenize TEXT  |  %%mlx tokenize [-m NAME] (cell = text)"),
    Subcommand("config", "show or set defaults: %mlx config temperature=0.7 max_tokens=64",
               parsers.config, _M._config, usage="%mlx config [KEY=VALUE ...] [--reset]"),
    Subcommand("help", "this help, or the help of one subcommand", _help_arguments, _M._help),
    Subcommand("generate", "(cell) generate from the cell as prompt, streaming the answer",
               parsers.generate, _M._generate, cell="required"),
    Subcommand("chat", "(cell) one turn of a conversation; line: --reset, --history",
               parsers.chat, _M._chat, cell="optional",
               usage="%%mlx chat [options] (cell = message)  |  %mlx chat --reset | --history"),
    Subcommand("compare", "(cell) the same prompt across models and settings, side by side",
               parsers.compare, _M._compare, cell="required"),
    Subcommand("explore", "next-token explorer widget: %mlx explore [TEXT] [-m NAME]",
               parsers.explore, _M._explore),
    Subcommand("map", "(cell) the cell as a template over rows: %%mlx map --over DF -o out",
               parsers.map_rows, structured_magics.map_magic, cell="required"),
    Subcommand("score", "(cell) the log-probability of every token of the cell's text",
               inside_magics.score_arguments, inside_magics.score_magic, cell="required"),
    Subcommand("choose", "(cell) rank --options \"A,B,C\" as continuations of the cell's prompt",
               inside_magics.choose_arguments, inside_magics.choose_magic, cell="required"),
    Subcommand("lens", "logit lens: the top next token at every layer and position of TEXT",
               inside_magics.lens_arguments, inside_magics.lens_magic, cell="optional",
               usage="%mlx lens TEXT [--positions N|I,J] [--layers I,J] [--top-k K] [-m NAME]"),
    Subcommand("attention", "attention weights of one layer over TEXT, every head as a heatmap",
               inside_magics.attention_arguments, inside_magics.attention_magic, cell="optional",
               usage="%mlx attention TEXT --layer L [--head H] [-m NAME]"),
    Subcommand("train", "fine-tune a model (LoRA) in a runner, live loss plot: --data VAR --as NAME",
               train_arguments, train_magic,
               usage="%mlx train MODEL --data VAR_OR_PATH --iters N [options] --as NAME"),
    Subcommand("fuse", "write a model folder with a fine-tuned adapter fused into its weights",
               fuse_arguments, fuse_magic,
               usage="%mlx fuse MODEL --adapter PATH --out FOLDER"),
    Subcommand("cache", "prompt caches on disk: save a document's KV cache, load it after a restart",
               cache_magics.cache_arguments, cache_magics.cache_magic, cell="optional",
               usage=cache_magics.USAGE),
    Subcommand("serve", "the model's OpenAI-compatible base URL for other tools (never the token)",
               serve_magics.serve_arguments, serve_magics.serve_magic,
               usage="%mlx serve [-m NAME] [--export] [-o VAR]"),
)}


def overview() -> str:
    """What ``%mlx`` and ``%mlx help`` print: one line a subcommand."""
    lines = ["%mlx SUBCOMMAND [args]   |   %%mlx generate|chat [args] (cell = prompt)", ""]
    lines += [f"  {c.name:<9} {c.summary}" for c in SUBCOMMANDS.values()]
    lines += ["", "Details: %mlx help SUBCOMMAND, or %mlx SUBCOMMAND -h.",
              "Prompts: {name} is filled from your variables; {{ }} are literal braces."]
    return "\n".join(lines)


MLXMagics.mlx.__doc__ = "Local LLMs with MLX.\n\n" + overview() + "\n\n" + "\n".join(
    c.parser.format_usage().strip() for c in SUBCOMMANDS.values())


def load_ipython_extension(shell: Any) -> None:
    from ..config import install

    install(shell)
    shell.register_magics(MLXMagics)


def unload_ipython_extension(shell: Any) -> None:
    from ..config import uninstall

    uninstall(shell)
    for kind in ("line", "cell"):
        shell.magics_manager.magics[kind].pop("mlx", None)
