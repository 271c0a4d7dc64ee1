"""Identities (DESIGN.md): a sample is an input row, an item is stored content."""

from __future__ import annotations

import hashlib


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


MAX_KEY_ID = 256  # characters of a key used as the sample id as it is


def sample_id_for(url: str, key: str | None = None) -> str:
    """The row's own `key` when it carries one, else sha256(url).

    So a URL enqueued twice is one sample. A key longer than `MAX_KEY_ID` characters is
    identified by `key-sha256:<hex of the key>` instead: an index key is bounded (PostgreSQL's
    b-tree entries hold ~2.7 KB), and the row keeps its key as it is in its metadata.
    """
    if key is not None and key != "":
        key = str(key)
        if len(key) > MAX_KEY_ID:
            return "key-sha256:" + sha256_hex(key.encode("utf-8", "surrogatepass"))
        return key
    return sha256_hex(url.encode("utf-8"))
