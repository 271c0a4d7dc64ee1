"""What the reader yields: one stored image with its metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Item:
    """One image of the dataset.

    - `item_id`: sha256 of the original download; the WebDataset key in the segment;
    - `ext`/`image`: the stored (resized, encoded) image bytes and their extension;
    - `meta`: img2dataset's per-sample metadata. Sequential reads give the segment's `.json`
      member; random access by sample or url gives that sample's row from the index; random
      access by item_id gives the item's index row (sizes and mime, no url);
    - `caption`: the `.txt` member (sequential) or the sample's caption (random access);
    - where it lives: `segment_id`, `data_offset`, `data_length` (a ranged read of the object
      `segments/<segment_id>.tar` at that offset returns exactly `image`).
    """

    item_id: str
    segment_id: str
    ext: str
    image: bytes
    meta: dict[str, Any] = field(default_factory=dict)
    caption: str | None = None
    data_offset: int = 0
    data_length: int = 0

    @property
    def url(self) -> str | None:
        url = self.meta.get("url")
        return None if url is None else str(url)

    @property
    def sample_id(self) -> str | None:
        sid = self.meta.get("sample_id")
        return None if sid is None else str(sid)
