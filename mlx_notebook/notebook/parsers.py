"""The ``%mlx`` subcommands' argument parsers: one argparse parser per subcommand.

Kept apart from the magics so that their grammar (what ``%mlx help`` shows and what
the fuzz tests explore) reads in one place. A parser never exits the kernel: a bad
option raises a one-line ``UsageError``, ``-h`` raises :class:`_Exit` after the help.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError

from .. import api

__all__ = ["CELL_ONLY", "PARSERS", "SUMMARY", "overview"]

SUMMARY = {
    "load": "start a runner for a model (default: demo) and show its load progress",
    "connect": "attach to a runner started by hand (maybe on another machine) by URL",
    "unload": "stop a runner (the default one), or all of them; disconnect a remote one",
    "use": "make a loaded model the default",
    "free": "drop a runner's prompt cache and MLX's buffer cache; the model stays loaded",
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
    new("free").add_argument("name", nargs="?", help="model name (default: the current one)")
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
