"""S3Store: the SegmentStore port over S3 or any S3-compatible store (MinIO, Ceph, ...), via boto3.

Object key = `prefix + name`. Credentials, and the endpoint when `endpoint_url` is not given
(AWS_ENDPOINT_URL), come from boto3's usual chain.

An upload is a multipart upload created on the first full part; each part is sent as soon as
the buffer holds `part_size` bytes, so memory stays at about one part whatever the object
size. `complete()` sends the rest and CompleteMultipartUpload with `If-None-Match: *`, so it
never replaces an object; an object smaller than one part is a single conditional PutObject.

Retries: botocore retries a request whose answer was lost. If a conditional write did land the
first time, its retry meets a 412; to tell "our own write" from "somebody else's object", every
write carries a random token in its user metadata and a 412 is checked against it.

Checksums: parts and puts carry Content-MD5, which every S3 implementation verifies; botocore's
newer default CRC trailers (aws-chunked) are switched off because many S3-compatible servers
reject them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from i2d_segments.store.base import (
    IncompleteUpload,
    ObjectExistsError,
    ObjectInfo,
    SegmentStore,
    SegmentUpload,
    StoreError,
)
from i2d_segments.store.name_check import check_name

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PARTS = 10_000  # S3's maximum part count
_TOKEN_KEY = "i2d-upload"  # user metadata key (S3 lowercases them) carrying the write token
_STREAM_BUFFER = 1024 * 1024

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


def s3_client(endpoint_url: str | None = None, region_name: str | None = None) -> Any:
    """A boto3 S3 client with standard-mode retries and finite timeouts.

    A fresh Session per client: boto3's shared default session is not safe to build clients
    from in several threads at once.
    """
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
        tcp_keepalive=True,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region_name, config=config
    )


def _error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_not_found(e: ClientError) -> bool:
    return _error_code(e) in _NOT_FOUND_CODES


def _is_conflict(e: ClientError) -> bool:
    """412: the name exists; 409: a concurrent conditional write to it is in progress."""
    return _error_code(e) in _CONFLICT_CODES or _status(e) in (409, 412)


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


@contextlib.contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """Map boto errors to StoreError; an absent key to FileNotFoundError."""
    try:
        yield
    except ClientError as e:
        if _is_not_found(e):
            raise FileNotFoundError(f"no object: {what}") from e
        raise StoreError(f"{what}: {e}") from e
    except BotoCoreError as e:
        raise StoreError(f"{what}: {e}") from e


class S3Store(SegmentStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        part_size: int = 8 * 1024 * 1024,
        client: Any = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} (S3's minimum)")
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self._owns_client = client is None
        self.client: S3Client = (
            client if client is not None else s3_client(endpoint_url, region_name)
        )

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    def begin_upload(self, name: str) -> SegmentUpload:
        return _S3Upload(self, name)

    def written_by(self, key: str, token: str) -> bool:
        """Whether the object at `key` exists and was written by the write holding `token`."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _is_not_found(e):
                return False
            raise StoreError(f"head {key}: {e}") from e
        except BotoCoreError as e:
            raise StoreError(f"head {key}: {e}") from e
        return head.get("Metadata", {}).get(_TOKEN_KEY) == token

    def put_new(self, key: str, data: bytes, token: str) -> None:
        """PutObject only if `key` is absent; ObjectExistsError otherwise."""
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentMD5=_md5_b64(data),
                Metadata={_TOKEN_KEY: token},
                IfNoneMatch="*",
            )
        except ClientError as e:
            if _is_conflict(e):
                if self.written_by(key, token):
                    return  # a retry of our own put that had landed
                raise ObjectExistsError(f"object exists: {key}") from e
            raise StoreError(f"put {key}: {e}") from e
        except BotoCoreError as e:
            raise StoreError(f"put {key}: {e}") from e

    def put(self, name: str, data: bytes, *, overwrite: bool = True) -> None:
        key = self._key(name)
        if not overwrite:
            self.put_new(key, data, secrets.token_hex(16))
            return
        with _store_errors(f"put {key}"):
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentMD5=_md5_b64(data)
            )

    def get(self, name: str) -> bytes:
        key = self._key(name)
        with _store_errors(f"get {key}"):
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset={offset} length={length}")
        key = self._key(name)
        if length == 0:
            return b""  # HTTP cannot express an empty range
        what = f"get {key} bytes {offset}+{length}"
        try:
            with _store_errors(what):
                resp = self.client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
                )
                data = resp["Body"].read()
        except StoreError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError) and _error_code(cause) == "InvalidRange":
                raise StoreError(f"{what}: the range starts past the end of the object") from cause
            raise
        if len(data) != length:
            raise StoreError(f"{what}: got {len(data)} bytes, the object ends sooner")
        return data

    def open_stream(self, name: str) -> BinaryIO:
        key = self._key(name)
        with _store_errors(f"get {key}"):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        return io.BufferedReader(_BodyReader(body, key), buffer_size=_STREAM_BUFFER)

    def exists(self, name: str) -> bool:
        key = self._key(name)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _is_not_found(e):
                return False
            raise StoreError(f"head {key}: {e}") from e
        except BotoCoreError as e:
            raise StoreError(f"head {key}: {e}") from e
        return True

    def delete(self, name: str) -> None:
        key = self._key(name)
        with _store_errors(f"delete {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # ListObjectsV2 returns keys in UTF-8 byte order, which is Python's str order, and only
        # complete objects: no upload in progress is ever listed.
        paginator = self.client.get_paginator("list_objects_v2")
        cut = len(self.prefix)
        with _store_errors(f"list {self.prefix + prefix}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        obj["Key"][cut:], int(obj["Size"]), obj["LastModified"].timestamp()
                    )

    def list_incomplete_uploads(self) -> Iterator[IncompleteUpload]:
        paginator = self.client.get_paginator("list_multipart_uploads")
        cut = len(self.prefix)
        with _store_errors(f"list uploads {self.prefix}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    yield IncompleteUpload(
                        upload["Key"][cut:], upload["UploadId"], upload["Initiated"].timestamp()
                    )

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        self.abort_multipart(self._key(upload.name), upload.upload_id)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload; an upload already gone (aborted or completed) is fine."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as e:
            if _error_code(e) == "NoSuchUpload":
                return
            raise StoreError(f"abort upload of {key}: {e}") from e
        except BotoCoreError as e:
            raise StoreError(f"abort upload of {key}: {e}") from e

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


class _S3Upload(SegmentUpload):
    def __init__(self, store: S3Store, name: str) -> None:
        self._store = store
        self._key = store._key(name)
        self._token = secrets.token_hex(16)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._written = 0
        self._state = "open"  # -> "completed" | "aborted" | "failed" (abort() still cleans up)

    @property
    def bytes_written(self) -> int:
        return self._written

    def _check_open(self) -> None:
        if self._state != "open":
            raise StoreError(f"upload of {self._key} is {self._state}")

    def write(self, data: bytes | memoryview) -> None:
        self._check_open()
        view = memoryview(data).cast("B")
        size = self._store.part_size
        pos = 0
        try:
            while pos < len(view):
                take = min(size - len(self._buffer), len(view) - pos)
                self._buffer += view[pos : pos + take]
                pos += take
                if len(self._buffer) == size:
                    self._send_part(bytes(self._buffer))
                    self._buffer.clear()
        except BaseException:
            self._state = "failed"  # a part may be half sent: only abort() makes sense now
            raise
        self._written += len(view)

    def _send_part(self, body: bytes) -> None:
        client, bucket = self._store.client, self._store.bucket
        if len(self._parts) >= MAX_PARTS:
            raise StoreError(f"{self._key}: over {MAX_PARTS} parts; use a larger part_size")
        with _store_errors(f"upload part of {self._key}"):
            if self._upload_id is None:
                created = client.create_multipart_upload(
                    Bucket=bucket, Key=self._key, Metadata={_TOKEN_KEY: self._token}
                )
                self._upload_id = created["UploadId"]
            number = len(self._parts) + 1
            resp = client.upload_part(
                Bucket=bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
                ContentMD5=_md5_b64(body),
            )
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def complete(self) -> str:
        self._check_open()
        try:
            if self._upload_id is None:
                self._store.put_new(self._key, bytes(self._buffer), self._token)
            else:
                self._complete_multipart()
        except ObjectExistsError:
            self._state = "aborted"
            raise
        except BaseException:
            self._state = "failed"
            raise
        finally:
            self._buffer = bytearray()
        self._state = "completed"
        return f"s3://{self._store.bucket}/{self._key}"

    def _complete_multipart(self) -> None:
        assert self._upload_id is not None
        if self._buffer:
            self._send_part(bytes(self._buffer))
            self._buffer.clear()
        try:
            self._store.client.complete_multipart_upload(
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
                IfNoneMatch="*",
            )
        except ClientError as e:
            ours = _is_conflict(e) or _error_code(e) == "NoSuchUpload"
            if ours and self._store.written_by(self._key, self._token):
                return  # a retry of our own complete that had landed
            if _is_conflict(e):
                with contextlib.suppress(StoreError):  # else garbage collection aborts it
                    self._store.abort_multipart(self._key, self._upload_id)
                raise ObjectExistsError(f"object exists: {self._key}") from e
            raise StoreError(f"complete upload of {self._key}: {e}") from e
        except BotoCoreError as e:
            raise StoreError(f"complete upload of {self._key}: {e}") from e

    def abort(self) -> None:
        if self._state in ("completed", "aborted"):
            return
        self._state = "aborted"
        self._buffer = bytearray()
        if self._upload_id is not None:
            self._store.abort_multipart(self._key, self._upload_id)


class _BodyReader(io.RawIOBase):
    """botocore's StreamingBody as a raw stream, so io.BufferedReader (and tarfile) can use it."""

    def __init__(self, body: Any, key: str) -> None:
        self._body = body
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        target = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(target))
        except BotoCoreError as e:
            raise StoreError(f"reading {self._key}: {e}") from e
        target[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
