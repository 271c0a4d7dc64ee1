"""Identities (DESIGN.md): a sample is an input row, an item is stored content."""

from __future__ import annotations

import hashlib


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sample_id_for(url: str, key: str | None = None) -> str:
    """The row's own `key` when it carries one, else sha256(url).

    So a URL enqueued twice is one sample.
    """
    if key is not None and key != "":
        return str(key)
    return sha256_hex(url.encode("utf-8"))
