"""The per-token wire path: the fast chunk encoding, chunk merging and the byte-line reader
say exactly what the general code says."""

from __future__ import annotations

import json
from dataclasses import asdict

from hypothesis import given
from hypothesis import strategies as st

from mlx_notebook.control.streams import ndjson_lines
from mlx_notebook.protocol import (
    ChunkEvent,
    DoneEvent,
    TokenLogprob,
    decode_event,
    encode_event,
    merge_chunks,
)

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
chunks = st.builds(ChunkEvent, content=texts,
                   tokens=st.lists(st.integers(0, 2**31), max_size=3).map(tuple))


@given(chunks)
def test_the_fast_chunk_line_is_the_general_one(chunk: ChunkEvent) -> None:
    general = (json.dumps(asdict(chunk), ensure_ascii=False, separators=(",", ":")) + "\n")
    assert encode_event(chunk) == general.encode()
    assert decode_event(encode_event(chunk)) == chunk


@given(st.lists(chunks, max_size=8), st.booleans())
def test_merged_chunks_keep_text_tokens_and_order(run: list[ChunkEvent], logprob: bool) -> None:
    marked = ChunkEvent(content="x", tokens=(7,), logprobs=(TokenLogprob(7, "x", -0.5),))
    events = [*run[:2], *([marked] if logprob else []), *run[2:], DoneEvent(done_reason="stop")]
    merged = merge_chunks(events)
    assert "".join(e.content for e in merged if isinstance(e, ChunkEvent)) == "".join(
        e.content for e in events if isinstance(e, ChunkEvent))
    assert [t for e in merged if isinstance(e, ChunkEvent) for t in e.tokens] == [
        t for e in events if isinstance(e, ChunkEvent) for t in e.tokens]
    assert merged[-1] == events[-1] and (marked in merged) == logprob  # logprobs never merged
    plain_runs = sum(1 for a, b in zip(merged, merged[1:], strict=False)
                     if isinstance(a, ChunkEvent) and isinstance(b, ChunkEvent)
                     and not a.logprobs and not b.logprobs)
    assert plain_runs == 0


@given(st.lists(st.binary(max_size=12).filter(lambda b: b"\n" not in b), max_size=6),
       st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_byte_lines_survive_any_chunking(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    pieces, i, k = [], 0, 0
    while i < len(stream):
        pieces.append(stream[i:i + cuts[k % len(cuts)]])
        i += cuts[k % len(cuts)]
        k += 1
    assert list(ndjson_lines(iter(pieces))) == lines
