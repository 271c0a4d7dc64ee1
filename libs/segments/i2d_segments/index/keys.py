"""The index's compact identities: the same numbers from every engine, the migrations and the
tools.

The index stores no text id and no 16-byte key: at billions of rows every byte of a row and of
its three b-trees counts, and PostgreSQL's b-tree entries are 16 bytes for a 64-bit key against
24 for a uuid (bench/scale.py measures the whole).

A sample (its sample_id) and an item (its item_id) each have an `Identity`: a 64-bit hash cut
into a *bucket* of `SLOTS` consecutive integers (its top 61 bits) and a 16-bit *check*. A row is
stored at one slot of its bucket (the first free one when it is first written: almost always
the first) and keeps its check in the row, so two identities whose 61 bits collide (a handful of
pairs among 5.85 billion rows) still get a row each and are told apart by their checks. Two
identities with the same 77 bits are one: about 1 chance in 10,000 of one such pair among 5.85
billion samples (n^2 / 2^78).

A url has a 32-bit hash: a url lookup returns candidates, which the caller confirms against the
rows of the segment manifests (`reader.segment_rows`); at 5.85 billion urls about one other url
shares each hash.

The three hashes a row needs beside its slots share one BIGINT column, `hashes` (`pack_hashes`):
the url hash in the high 32 bits (so a url lookup is a range of that column's b-tree), the
sample's check, and the item's check (on a success row: the check of the item it points at).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

R = TypeVar("R")

SLOTS = 8  # rows of one bucket; a bucket is a multiple of SLOTS
CHECK_BITS = 16
CHECK_MASK = (1 << CHECK_BITS) - 1
URL_SHIFT = 2 * CHECK_BITS  # the url hash is the high 32 bits of `hashes`


class Identity(NamedTuple):
    """Where a sample or an item lives in the index: one of the SLOTS rows from `bucket`, the
    one whose row carries `check`. A tuple: built, hashed and sorted in C (10k per commit)."""

    bucket: int  # signed 64-bit, a multiple of SLOTS
    check: int  # 0 .. 2**16 - 1

    @property
    def last_slot(self) -> int:
        return self.bucket + SLOTS - 1

    @classmethod
    def at(cls, slot: int, check: int) -> Identity:
        """The identity of a row at `slot` whose check is `check` (fast: rows by thousands)."""
        return _new(cls, (slot & _BUCKET_MASK, check))


def bucket_of(slot: int) -> int:
    return slot & _BUCKET_MASK


def _sha256(text: str) -> bytes:
    # surrogatepass: an id read from a broken input still has one stable key.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


_BUCKET_MASK = ~(SLOTS - 1)
_new = tuple.__new__  # NamedTuple's own __new__ is a Python function: 10k ids per commit


def identity_of(digest: bytes) -> Identity:
    """The identity from the first 10 bytes of a hash (also how migration 0008 turns the
    16-byte keys of 0007, the first 16 bytes of the same hashes, into identities)."""
    head = int.from_bytes(digest[:8], "big", signed=True)
    return _new(Identity, (head & _BUCKET_MASK, int.from_bytes(digest[8:10], "big")))


def sample_key(sample_id: str) -> Identity:
    return identity_of(_sha256(sample_id))


def item_digest(item_id: str) -> bytes:
    """An item_id is 64 lowercase hex (a sha256): its bytes. Anything else (ids the tests or
    another tool made up) is hashed first."""
    if len(item_id) == 64 and item_id == item_id.lower():  # no regex: 10k ids per commit
        try:
            raw = bytes.fromhex(item_id)
        except ValueError:
            raw = b""
        if len(raw) == 32:
            return raw
    return _sha256(item_id)


def item_key(item_id: str) -> Identity:
    return identity_of(item_digest(item_id))


def url_hash(url: str) -> int:
    """A signed 32-bit hash of the url."""
    return int.from_bytes(_sha256(url)[:4], "big", signed=True)


def carrier_key(item: Identity) -> Identity:
    """The identity of the row that keeps an item's location when no sample row can (the row
    that stored the item moved to a later segment, or points at another item now): a hash of a
    prefix no sample id is hashed with."""
    raw = item.bucket.to_bytes(8, "big", signed=True) + item.check.to_bytes(2, "big")
    return identity_of(hashlib.sha256(b"\x00item-location\x00" + raw).digest())


def pack_hashes(url: int, sample_check: int, item_check: int) -> int:
    return (url << URL_SHIFT) | (sample_check << CHECK_BITS) | item_check


def sample_check_of(hashes: int) -> int:
    return (hashes >> CHECK_BITS) & CHECK_MASK


def item_check_of(hashes: int) -> int:
    return hashes & CHECK_MASK


def url_range(url: str) -> tuple[int, int]:
    """The `hashes` values of every row of this url (a b-tree range)."""
    low = url_hash(url) << URL_SHIFT
    return low, low | ((1 << URL_SHIFT) - 1)


def walk_slots(
    read: Callable[[list[int]], list[R]],
    wanted: Iterable[Identity],
    identity: Callable[[R], Identity],
) -> list[R]:
    """The rows of the wanted identities, read slot by slot with `read(slots)` (one query per
    round: a point lookup of each slot, as cheap as a lookup by key). A bucket's rows fill its
    slots from the first and are never deleted, so a bucket is read on only while its last
    slot read held a row and some identity wanted in it has not been found: nearly always one
    round. The rows returned then also tell, for an identity not found, which slots of its
    bucket are taken (all those before the first free one)."""
    missing = set(wanted)
    buckets = {i.bucket for i in missing}
    out: list[R] = []
    for k in range(SLOTS):
        if not buckets:
            break
        rows = read([b + k for b in sorted(buckets)])
        out += rows
        found = {identity(r) for r in rows}
        missing -= found
        buckets = {i.bucket for i in missing} & {i.bucket for i in found}
    return out
