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

Every subcommand has argparse help (``%mlx help load``, ``%mlx load -h``). Bad
arguments raise a one-line ``UsageError``; our own errors (no model loaded, a
crashed runner, an unknown ``{name}``) show as one red line, and the cell fails
as it should. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import shlex
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand

from . import api, teaching
from .config import get_config
from .errors import MLXNotebookError
from .interpolate import interpolate
from .protocol import SamplingOptions, ValidationError

SUMMARY = {
    "load": "start a runner for a model (default: demo) and show its load progress",
    "connect": "attach to a runner started by hand (maybe on another machine) by URL",
    "unload": "stop a runner (the default one), or all of them; disconnect a remote one",
    "use": "make a loaded model the default",
    "ps": "table of loaded models: name, model, state, memory, pid, idle time",
    "status": "live status and memory widget (text in a terminal)",
    "tokenize": "show how the model splits a text into tokens",
    "config": "show or set defaults: %mlx config temperature=0.7 max_tokens=64",
    "help": "this help, or the help of one subcommand",
    "generate": "(cell) generate from the cell as prompt, streaming the answer",
    "chat": "(cell) one turn of a conversation; line: --reset, --history",
    "compare": "(cell) the same prompt across models and settings, side by side",
    "explore": "next-token explorer widget: %mlx explore [TEXT] [-m NAME]",
}
CELL_ONLY = {"generate", "compare"}


class _Exit(Exception):
    """argparse asked to exit (after printing -h help)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message} (see %mlx help {self.prog.split()[-1]})")

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        if message:
            print(message)
        raise _Exit


def _unescape(text: str) -> str:
    """``--stop "\\n\\n"`` means two newlines."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", metavar="NAME", help="which loaded model (default: the current one)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="most tokens to generate")
    p.add_argument("--temp", "--temperature", dest="temperature", type=float, metavar="T",
                   help="sampling temperature (0 = greedy)")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--min-p", type=float, metavar="P", help="drop tokens below P x the top probability")
    p.add_argument("--repeat-penalty", type=float, metavar="R", help="penalty on repeated tokens")
    p.add_argument("--seed", type=int, metavar="S", help="sampling seed, for reproducible answers")
    p.add_argument("--stop", nargs="+", action="extend", type=_unescape, metavar="TEXT",
                   help="stop before any of these strings (\\n escapes work)")
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    p.add_argument("--format", choices=("text", "markdown"), help="how to show the answer")
    p.add_argument("-o", "--output", metavar="VAR", help="store the GenerationResult in VAR")
    p.add_argument("--no-interpolate", action="store_true", help="send {braces} as written")


def _parsers() -> dict[str, _Parser]:
    ps: dict[str, _Parser] = {}

    def new(name: str, usage_cell: bool = False, **kw: Any) -> _Parser:
        prefix = "%%mlx" if usage_cell else "%mlx"
        if "usage" in kw:  # argparse %-formats usage strings
            kw["usage"] = kw["usage"].replace("%", "%%")
        parser = _Parser(prog=f"{prefix} {name}", description=SUMMARY[name], **kw)
        ps[name] = parser
        return parser

    p = new("load")
    p.add_argument("model", nargs="?", default="demo",
                   help="demo, a Hugging Face repo id, a model folder or a .gguf file")
    p.add_argument("--as", "--name", dest="name", metavar="NAME", help="name to refer to it by")
    p.add_argument("--context", type=int, metavar="N", help="context length in tokens")
    p.add_argument("--force", action="store_true", help="load even if memory looks short; reload")
    p.add_argument("--ranks", type=int, default=1, metavar="N",
                   help="shard the model over N local processes (MLX ring backend)")
    p.add_argument("--hosts", metavar="HOSTFILE",
                   help="shard it over these machines: an mlx.launch hostfile or IP,IP,...")
    p.add_argument("--backend", metavar="NAME", help="MLX distributed backend (ring)")
    p.add_argument("--shard", choices=("tensor", "pipeline"), default="tensor",
                   help="how to split it over the ranks (default: tensor)")
    p = new("connect", usage="%mlx connect URL [--token-env VAR] [--as NAME]")
    p.add_argument("url", help="the runner's http://HOST:PORT")
    p.add_argument("--token-env", default=api.REMOTE_TOKEN_ENV, metavar="VAR",
                   help=f"environment variable holding the runner's token "
                        f"(default {api.REMOTE_TOKEN_ENV}); never put the token itself here")
    p.add_argument("--as", "--name", dest="name", metavar="NAME",
                   help="name to refer to it by (default: MODEL@HOST)")
    p = new("unload")
    p.add_argument("name", nargs="?", help="model name (default: the current one)")
    p.add_argument("--all", action="store_true", help="stop every runner")
    new("use").add_argument("name", help="a loaded model's name")
    new("ps")
    new("status")
    p = new("tokenize", usage="%mlx tokenize TEXT  |  %%mlx tokenize [-m NAME] (cell = text)")
    p.add_argument("-m", "--model", metavar="NAME", help="which loaded model")
    p = new("config", usage="%mlx config [KEY=VALUE ...] [--reset]")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--reset", action="store_true", help="back to the built-in defaults")
    new("help").add_argument("subcommand", nargs="?", choices=sorted(SUMMARY))
    p = new("generate", usage_cell=True)
    _sampling_args(p)
    p.add_argument("--raw", action="store_true", help="send the prompt as is, no chat template")
    p.add_argument("--logprobs", type=int, metavar="K",
                   help="shade tokens by probability; top-K alternatives on hover (1-20)")
    p.add_argument("--dry-run", action="store_true",
                   help="show the exact prompt after the chat template and its token count")
    p = new("compare", usage_cell=True)
    p.add_argument("-m", "--models", metavar="A,B", help="comma-separated loaded model names")
    p.add_argument("--temp", dest="temps", metavar="T1,T2", help="temperatures, comma-separated")
    p.add_argument("--top-p", dest="top_ps", metavar="P1,P2", help="top-p values, comma-separated")
    p.add_argument("--seed", type=int, metavar="S", help="one seed for every sampled cell")
    p.add_argument("--max-tokens", type=int, metavar="N", help="longest answer, in tokens")
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, no chat template")
    p.add_argument("-o", "--output", metavar="VAR", help="store the records in VAR")
    p.add_argument("--no-interpolate", action="store_true", help="send {braces} as written")
    p = new("explore")
    p.add_argument("text", nargs="*", help="the text to continue")
    p.add_argument("-m", "--model", metavar="NAME", help="which loaded model")
    p = new("chat", usage="%%mlx chat [options] (cell = message)  |  %mlx chat --reset | --history")
    _sampling_args(p)
    p.add_argument("--reset", action="store_true", help="forget the conversation")
    p.add_argument("--all", action="store_true", help="with --reset: forget every conversation")
    p.add_argument("--history", action="store_true", help="show the conversation so far")
    return ps


PARSERS = _parsers()


def overview() -> str:
    lines = ["%mlx SUBCOMMAND [args]   |   %%mlx generate|chat [args] (cell = prompt)", ""]
    lines += [f"  {name:<9} {text}" for name, text in SUMMARY.items()]
    lines += ["", "Details: %mlx help SUBCOMMAND, or %mlx SUBCOMMAND -h.",
              "Prompts: {name} is filled from your variables; {{ }} are literal braces."]
    return "\n".join(lines)


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
        if sub not in SUMMARY:
            raise UsageError(f"%mlx: unknown subcommand {sub!r}; one of: {', '.join(SUMMARY)}")
        if sub == "tokenize":
            return self._tokenize(rest, cell)
        args = self._parse(sub, rest)
        if cell is not None and sub not in ("generate", "chat", "compare"):
            raise UsageError(f"%%mlx {sub} takes no cell body; use %mlx {sub} on one line")
        if cell is None and sub in CELL_ONLY:
            raise UsageError(f"%mlx {sub} needs a cell: write the prompt below %%mlx {sub}")
        return getattr(self, f"_{sub}")(args, cell)

    # -- parsing helpers

    def _parse(self, sub: str, rest: str) -> argparse.Namespace:
        try:
            argv = shlex.split(rest)
        except ValueError as exc:
            raise UsageError(f"%mlx {sub}: {exc}") from None
        return PARSERS[sub].parse_args(argv)

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
        if args.context is not None and args.context < 1:
            raise UsageError("%mlx load: --context must be a positive number of tokens")
        if args.ranks < 1:
            raise UsageError("%mlx load: --ranks must be 1 or more")
        if args.hosts is not None and args.ranks != 1:
            raise UsageError("%mlx load: give --ranks or --hosts, not both (the hostfile "
                             "sets the number of ranks)")
        if args.backend is not None and args.hosts is None and args.ranks == 1:
            raise UsageError("%mlx load: --backend goes with --hosts or --ranks")
        api.load(args.model, name=args.name, context_length=args.context, force=args.force,
                 show=True, ranks=args.ranks, shard=args.shard, hosts=args.hosts,
                 backend=args.backend)

    def _connect(self, args: argparse.Namespace, cell: str | None) -> None:
        if not args.token_env.isidentifier():
            raise UsageError(f"%mlx connect: --token-env needs a variable name, got "
                             f"{args.token_env!r} (put the token in that variable, not here)")
        try:
            api.connect(args.url, token_env=args.token_env, name=args.name, show=True)
        except ValueError as exc:
            raise UsageError(f"%mlx connect: {exc}") from None

    def _unload(self, args: argparse.Namespace, cell: str | None) -> None:
        if args.all and args.name:
            raise UsageError("%mlx unload: give a NAME or --all, not both")
        api.unload(args.name, all=args.all)

    def _use(self, args: argparse.Namespace, cell: str | None) -> None:
        api.use(args.name)
        print(f"Default model: {args.name}")

    def _ps(self, args: argparse.Namespace, cell: str | None) -> None:
        from .display import ps_table, show

        show(ps_table(api.ps(), api.default_model()))

    def _status(self, args: argparse.Namespace, cell: str | None) -> None:
        from .display import in_kernel

        if in_kernel():
            from IPython.display import display

            from .widgets import StatusWidget

            display(StatusWidget())
        else:
            from .widgets import runner_statuses, status_text

            print(status_text(runner_statuses()))

    def _tokenize(self, rest: str, cell: str | None) -> None:
        from .display import show, tokens_html, tokens_text

        if cell is None:
            if not rest:
                raise UsageError("%mlx tokenize: give a TEXT, or use %%mlx tokenize with a cell")
            model, text = None, rest
        else:
            model, text = self._parse("tokenize", rest).model, cell
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
        print(PARSERS[args.subcommand].format_help() if args.subcommand else overview())

    def _generate(self, args: argparse.Namespace, cell: str) -> None:
        if args.raw and args.system:
            raise UsageError("%%mlx generate: --system has no effect with --raw")
        kwargs = self._sampling(args, "generate")
        prompt = self._prompt(args, cell, "generate")
        if args.dry_run:
            teaching.show_preview(prompt, model=args.model, system=args.system, raw=args.raw)
            return
        if args.logprobs is not None:
            if not 1 <= args.logprobs <= 20:
                raise UsageError("%%mlx generate: --logprobs: must be between 1 and 20")
            result = teaching.generate_logprobs(prompt, k=args.logprobs, model=args.model,
                                                system=args.system, raw=args.raw, show=True,
                                                **kwargs)
            if args.output:
                self.shell.user_ns[args.output] = result
            return
        result = api.generate(prompt, model=args.model, system=args.system, raw=args.raw,
                              show=True, format=args.format, on_interrupt="return", **kwargs)
        self._store(args, result)

    def _compare(self, args: argparse.Namespace, cell: str) -> None:
        from .teaching.compare import compare_cell

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
        message = self._prompt(args, cell, "chat")
        result = api.chat(message, model=args.model, system=args.system, show=True,
                          format=args.format, on_interrupt="return", **kwargs)
        self._store(args, result)


def _show_markdown(text: str) -> None:
    from .display import in_kernel

    if in_kernel():
        from IPython.display import display

        display({"text/markdown": text, "text/plain": text}, raw=True)
    else:
        print(text)


MLXMagics.mlx.__doc__ = "Local LLMs with MLX.\n\n" + overview() + "\n\n" + "\n".join(
    p.format_usage().strip() for p in PARSERS.values())


def load_ipython_extension(shell: Any) -> None:
    from .config import install

    install(shell)
    shell.register_magics(MLXMagics)


def unload_ipython_extension(shell: Any) -> None:
    from .config import uninstall

    uninstall(shell)
    for kind in ("line", "cell"):
        shell.magics_manager.magics[kind].pop("mlx", None)
