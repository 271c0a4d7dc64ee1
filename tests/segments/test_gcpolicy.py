"""The processes collect cyclic garbage rarely, but they still collect it."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from i2d_segments.gcpolicy import YOUNG_THRESHOLD, collect_rarely


@pytest.fixture
def rare_collections() -> Iterator[None]:
    thresholds = gc.get_threshold()
    collect_rarely()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class _Node:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.me = self  # a reference cycle: reference counting alone never frees it


def test_a_reference_cycle_is_still_freed_without_an_explicit_collect(
    rare_collections: None,
) -> None:
    assert gc.isenabled()
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    node = _Node(b"x" * (1 << 20))
    gone = weakref.ref(node)
    del node
    assert gone() is not None  # only the collector can free it
    # What a run allocates in the meantime triggers a young collection, which frees it.
    kept = [[] for _ in range(2 * YOUNG_THRESHOLD)]
    assert gone() is None
    del kept


def test_what_existed_before_is_frozen_and_not_walked_again() -> None:
    thresholds = gc.get_threshold()
    old: list[object] = [[]]
    try:
        collect_rarely()
        new: list[object] = [[]]
        walked = gc.get_objects()  # what a collection examines (not the frozen objects)
        assert not any(o is old for o in walked)
        assert any(o is new for o in walked)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
