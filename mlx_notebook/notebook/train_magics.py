"""``%mlx train`` and ``%mlx fuse``: thin magics over :func:`mlx_notebook.training.train`/``fuse``.

>>> %mlx train demo --data rows --iters 60 --lora-rank 8 --as tuned     # doctest: +SKIP
>>> %mlx fuse demo --adapter ~/.cache/mlx_notebook/adapters/tuned --out fused
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from ..errors import InvalidArgumentError
from ..train_protocol import FINE_TUNE_TYPES

if TYPE_CHECKING:
    from .magics import MLXMagics

__all__ = ["fuse_arguments", "fuse_magic", "train_arguments", "train_magic"]

FLAGS = {"iters": "--iters", "batch_size": "--batch-size", "learning_rate": "--learning-rate",
         "lora_rank": "--lora-rank", "lora_layers": "--lora-layers",
         "fine_tune_type": "--fine-tune-type", "name": "--as", "data": "--data",
         "adapter": "--adapter"}


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="demo", help="base model: a loaded name or a spec")
    p.add_argument("--data", required=True, metavar="VAR_OR_PATH",
                   help="a variable (list of dicts, DataFrame) or a .jsonl file / data folder")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-layers", type=int, default=16, help="layers to tune (-1: all)")
    p.add_argument("--fine-tune-type", choices=FINE_TUNE_TYPES, default="lora")
    p.add_argument("--mask-prompt", action="store_true", help="learn only the answers")
    p.add_argument("--grad-checkpoint", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=None, metavar="N")
    p.add_argument("--val-size", type=int, default=None, metavar="N",
                   help="rows held out for validation (default: automatic; 0: none)")
    p.add_argument("--adapter-path", default=None, metavar="DIR",
                   help="where the adapter goes (default: the cache's adapters/NAME)")
    p.add_argument("--force", action="store_true", help="train even if memory looks short")
    p.add_argument("--no-load", action="store_true", help="do not load the adapter afterwards")
    p.add_argument("--as", dest="name", metavar="NAME", help="the tuned model's name")
    p.add_argument("-o", "--output", metavar="VAR", help="store the TrainResult in VAR")


def _data(magics: MLXMagics, text: str) -> object:
    if text.isidentifier() and text in magics.shell.user_ns:
        return magics.shell.user_ns[text]
    if Path(text).expanduser().exists():
        return text
    raise UsageError(f"%mlx train: --data {text}: neither a variable nor an existing path")


def train_magic(magics: MLXMagics, args: argparse.Namespace, cell: str | None) -> None:
    from .. import training

    if args.output and not args.output.isidentifier():
        raise UsageError(f"%mlx train: -o needs a variable name, got {args.output!r}")
    data = _data(magics, args.data)
    try:
        result = training.train(
            args.model, data=data, iters=args.iters, name=args.name,
            batch_size=args.batch_size, learning_rate=args.learning_rate,
            lora_rank=args.lora_rank, lora_layers=args.lora_layers,
            fine_tune_type=args.fine_tune_type, mask_prompt=args.mask_prompt,
            grad_checkpoint=args.grad_checkpoint, seed=args.seed, save_every=args.save_every,
            adapter_path=args.adapter_path, val_size=args.val_size, force=args.force,
            load=not args.no_load, show=True)
    except InvalidArgumentError as exc:
        flag = FLAGS.get(exc.field or "", "")
        raise UsageError(f"%mlx train: {flag + ': ' if flag else ''}{exc}") from exc
    if args.output:
        magics.shell.user_ns[args.output] = result


def fuse_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="demo")
    p.add_argument("--adapter", required=True, metavar="PATH")
    p.add_argument("--out", required=True, metavar="FOLDER")


def fuse_magic(magics: MLXMagics, args: argparse.Namespace, cell: str | None) -> None:
    from .. import training

    try:
        out = training.fuse(args.model, adapter=args.adapter, out=args.out)
    except InvalidArgumentError as exc:
        raise UsageError(f"%mlx fuse: {exc}") from exc
    print(f"fused model written to {out}; load it with %mlx load {out} --as fused")
