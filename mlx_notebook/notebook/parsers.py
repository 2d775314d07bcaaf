"""The grammar of the ``%mlx`` subcommands: one function a subcommand adds its arguments.

Kept apart from the magics so that what ``%mlx help`` shows and what the fuzz tests
explore reads in one place; the subcommand table in :mod:`.magics` pairs each of
these with its summary, its cell rule and its handler. A parser never exits the
kernel: a bad option raises a one-line ``UsageError``, ``-h`` raises :class:`_Exit`
after the help.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError

from .. import api

__all__ = ["Parser", "make_parser"]


class _Exit(Exception):
    """argparse asked to exit (after printing -h help)."""


class Parser(argparse.ArgumentParser):
    """argparse with errors as ``UsageError`` and ``-h`` that returns to the magic."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message} (see %mlx help {self.prog.split()[-1]})")

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        if message:
            print(message)
        raise _Exit


def make_parser(prog: str, description: str, usage: str | None = None) -> Parser:
    """A parser for ``prog`` (``%mlx load``); ``usage`` is literal text (``%`` is not a format)."""
    return Parser(prog=prog, description=description,
                  usage=usage.replace("%", "%%") if usage is not None else None)


def _unescape(text: str) -> str:
    """``--stop "\\n\\n"`` means two newlines."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _sampling(p: argparse.ArgumentParser) -> None:
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


# ---------------------------------------------------------------- one function a subcommand


def load(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--adapter", metavar="PATH",
                   help="apply a fine-tuned adapter folder (from %%mlx train or mlx_lm.lora)")
    p.add_argument("--draft", metavar="MODEL",
                   help="a small model of the same tokenizer that guesses tokens for it "
                        "(speculative decoding: same greedy text, maybe faster)")
    p.add_argument("--num-draft", type=int, metavar="N",
                   help="most tokens the draft model guesses per round (default 3)")
    p.add_argument("--kv-bits", type=int, metavar="BITS",
                   help="hold the KV cache quantized: 4 or 8 bits (default: full precision)")
    p.add_argument("--kv-group-size", type=int, metavar="N",
                   help="elements per quantization group: 32, 64 (default) or 128")
    p.add_argument("--kv-start", type=int, metavar="N",
                   help="quantize once a request's cache holds N tokens (default 256)")
    p.add_argument("--max-kv", type=int, metavar="N",
                   help="bound the KV cache to N tokens (rotating: older tokens are dropped)")


def connect(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="the runner's http://HOST:PORT")
    p.add_argument("--token-env", default=api.REMOTE_TOKEN_ENV, metavar="VAR",
                   help=f"environment variable holding the runner's token "
                        f"(default {api.REMOTE_TOKEN_ENV}); never put the token itself here")
    p.add_argument("--as", "--name", dest="name", metavar="NAME",
                   help="name to refer to it by (default: MODEL@HOST)")


def unload(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="model name (default: the current one)")
    p.add_argument("--all", action="store_true", help="stop every runner")


def use(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="a loaded model's name")


def free(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="model name (default: the current one)")


def no_arguments(p: argparse.ArgumentParser) -> None:
    """``%mlx ps``, ``%mlx status``: nothing but ``-h``."""


def tokenize(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", metavar="NAME", help="which loaded model")


def config(p: argparse.ArgumentParser) -> None:
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--reset", action="store_true", help="back to the built-in defaults")


def structured(p: argparse.ArgumentParser) -> None:
    """Structured output: the answer is constrained on the runner, ``.value`` parsed here."""
    p.add_argument("--schema", metavar="NAME",
                   help="a pydantic model class or JSON-schema dict from the namespace")
    p.add_argument("--json", action="store_true", help="the answer is any JSON value")
    p.add_argument("--choice", metavar="A,B,C", help="the answer is one of these")
    p.add_argument("--regex", metavar="PATTERN", help="the answer fully matches PATTERN "
                   "(Rust regex syntax: no look-around, no back-references)")


def map_rows(p: argparse.ArgumentParser) -> None:
    _sampling(p)
    structured(p)
    p.add_argument("--over", metavar="ROWS", required=True,
                   help="a DataFrame, a list of dicts or a list of strings from the namespace")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="rows decoded at once (default 8, the runner's --max-batch)")


def thinking(p: argparse.ArgumentParser) -> None:
    """--think / --no-think: a thinking model's enable_thinking (default: the template's)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--think", dest="think", action="store_const", const=True, default=None,
                       help="let a thinking model think first (its template's enable_thinking)")
    group.add_argument("--no-think", dest="think", action="store_const", const=False,
                       help="answer without thinking")


def generate(p: argparse.ArgumentParser) -> None:
    _sampling(p)
    structured(p)
    thinking(p)
    p.add_argument("--raw", action="store_true", help="send the prompt as is, no chat template")
    p.add_argument("--logprobs", type=int, metavar="K",
                   help="shade tokens by probability; top-K alternatives on hover (1-20)")
    p.add_argument("--dry-run", action="store_true",
                   help="show the exact prompt after the chat template and its token count")


def compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--models", metavar="A,B", help="comma-separated loaded model names")
    p.add_argument("--temp", dest="temps", metavar="T1,T2", help="temperatures, comma-separated")
    p.add_argument("--top-p", dest="top_ps", metavar="P1,P2", help="top-p values, comma-separated")
    p.add_argument("--seed", type=int, metavar="S", help="one seed for every sampled cell")
    p.add_argument("--max-tokens", type=int, metavar="N", help="longest answer, in tokens")
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, no chat template")
    p.add_argument("-o", "--output", metavar="VAR", help="store the records in VAR")
    p.add_argument("--no-interpolate", action="store_true", help="send {braces} as written")


def explore(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="*", help="the text to continue")
    p.add_argument("-m", "--model", metavar="NAME", help="which loaded model")


def chat(p: argparse.ArgumentParser) -> None:
    _sampling(p)
    structured(p)
    thinking(p)
    p.add_argument("--tools", metavar="F,G", help="functions (by name, from the namespace) the "
                                                  "model may call")
    p.add_argument("--confirm", action="store_true", help="with --tools: ask before each call")
    p.add_argument("--max-tool-rounds", type=int, default=5, metavar="N",
                   help="with --tools: most rounds of calls before the answer (default 5)")
    p.add_argument("--reset", action="store_true", help="forget the conversation")
    p.add_argument("--all", action="store_true", help="with --reset: forget every conversation")
    p.add_argument("--history", action="store_true", help="show the conversation so far")
    p.add_argument("--drop-oldest", action="store_true",
                   help="drop the oldest turns when the conversation outgrows the context")
