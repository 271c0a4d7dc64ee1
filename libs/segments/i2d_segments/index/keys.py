"""The index's compact identities: the same bytes from every engine, the migration and the tools.

The index stores no text id. A sample is found by `sample_key` (16 bytes of sha256 of its
sample_id: ids are arbitrary strings, a row's key or a hash), an item by `item_key` (the first
16 bytes of its item_id, itself a sha256), a url by `url_hash` (8 bytes of sha256, a signed
64-bit integer). 128 bits make a collision between two samples or two items out of reach at any
dataset size; 64 bits do not for urls, so a url lookup only returns candidates, which the caller
confirms against the rows in the segment manifests (`reader.segment_rows`).
"""

from __future__ import annotations

import hashlib


def _sha256(text: str) -> bytes:
    # surrogatepass: an id read from a broken input still has one stable key.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def sample_key(sample_id: str) -> bytes:
    return _sha256(sample_id)[:16]


def item_key(item_id: str) -> bytes:
    """An item_id is 64 lowercase hex (a sha256): its first 16 bytes. Anything else (ids the
    tests or another tool made up) is hashed first."""
    if len(item_id) == 64 and item_id == item_id.lower():  # no regex: 10k ids per commit
        try:
            raw = bytes.fromhex(item_id)
        except ValueError:
            raw = b""
        if len(raw) == 32:
            return raw[:16]
    return _sha256(item_id)[:16]


def url_hash(url: str) -> int:
    return int.from_bytes(_sha256(url)[:8], "big", signed=True)


def carrier_key(item: bytes) -> bytes:
    """The sample_key of the row that keeps an item's location when no sample row can: the row
    that stored the item now points at another item (its url served other bytes). No sample_id
    hashes to it in practice: it is a hash of a prefix no sample key starts with."""
    return hashlib.sha256(b"\x00item-location\x00" + item).digest()[:16]
