"""The Bus port: topics with partitions, producers with delivery reports, consumer groups."""

from i2d_segments.bus.base import (
    Bus,
    BusError,
    Consumer,
    DeliveryCallback,
    EmbeddedBus,
    HeldPartitions,
    Message,
    PartitionLag,
    Producer,
    RebalanceListener,
    TopicPartition,
)

__all__ = [
    "Bus",
    "BusError",
    "Consumer",
    "DeliveryCallback",
    "EmbeddedBus",
    "HeldPartitions",
    "Message",
    "PartitionLag",
    "Producer",
    "RebalanceListener",
    "TopicPartition",
]
