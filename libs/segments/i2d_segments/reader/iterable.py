"""A PyTorch-friendly iterable over the dataset, that does not need PyTorch.

`ItemIterable` is a `torch.utils.data.IterableDataset` when torch is installed (so a
`DataLoader` treats it as iterable-style) and a plain iterable otherwise. It holds only the
dataset's location, so it pickles into DataLoader workers; each worker opens its own reader.

Work is split by whole segments (each is streamed once, by one reader), those that hold images
(`DatasetReader.segment_ids`, so no consumer is handed only empty ones): segment `i` goes to
the consumer `i mod (world_size * num_workers)`, where a consumer is one DataLoader worker of
one distributed rank. Rank and world size come from the arguments, else from an initialized
`torch.distributed`, else from the `RANK`/`WORLD_SIZE` environment variables (torchrun sets
them), else 0 and 1.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from i2d_segments.reader.dataset import DatasetReader
from i2d_segments.reader.item import Item


def _iterable_base() -> type:
    try:
        from torch.utils.data import IterableDataset
    except ImportError:
        return object
    return IterableDataset


_Base: Any = _iterable_base()


def _torch_worker() -> tuple[int, int]:
    """(worker id, worker count) inside a DataLoader worker; (0, 1) elsewhere."""
    try:
        from torch.utils.data import get_worker_info
    except ImportError:
        return 0, 1
    info = get_worker_info()
    return (0, 1) if info is None else (int(info.id), int(info.num_workers))


def _distributed() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank()), int(dist.get_world_size())
    except ImportError:
        pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def assign_segments(
    segment_ids: Sequence[str], rank: int, world_size: int, worker: int, num_workers: int
) -> list[str]:
    """The segments one consumer reads: every segment goes to exactly one consumer."""
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{num_workers} out of range")
    consumers = world_size * num_workers
    me = rank * num_workers + worker
    return list(segment_ids[me::consumers])


class ItemIterable(_Base):
    def __init__(
        self,
        location: str,
        *,
        index_url: str | None = None,
        s3_endpoint_url: str | None = None,
        transform: Callable[[Item], Any] | None = None,
        load_images: bool = True,
        shuffle_segments: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.location = location
        self.index_url = index_url
        self.s3_endpoint_url = s3_endpoint_url
        self.transform = transform
        self.load_images = load_images
        self.shuffle_segments = shuffle_segments
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the segment order for the next pass (with `shuffle_segments`)."""
        self.epoch = epoch

    def _open(self) -> DatasetReader:
        return DatasetReader.open(
            self.location, index_url=self.index_url, s3_endpoint_url=self.s3_endpoint_url
        )

    def segments_for(self, worker: int = 0, num_workers: int = 1) -> list[str]:
        """This rank's share of the segments for one worker, in reading order."""
        rank, world_size = _distributed()
        rank = rank if self.rank is None else self.rank
        world_size = world_size if self.world_size is None else self.world_size
        with self._open() as reader:
            ids = reader.segment_ids()
        if self.shuffle_segments:
            # Same seed and epoch on every rank: the same permutation, so the split stays exact.
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(ids)
        return assign_segments(ids, rank, world_size, worker, num_workers)

    def __iter__(self) -> Iterator[Any]:
        worker, num_workers = _torch_worker()
        segments = self.segments_for(worker, num_workers)
        with self._open() as reader:
            for item in reader.iter_items(segments, load_images=self.load_images):
                yield item if self.transform is None else self.transform(item)
