"""Identities: a sample is an input row, an item is stored content.

See docs/architecture.md, "Identities". Every input row is a sample. Its `sample_id` is, in
this order:
- the `key` the row carries (`key_id`);
- else its place in its list (`download`, `enqueue`): `row_id` of the list's identity, the
  row's number in it and the row's content, so re-reading the same list gives the same ids,
  two lists never share one, and a row changed in place is a new sample, not the old one's;
- else, for a bare record on `urls`, the hash of its content (`content_id`), so the same line
  produced twice is one sample (a bare URL: sha256 of the URL).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MAX_KEY_ID = 256  # characters of a key used as the sample id as it is


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def key_id(key: str) -> str:
    """The sample id of a row carrying its own `key`: the key itself, or
    `key-sha256:<hex of the key>` when it is longer than `MAX_KEY_ID` characters: an index key
    is bounded (PostgreSQL's b-tree entries hold ~2.7 KB), and the row keeps its key as it is
    in its metadata."""
    key = str(key)
    if len(key) > MAX_KEY_ID:
        return "key-sha256:" + sha256_hex(key.encode("utf-8", "surrogatepass"))
    return key


def content_id(value: bytes) -> str:
    """The sample id of a bare `urls` record without a key: the hash of its content."""
    return sha256_hex(value.strip())


def sample_id_for(url: str, key: str | None = None) -> str:
    """The sample id of a bare record holding `url` (and `key`): the key when there is one,
    else sha256(url) (the content of a bare URL line). Rows read from a list have their own
    ids (`row_id`)."""
    if key is not None and key != "":
        return key_id(key)
    return content_id(url.encode("utf-8"))


def list_id_for(path: str | Path) -> str:
    """The identity of a url list file within a dataset: a hash of its resolved path. The same
    file read again (a rerun, a resume) is the same list; another file is another list."""
    return sha256_hex(os.path.realpath(path).encode("utf-8", "surrogateescape"))[:32]


def row_id(list_id: str, place: int, content: bytes) -> str:
    """The sample id of the row at `place` (0-based) of list `list_id`, holding `content` (the
    row's columns as they travel, without its generated key)."""
    return sha256_hex(b"row\0%s\0%d\0" % (list_id.encode(), place) + content)
