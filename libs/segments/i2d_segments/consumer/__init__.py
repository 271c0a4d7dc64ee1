"""Consumers of SEGMENT_CLOSED: the framework the materializer is built on, and yours.

Subclass `SegmentConsumer` (what to do with one committed segment, whole or item by item);
`ConsumerRunner` feeds it from the bus, or catches up over an index; `run_consumer` runs it as
its own program, booted as `img2dataset serve` boots a service (`examples/segment_consumer.py`).
"""

from i2d_segments.consumer.program import ConsumerSettings, run_consumer
from i2d_segments.consumer.runner import ConsumerContext, ConsumerRunner, SegmentConsumer

__all__ = [
    "ConsumerContext",
    "ConsumerRunner",
    "ConsumerSettings",
    "SegmentConsumer",
    "run_consumer",
]
