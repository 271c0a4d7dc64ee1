"""SegmentStore port. Adapters: `local` (a folder) and `s3` (boto3, any S3-compatible store).

Object names are relative, `/`-separated (`segments/p00000/...tar`). A segment is written through
an upload that streams as it fills and becomes visible only at `complete()`, which refuses to
replace an existing object (S3 `If-None-Match: *`; locally a hard link that fails if the name
exists). Small side files (metadata, manifests, claim-check payloads) use `put`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO


class StoreError(RuntimeError):
    """A store operation failed."""


class ObjectExistsError(StoreError):
    """`complete()` or `put(..., overwrite=False)` found the name already taken."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    name: str
    size: int
    last_modified: float  # unix seconds


@dataclass(frozen=True, slots=True)
class IncompleteUpload:
    """An upload begun and neither completed nor aborted: garbage once its writer is gone.

    `upload_id` is opaque and only meaningful to the store that listed it. `started` is unix
    seconds; a store that cannot know the start gives the last write, which is never earlier,
    so a grace period measured from it stays on the safe side.
    """

    name: str
    upload_id: str
    started: float


class SegmentUpload(ABC):
    """A streaming write of one object; nothing is visible before `complete()`."""

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None: ...

    @property
    @abstractmethod
    def bytes_written(self) -> int: ...

    @abstractmethod
    def complete(self) -> str:
        """Publish the object atomically and return its URI.

        Raises ObjectExistsError if the name exists.
        """

    @abstractmethod
    def abort(self) -> None:
        """Discard everything written; safe to call twice or after a failed complete."""


class SegmentStore(ABC):
    @abstractmethod
    def uri(self, name: str) -> str:
        """The URI users and other services see for `name` (file:///... or s3://bucket/...)."""

    @abstractmethod
    def begin_upload(self, name: str) -> SegmentUpload: ...

    @abstractmethod
    def put(self, name: str, data: bytes, *, overwrite: bool = True) -> None:
        """Write a whole small object atomically."""

    @abstractmethod
    def get(self, name: str) -> bytes:
        """Whole object; FileNotFoundError if absent."""

    @abstractmethod
    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset` (one ranged GET on S3)."""

    @abstractmethod
    def open_stream(self, name: str) -> BinaryIO:
        """A sequential, readable binary stream of the whole object (for tar readers)."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove an object; absent is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Complete objects whose name starts with `prefix`, in name order."""

    def list_incomplete_uploads(self) -> Iterator[IncompleteUpload]:
        """Uploads still in progress or abandoned by a crashed writer (for garbage collection).

        A store whose uploads leave nothing behind when their writer dies has none to list.
        """
        return iter(())

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        """Discard an upload `list_incomplete_uploads` returned; already gone is not an error.

        Its writer, if still alive, can no longer complete it.
        """
        raise StoreError(f"{type(self).__name__} lists no incomplete uploads to abort")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
