"""The SegmentStore contract, run against every adapter: a local folder and S3 (moto server).

What the appender, the readers and garbage collection rely on: an upload streams and stays
invisible until `complete()`, which never replaces an object; ranged reads return exact bytes;
streams feed tarfile; listings are in name order and show only complete objects.
The S3-only tests at the end pin the wire behaviour real S3 and MinIO need (one ranged GET,
parts sent as the buffer fills, conditional writes).
"""

from __future__ import annotations

import io
import random
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from i2d_segments.store import (
    IncompleteUpload,
    ObjectExistsError,
    ObjectInfo,
    SegmentStore,
    SegmentUpload,
    StoreError,
)
from i2d_segments.store.local import LocalStore
from i2d_segments.store.s3 import MIN_PART_SIZE, S3Store
from tests.servers.s3 import S3Server, s3_client, s3_env

PART = MIN_PART_SIZE  # the smallest part S3 accepts, so a 12 MiB upload is three parts
BIG = 12 * 1024 * 1024 + 12_345
WRITE = 64 * 1024
PREFIX = "pfx/"


def _bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _write_in_pieces(upload: SegmentUpload, data: bytes, piece: int = WRITE) -> None:
    view = memoryview(data)
    for start in range(0, len(data), piece):
        upload.write(view[start : start + piece])


def _upload(store: SegmentStore, name: str, data: bytes) -> str:
    upload = store.begin_upload(name)
    _write_in_pieces(upload, data)
    return upload.complete()


def _incomplete(store: SegmentStore, name: str) -> list[IncompleteUpload]:
    return [u for u in store.list_incomplete_uploads() if u.name == name]


def _names(store: SegmentStore, prefix: str = "") -> list[str]:
    return [info.name for info in store.list(prefix)]


def _s3_store(request: pytest.FixtureRequest, **kwargs: Any) -> S3Store:
    """An S3Store whose credentials come from the environment, as in a service container."""
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for key, value in s3_env(server).items():
        monkeypatch.setenv(key, value)
    kwargs.setdefault("endpoint_url", server.endpoint_url)
    return S3Store(bucket, PREFIX, region_name=server.region, part_size=PART, **kwargs)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SegmentStore]:
    s: SegmentStore = (
        LocalStore(tmp_path / "store") if request.param == "local" else _s3_store(request)
    )
    yield s
    s.close()


@pytest.fixture
def s3_store(request: pytest.FixtureRequest) -> Iterator[S3Store]:
    s = _s3_store(request)
    yield s
    s.close()


# -- uploads --------------------------------------------------------------------------------


def test_streaming_upload_is_invisible_until_complete(store: SegmentStore) -> None:
    name = "segments/p00000/00000000000000000000-e1.tar"
    data = _bytes(BIG)
    upload = store.begin_upload(name)
    _write_in_pieces(upload, data)
    assert upload.bytes_written == len(data)

    assert not store.exists(name)
    assert _names(store) == []
    with pytest.raises(FileNotFoundError):
        store.get(name)
    with pytest.raises(FileNotFoundError):
        store.read_range(name, 0, 10)
    assert len(_incomplete(store, name)) == 1

    uri = upload.complete()

    assert uri == store.uri(name)
    assert store.exists(name)
    assert store.get(name) == data
    infos = list(store.list())
    assert [(i.name, i.size) for i in infos] == [(name, len(data))]
    assert abs(infos[0].last_modified - time.time()) < 300
    assert _incomplete(store, name) == []


@pytest.mark.parametrize("size", [100, BIG], ids=["one-part", "multipart"])
def test_complete_refuses_a_taken_name_and_keeps_the_first_object(
    store: SegmentStore, size: int
) -> None:
    name = "segments/p00003/00000000000000000042-e2.tar"
    first, second = _bytes(size, seed=1), _bytes(size, seed=2)
    # Both writers race for the name: both start before either completes.
    upload_a, upload_b = store.begin_upload(name), store.begin_upload(name)
    _write_in_pieces(upload_a, first)
    _write_in_pieces(upload_b, second)
    upload_a.complete()

    with pytest.raises(ObjectExistsError):
        upload_b.complete()

    assert store.get(name) == first
    upload_b.abort()  # still safe after the failed complete
    assert _names(store) == [name]
    assert _incomplete(store, name) == []
    with pytest.raises(ObjectExistsError):
        _upload(store, name, b"late writer")
    assert store.get(name) == first


def test_empty_upload_publishes_an_empty_object(store: SegmentStore) -> None:
    upload = store.begin_upload("empty")
    upload.complete()
    assert store.get("empty") == b""
    assert [(i.name, i.size) for i in store.list()] == [("empty", 0)]


def test_abort_leaves_nothing(store: SegmentStore) -> None:
    name = "segments/p00001/00000000000000000000-e1.tar"
    upload = store.begin_upload(name)
    _write_in_pieces(upload, _bytes(BIG))
    assert len(_incomplete(store, name)) == 1

    upload.abort()
    upload.abort()

    assert not store.exists(name)
    assert _names(store) == []
    assert _incomplete(store, name) == []
    with pytest.raises(StoreError):
        upload.write(b"more")
    with pytest.raises(StoreError):
        upload.complete()
    assert not store.exists(name)


def test_abandoned_upload_is_listed_and_garbage_collection_can_abort_it(
    store: SegmentStore,
) -> None:
    name = "segments/p00002/00000000000000000000-e1.tar"
    upload = store.begin_upload(name)
    _write_in_pieces(upload, _bytes(BIG))  # past one part, so S3 holds it too

    [abandoned] = _incomplete(store, name)
    assert abandoned.started <= time.time() + 5
    assert _names(store) == []

    store.abort_incomplete_upload(abandoned)
    store.abort_incomplete_upload(abandoned)  # already gone is fine

    assert _incomplete(store, name) == []
    # The writer, if it was only slow, can no longer publish a half-collected object.
    with pytest.raises(StoreError) as raised:
        upload.complete()
    assert not isinstance(raised.value, ObjectExistsError)
    assert not store.exists(name)
    upload.abort()


def test_local_upload_writes_a_hidden_temp_file_beside_its_name(tmp_path: Path) -> None:
    """Same folder, so the publishing link never crosses a filesystem; hidden, so never listed."""
    store = LocalStore(tmp_path)
    upload = store.begin_upload("segments/p00000/a.tar")
    upload.write(b"partial")
    [temp] = (tmp_path / "segments/p00000").iterdir()
    assert temp.name.startswith(".a.tar.") and temp.name.endswith(".part")
    with pytest.raises(ValueError):
        store.put(f"segments/p00000/{temp.name}", b"not a name objects may take")

    upload.complete()

    assert [p.name for p in (tmp_path / "segments/p00000").iterdir()] == ["a.tar"]


# -- reads ----------------------------------------------------------------------------------


def test_read_range_returns_exact_bytes(store: SegmentStore) -> None:
    name = "segments/p00000/00000000000000000007-e1.tar"
    data = _bytes(1_000_003, seed=7)
    _upload(store, name, data)
    rng = random.Random(3)
    ranges = [(0, 1), (0, len(data)), (len(data) - 1, 1), (512, 1024), (123_457, 99_991)]
    for _ in range(10):
        offset = rng.randrange(len(data))
        ranges.append((offset, rng.randint(1, len(data) - offset)))
    for offset, length in ranges:
        assert store.read_range(name, offset, length) == data[offset : offset + length]
    assert store.read_range(name, 10, 0) == b""


def test_read_range_out_of_bounds_is_an_error(store: SegmentStore) -> None:
    store.put("blob", b"0123456789")
    with pytest.raises(StoreError):
        store.read_range("blob", 10, 1)  # starts at the end
    with pytest.raises(StoreError):
        store.read_range("blob", 5, 6)  # runs past the end
    with pytest.raises(ValueError):
        store.read_range("blob", -1, 2)
    with pytest.raises(FileNotFoundError):
        store.read_range("absent", 0, 1)


def test_open_stream_feeds_tarfile_in_stream_mode(store: SegmentStore) -> None:
    members = {
        "aaaa.jpg": _bytes(2 * 1024 * 1024 + 1, seed=11),
        "aaaa.json": b'{"url": "http://127.0.0.1/a.jpg"}',
        "aaaa.txt": b"a caption",
        "bbbb.png": _bytes(70_001, seed=12),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member_name, payload in members.items():
            info = tarfile.TarInfo(member_name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    _upload(store, "segments/p00000/tarred.tar", buffer.getvalue())

    seen: dict[str, bytes] = {}
    with (
        store.open_stream("segments/p00000/tarred.tar") as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        for member in tar:
            extracted = tar.extractfile(member)
            assert extracted is not None
            seen[member.name] = extracted.read()
    assert seen == members

    with pytest.raises(FileNotFoundError):
        store.open_stream("absent.tar")


# -- small objects, listing, deletion, names ---------------------------------------------------


def test_put_get_and_overwrite_rules(store: SegmentStore) -> None:
    store.put("meta/x.json", b"one")
    assert store.get("meta/x.json") == b"one"

    with pytest.raises(ObjectExistsError):
        store.put("meta/x.json", b"two", overwrite=False)
    assert store.get("meta/x.json") == b"one"

    store.put("meta/x.json", b"three")
    assert store.get("meta/x.json") == b"three"

    store.put("meta/y.json", b"new", overwrite=False)
    assert store.get("meta/y.json") == b"new"
    assert _names(store) == ["meta/x.json", "meta/y.json"]
    with pytest.raises(FileNotFoundError):
        store.get("meta/absent.json")


def test_list_by_prefix_in_name_order(store: SegmentStore) -> None:
    # `.` sorts before `/`, and `/` before letters: a folder's objects are not simply "first".
    names = [
        "b",
        "a/c/d",
        "ab",
        "a.b",
        "a/b",
        "segments/p00001/00000000000000000000-e1.tar",
        "segments/p00000/00000000000000000100-e1.tar",
        "segments/p00000/00000000000000000000-e3.tar",
    ]
    for i, name in enumerate(names):
        store.put(name, b"x" * i)
    in_progress = store.begin_upload("a/zz")
    in_progress.write(b"not yet")

    assert _names(store) == sorted(names)
    sizes = {info.name: info.size for info in store.list()}
    assert sizes == {name: i for i, name in enumerate(names)}
    assert _names(store, "a") == ["a.b", "a/b", "a/c/d", "ab"]
    assert _names(store, "a/") == ["a/b", "a/c/d"]
    assert _names(store, "segments/p0000") == sorted(n for n in names if n.startswith("segm"))
    assert _names(store, "segments/p00000/") == [
        "segments/p00000/00000000000000000000-e3.tar",
        "segments/p00000/00000000000000000100-e1.tar",
    ]
    assert _names(store, "zzz") == []
    assert _names(store, "nowhere/") == []
    assert _names(store, "/a") == []
    assert _names(store, "a//") == []
    assert _names(store, "b/") == []  # "b" is an object, not a folder
    assert all(isinstance(info, ObjectInfo) for info in store.list())
    in_progress.abort()


def test_delete_removes_and_tolerates_absent(store: SegmentStore) -> None:
    store.put("staging/claim", b"payload")
    store.put("staging/other", b"kept")
    store.delete("staging/claim")
    assert not store.exists("staging/claim")
    with pytest.raises(FileNotFoundError):
        store.get("staging/claim")
    store.delete("staging/claim")
    store.delete("never/was")
    assert _names(store) == ["staging/other"]


@pytest.mark.parametrize("bad", ["", "/abs", "a//b", "../x", "a/../b", "a/./b", "a/", "."])
def test_invalid_names_are_rejected(store: SegmentStore, bad: str) -> None:
    with pytest.raises(ValueError):
        store.put(bad, b"x")
    with pytest.raises(ValueError):
        store.begin_upload(bad)
    with pytest.raises(ValueError):
        store.get(bad)


def test_uri_names_the_object_where_users_find_it(store: SegmentStore) -> None:
    name = "segments/p00000/00000000000000000000-e1.tar"
    store.put(name, b"tar bytes")
    uri = store.uri(name)
    parsed = urlparse(uri)
    if isinstance(store, LocalStore):
        assert parsed.scheme == "file"
        assert Path(unquote(parsed.path)).read_bytes() == b"tar bytes"
    else:
        assert isinstance(store, S3Store)
        assert uri == f"s3://{store.bucket}/{PREFIX}{name}"
        body = store.client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        assert body["Body"].read() == b"tar bytes"


# -- S3 on the wire -------------------------------------------------------------------------


class _Wire:
    """Records every HTTP request an S3 client sends (after signing, once per attempt).

    Each entry: operation name, HTTP method, lowercased headers, body size (Content-Length).
    """

    def __init__(self, client: Any) -> None:
        self.requests: list[tuple[str, str, dict[str, str], int]] = []
        client.meta.events.register("before-send.s3.*", self._record)

    def _record(self, request: Any, **kwargs: Any) -> None:
        operation = kwargs["event_name"].rsplit(".", 1)[-1]
        headers = {
            k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()
        }
        size = int(headers.get("content-length", -1))
        self.requests.append((operation, request.method, headers, size))

    def operations(self) -> list[str]:
        return [op for op, _, _, _ in self.requests]


def test_s3_read_range_is_one_ranged_get(s3_store: S3Store) -> None:
    data = _bytes(100_000)
    s3_store.put("segments/p00000/r.tar", data)
    wire = _Wire(s3_store.client)

    assert s3_store.read_range("segments/p00000/r.tar", 4_096, 1_000) == data[4_096:5_096]

    [(operation, method, headers, _)] = wire.requests
    assert (operation, method) == ("GetObject", "GET")
    assert headers["range"] == "bytes=4096-5095"


def test_s3_open_stream_is_one_plain_get(s3_store: S3Store) -> None:
    data = _bytes(3 * 1024 * 1024)
    s3_store.put("segments/p00000/s.tar", data)
    wire = _Wire(s3_store.client)

    with s3_store.open_stream("segments/p00000/s.tar") as stream:
        assert stream.read(10) == data[:10]
        assert stream.read() == data[10:]

    [(operation, method, headers, _)] = wire.requests
    assert (operation, method) == ("GetObject", "GET")
    assert "range" not in headers


def test_s3_upload_sends_parts_as_the_buffer_fills(s3_store: S3Store) -> None:
    wire = _Wire(s3_store.client)
    upload = s3_store.begin_upload("segments/p00000/streamed.tar")
    data = _bytes(BIG)
    _write_in_pieces(upload, data)

    # Two full parts are already on the server; only the tail is held in memory.
    assert wire.operations() == ["CreateMultipartUpload", "UploadPart", "UploadPart"]
    assert [size for op, _, _, size in wire.requests if op == "UploadPart"] == [PART, PART]
    assert all("content-md5" in h for op, _, h, _ in wire.requests if op == "UploadPart")

    upload.complete()

    assert wire.operations()[3:] == ["UploadPart", "CompleteMultipartUpload"]
    assert wire.requests[3][3] == len(data) - 2 * PART
    assert wire.requests[4][2]["if-none-match"] == "*"
    assert s3_store.get("segments/p00000/streamed.tar") == data


def test_s3_small_object_is_one_conditional_put(s3_store: S3Store) -> None:
    wire = _Wire(s3_store.client)
    upload = s3_store.begin_upload("small")
    upload.write(b"tiny")
    upload.complete()
    s3_store.put("side", b"file", overwrite=False)

    assert wire.operations() == ["PutObject", "PutObject"]
    assert all(headers["if-none-match"] == "*" for _, _, headers, _ in wire.requests)


def test_s3_retry_of_a_landed_conditional_put_is_not_a_conflict(s3_store: S3Store) -> None:
    """A PutObject whose response was lost is retried; the retry's 412 is our own write."""
    client: Any = s3_store.client
    retried: list[int] = []

    def lose_first_response(**kwargs: Any) -> int | None:
        if kwargs["attempts"] == 1:
            retried.append(1)
            return 0  # retry at once, as botocore does when a response never arrives
        return None

    client.meta.events.register("needs-retry.s3.PutObject", lose_first_response)
    upload = s3_store.begin_upload("landed-once")
    upload.write(b"payload")
    upload.complete()
    s3_store.put("side-landed-once", b"meta", overwrite=False)

    assert len(retried) == 2
    assert s3_store.get("landed-once") == b"payload"
    assert s3_store.get("side-landed-once") == b"meta"


def test_s3_store_finds_endpoint_and_credentials_in_the_environment(
    request: pytest.FixtureRequest, s3_server: S3Server
) -> None:
    # What a service container gets: no endpoint argument, everything from AWS_* variables.
    store = _s3_store(request, endpoint_url=None)
    try:
        store.put("env/probe", b"reachable")
        raw = s3_client(s3_server)
        body = raw.get_object(Bucket=store.bucket, Key=f"{PREFIX}env/probe")["Body"].read()
        raw.close()
        assert body == b"reachable"
    finally:
        store.close()


def test_s3_part_size_below_the_s3_minimum_is_refused() -> None:
    with pytest.raises(ValueError):
        S3Store("bucket", part_size=MIN_PART_SIZE - 1, client=object())
