"""A labelled Prometheus metric's children, each looked up once.

`metric.labels(value)` takes a lock and builds a tuple at every call; the counters the
services update per row (rows by status, failures by reason, records by outcome) would pay
that for every row. Their label values are bounded sets, so the children are kept here.
"""

from __future__ import annotations

from typing import Any


class LabelledChildren:
    """`children[value]` is `metric.labels(value)`, looked up once per value (one label)."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[str, Any] = {}

    def __getitem__(self, value: str) -> Any:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = self._metric.labels(value)
        return child
