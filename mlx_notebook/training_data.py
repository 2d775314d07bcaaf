"""Training data for ``mn.train``: checked row by row before anything starts, split, written.

mlx-lm's tuner reads one of three row formats, chosen by the *first* row
(``mlx_lm.tuner.datasets.create_dataset``): ``{"messages": [{"role", "content"}...]}``,
``{"prompt", "completion"}`` or ``{"text"}``. A row of another shape fails deep
inside the runner; here it is named by its index, with what is wrong.

Data may be a list of dicts, a pandas DataFrame, a ``.jsonl`` file or a folder
with ``train.jsonl`` (and ``valid.jsonl``). It travels to the training runner as
those files (so no HTTP body limit applies, and ``mlx_lm.lora`` reads the very same).

Without a validation set, one is held out: at least one full batch (mlx-lm's
batch iterator refuses a set smaller than the batch size), about a tenth of the rows,
and only if a full batch is left to train on; otherwise training runs without
validation loss. :attr:`PreparedData.note` says which.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TrainingDataError

__all__ = ["PreparedData", "check_rows", "load_rows", "prepare_data", "row_format"]

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class PreparedData:
    """What was written for the runner, and what was done to get there."""

    folder: Path
    train: int
    valid: int
    format: str  # messages | completions | text
    note: str  # one line: where the validation set came from
    longest_chars: int  # of a row's text, for the memory pre-flight


def row_format(row: Mapping[str, Any]) -> str | None:
    """The format mlx-lm picks for ``row`` (same order as its ``create_dataset``)."""
    if "prompt" in row and "completion" in row:
        return "completions"
    if "messages" in row:
        return "messages"
    if "text" in row:
        return "text"
    return None


def _row_problem(row: Any, fmt: str) -> str | None:
    if not isinstance(row, Mapping):
        return f"is a {type(row).__name__}, not a dict"
    own = row_format(row)
    if own is None:
        return (f"has keys {sorted(map(str, row))[:6]}; a row needs 'messages', "
                "'prompt' and 'completion', or 'text'")
    if own != fmt:
        return f"is in the {own!r} format but the first row is {fmt!r} (one format per data set)"
    if fmt == "completions":
        for key in ("prompt", "completion"):
            if not isinstance(row[key], str):
                return f"{key!r} is a {type(row[key]).__name__}, not a string"
        if not row["completion"]:
            return "'completion' is empty"
    elif fmt == "text":
        if not isinstance(row["text"], str) or not row["text"].strip():
            return "'text' is not a non-empty string"
    else:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            return "'messages' is not a non-empty list"
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                return f"message {i} is not a dict with 'role' and 'content'"
            if m["role"] not in ROLES:
                return f"message {i} has role {m['role']!r} (one of {', '.join(ROLES)})"
            if not isinstance(m["content"], str):
                return f"message {i}'s content is a {type(m['content']).__name__}, not a string"
        if not any(m["role"] == "assistant" for m in messages):
            return "has no assistant message to learn"
    return None


def check_rows(rows: list[Any], split: str = "train") -> str:
    """Raise :class:`TrainingDataError` naming the first bad row; return the format."""
    if not rows:
        raise TrainingDataError(f"the {split} data has no rows", split=split)
    first = rows[0]
    fmt = row_format(first) if isinstance(first, Mapping) else None
    if fmt is None:
        problem = _row_problem(first, "messages")
        raise TrainingDataError(f"{split} row 0 {problem}", row=0, split=split)
    for i, row in enumerate(rows):
        problem = _row_problem(row, fmt)
        if problem is not None:
            raise TrainingDataError(f"{split} row {i} {problem}", row=i, split=split)
    return fmt


def _read_jsonl(path: Path, split: str) -> list[Any]:
    rows: list[Any] = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TrainingDataError(f"{split} row {len(rows)} (line {i + 1} of {path}) is "
                                        f"not JSON: {exc.msg}", row=len(rows), split=split
                                        ) from exc
    return rows


def load_rows(data: Any) -> tuple[list[Any], list[Any] | None]:
    """(train rows, valid rows or None) from any accepted kind of ``data``."""
    if isinstance(data, (str, Path)):
        path = Path(data).expanduser()
        if path.is_dir():
            train = path / "train.jsonl"
            if not train.is_file():
                raise TrainingDataError(f"data folder {path} has no train.jsonl")
            valid = path / "valid.jsonl"
            return _read_jsonl(train, "train"), (_read_jsonl(valid, "valid")
                                                 if valid.is_file() else None)
        if path.is_file():
            return _read_jsonl(path, "train"), None
        raise TrainingDataError(f"data {str(data)!r} is neither a .jsonl file nor a folder")
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame
        return list(data.to_dict("records")), None
    if isinstance(data, Mapping) and set(data) <= {"train", "valid"} and "train" in data:
        return list(data["train"]), (list(data["valid"]) if "valid" in data else None)
    if isinstance(data, Iterable) and not isinstance(data, (bytes, Mapping)):
        return list(data), None
    raise TrainingDataError(f"data is a {type(data).__name__}: give a list of dicts, a "
                            "DataFrame, a .jsonl path or a folder with train.jsonl")


def _chars(row: Mapping[str, Any]) -> int:
    if "messages" in row and isinstance(row["messages"], list):
        return sum(len(str(m.get("content", ""))) + 16 for m in row["messages"])
    return sum(len(str(row.get(k, ""))) for k in ("prompt", "completion", "text"))


def prepare_data(data: Any, folder: Path, *, batch_size: int, seed: int = 0,
                 val_size: int | None = None) -> PreparedData:
    """Check ``data``, hold out a validation set if there is none, write the two files.

    ``val_size`` None: automatic (see the module docstring); 0: no validation.
    """
    train, valid = load_rows(data)
    fmt = check_rows(train, "train")
    if valid:
        vfmt = check_rows(valid, "valid")
        if vfmt != fmt:
            raise TrainingDataError(f"valid rows are {vfmt!r} but train rows {fmt!r}",
                                    row=0, split="valid")
        note = f"{len(train)} training and {len(valid)} validation examples, as given"
    else:
        n = len(train)
        want = max(batch_size, round(n / 10)) if val_size is None else val_size
        if val_size == 0:
            valid, note = [], f"{n} training examples, no validation (val_size=0)"
        elif want < batch_size or n - want < batch_size:
            valid = []
            note = (f"{n} examples: too few to hold out a validation batch of {batch_size} "
                    f"and keep a batch to train on; training without validation loss")
        else:
            order = list(range(n))
            random.Random(seed).shuffle(order)
            held = set(order[:want])
            valid = [train[i] for i in sorted(held)]
            train = [r for i, r in enumerate(train) if i not in held]
            note = (f"held out {len(valid)} of {n} examples for validation (at least one "
                    f"batch of {batch_size}, as mlx-lm's batch iterator needs)")
    if len(train) < batch_size:
        raise TrainingDataError(f"{len(train)} training examples, fewer than the batch size "
                                f"{batch_size}: add rows or lower batch_size", split="train")
    if valid and len(valid) < batch_size:
        raise TrainingDataError(f"{len(valid)} validation examples, fewer than the batch size "
                                f"{batch_size} (mlx-lm needs a full batch)", split="valid")
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("valid", valid)):
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(dict(row), ensure_ascii=False, default=str) + "\n")
    longest = max(_chars(r) for r in [*train, *valid])
    return PreparedData(folder, len(train), len(valid), fmt, note, longest)
