"""The reader API: the dataset for training code.

    from i2d_segments.reader import DatasetReader

    with DatasetReader.open("out") as ds:                    # or "s3://bucket/ds/", index_url=...
        for item in ds:                                     # every image, segment by segment
            item.item_id, item.image, item.meta["url"], item.caption
        ds.get(item_id); ds.get_sample(sample_id); ds.get_url(url)   # random access

`ItemIterable` is the same stream for a PyTorch DataLoader (split across ranks and workers).
"""

from i2d_segments.reader.dataset import CorruptItemError, DatasetReader, sample_meta
from i2d_segments.reader.item import Item
from i2d_segments.reader.iterable import ItemIterable, assign_segments
from i2d_segments.reader.segment_rows import SegmentRows

__all__ = [
    "CorruptItemError",
    "DatasetReader",
    "Item",
    "ItemIterable",
    "SegmentRows",
    "assign_segments",
    "sample_meta",
]
