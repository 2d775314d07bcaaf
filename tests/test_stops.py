"""Stop strings are matched on text, across token boundaries, and never emitted."""

from __future__ import annotations

import pytest

from mlx_notebook.runner.stops import StopStringFilter


def run(stops, pieces):
    f = StopStringFilter(stops)
    out = "".join(f.feed(p) for p in pieces)
    return out + f.flush(), f.stopped


@pytest.mark.parametrize("stops,pieces,expected", [
    ([], ["a", "b"], ("ab", False)),
    (["END"], ["hello E", "N", "D more"], ("hello ", True)),
    (["END"], ["hello EN", "d"], ("hello ENd", False)),
    (["\n\n"], ["one\n", "\ntwo"], ("one", True)),
    (["ab", "b"], ["xb"], ("x", True)),
    (["stop"], ["sto"], ("sto", False)),
])
def test_stop_filter(stops, pieces, expected):
    assert run(stops, pieces) == expected


def test_nothing_is_held_back_longer_than_needed():
    f = StopStringFilter(["XYZ"])
    assert f.feed("abc X") == "abc "
    assert f.feed("Y") == ""
    assert f.feed("a") == "XYa"
