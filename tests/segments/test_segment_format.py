"""The segment format as its readers see it: GNU tar, Python's tarfile, the webdataset package,
ranged reads at the recorded offsets, and verification of what the index recorded."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import pytest
import webdataset
from PIL import Image

from i2d_segments.segment import (
    MemberLocation,
    SegmentDigest,
    SegmentFormatError,
    SegmentWriter,
    iter_members,
    iter_samples,
    sample_members,
    scan_locations,
    verify_stream,
)

MTIME = 1_700_000_000
LONG_KEY = "k" * 130  # `<key>.json` is past ustar's 100-byte name field: needs a PAX header


def _image(fmt: str, size: tuple[int, int], seed: int) -> bytes:
    """A real encoded image; noise so it does not compress to nothing."""
    rng = random.Random(seed)
    img = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


@dataclass
class Item:
    key: str
    ext: str
    image: bytes
    meta: dict[str, object]
    caption: str | None

    @property
    def members(self) -> list[tuple[str, bytes]]:
        return sample_members(self.key, self.ext, self.image, self.meta, self.caption)


def _items() -> list[Item]:
    def key(i: int) -> str:
        return hashlib.sha256(f"item-{i}".encode()).hexdigest()

    return [
        Item(key(0), "jpg", _image("JPEG", (32, 24), 0), {"url": "http://a/0.jpg"}, "a cat"),
        Item(key(1), "png", _image("PNG", (16, 16), 1), {"url": "http://a/1.png"}, None),
        Item(key(2), "jpg", _image("JPEG", (40, 30), 2), {"url": "u2"}, "猫 café ☕ — naïve"),
        Item(LONG_KEY, "jpg", _image("JPEG", (20, 20), 3), {"url": "u3", "w": 20}, "long key"),
        # Over 64 KiB: written to the sink directly rather than joined with its headers.
        Item(key(4), "png", _image("PNG", (200, 200), 4), {"url": "u4"}, ""),
        Item(key(5), "webp", _image("WEBP", (8, 8), 5), {"url": "u5", "é": "ü"}, "x"),
    ]


@dataclass
class Written:
    path: Path
    digest: SegmentDigest
    locations: list[list[MemberLocation]]
    sink_calls: list[int]

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()


def _write(path: Path, items: Sequence[Item], mtime: int | None = MTIME) -> Written:
    calls: list[int] = []
    with path.open("wb") as f:

        def sink(chunk: bytes) -> None:
            calls.append(len(chunk))
            f.write(chunk)

        writer = SegmentWriter(sink, mtime=mtime)
        locations = [writer.add_sample(item.key, item.members) for item in items]
        digest = writer.finish()
    return Written(path, digest, locations, calls)


@pytest.fixture(scope="module")
def items() -> list[Item]:
    return _items()


@pytest.fixture(scope="module")
def written(items: list[Item], tmp_path_factory: pytest.TempPathFactory) -> Written:
    return _write(tmp_path_factory.mktemp("seg") / "seg.tar", items)


def _expected_names(items: Sequence[Item]) -> list[str]:
    return [f"{item.key}.{ext}" for item in items for ext, _ in item.members]


class _Trickle(io.RawIOBase):
    """A non-seekable stream that returns short reads, like a network body."""

    def __init__(self, data: bytes, max_read: int = 3001) -> None:
        self._src = io.BytesIO(data)
        self._max = max_read

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        chunk = self._src.read(min(len(b), self._max))
        b[: len(chunk)] = chunk
        return len(chunk)


def _trickle(data: bytes) -> BinaryIO:
    return cast(BinaryIO, _Trickle(data))


# --------------------------------------------------------------------------- other readers


def test_gnu_tar_lists_members_in_order(written: Written, items: list[Item]) -> None:
    listing = subprocess.run(
        ["tar", "tf", str(written.path)], check=True, capture_output=True, text=True
    )
    assert listing.stdout.splitlines() == _expected_names(items)
    assert listing.stderr == ""


def test_gnu_tar_extracts_long_name_member(written: Written, items: list[Item]) -> None:
    long_item = next(item for item in items if item.key == LONG_KEY)
    extracted = subprocess.run(
        ["tar", "-xOf", str(written.path), f"{LONG_KEY}.jpg"], check=True, capture_output=True
    )
    assert extracted.stdout == long_item.image


def test_python_tarfile_reads_same_members(written: Written, items: list[Item]) -> None:
    expected = [(f"{item.key}.{ext}", data) for item in items for ext, data in item.members]
    with tarfile.open(written.path) as tf:
        members = tf.getmembers()
        got = [(m.name, tf.extractfile(m).read()) for m in members]  # type: ignore[union-attr]
        offsets = [(m.offset_data, m.size) for m in members]
    assert got == expected
    assert all(m.isreg() and m.mode == 0o644 and m.mtime == MTIME for m in members)
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in members)
    # tarfile's own view of where each data member starts agrees with the writer's.
    assert offsets == [(loc.data_offset, loc.data_length) for s in written.locations for loc in s]


def test_webdataset_yields_samples_by_item_key(written: Written, items: list[Item]) -> None:
    samples = list(webdataset.WebDataset([str(written.path)], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [item.key for item in items]
    for sample, item in zip(samples, items, strict=True):
        exts = {k for k in sample if not k.startswith("__")}
        assert exts == {ext for ext, _ in item.members}
        assert sample[item.ext] == item.image
        assert json.loads(sample["json"]) == item.meta
        if item.caption is None:
            assert "txt" not in sample
        else:
            assert sample["txt"].decode("utf-8") == item.caption


# --------------------------------------------------------------------------- locations, digest


def test_recorded_locations_slice_exactly_the_member_bytes(
    written: Written, items: list[Item]
) -> None:
    data = written.data
    for item, locations in zip(items, written.locations, strict=True):
        assert [loc.name for loc in locations] == [f"{item.key}.{e}" for e, _ in item.members]
        for loc, (_, member_bytes) in zip(locations, item.members, strict=True):
            assert loc.data_length == len(member_bytes)
            assert data[loc.data_offset : loc.data_offset + loc.data_length] == member_bytes


def test_long_key_offsets_account_for_the_pax_header(written: Written, items: list[Item]) -> None:
    index = next(i for i, item in enumerate(items) if item.key == LONG_KEY)
    previous_end = written.locations[index - 1][-1]
    end_of_previous = previous_end.data_offset + previous_end.data_length
    end_of_previous += -end_of_previous % 512
    first = written.locations[index][0]
    # More than one header block precedes the data: naive `+512` arithmetic would be wrong.
    assert first.data_offset - end_of_previous > 512
    assert written.data[first.data_offset : first.data_offset + 4] == items[index].image[:4]


def test_digest_is_sha256_and_size_of_the_file(written: Written) -> None:
    data = written.data
    assert written.digest.bytes == len(data)
    assert written.digest.sha256 == hashlib.sha256(data).hexdigest()


def test_readers_report_the_writer_locations(written: Written, items: list[Item]) -> None:
    expected = [loc for sample in written.locations for loc in sample]
    data = written.data
    for stream in (io.BytesIO(data), _trickle(data)):
        members = list(iter_members(stream))
        assert [m.location for m in members] == expected
        assert [m.data for m in members] == [d for item in items for _, d in item.members]
    for stream in (io.BytesIO(data), _trickle(data)):
        assert list(scan_locations(stream)) == expected
    with written.path.open("rb") as f:  # seekable: data is seeked over
        assert list(scan_locations(f)) == expected


def test_iter_samples_groups_members_by_key(written: Written, items: list[Item]) -> None:
    samples = list(iter_samples(_trickle(written.data)))
    assert [s.key for s in samples] == [item.key for item in items]
    for sample, item, locations in zip(samples, items, written.locations, strict=True):
        assert sample.data == dict(item.members)
        assert list(sample.locations.values()) == locations


def test_iter_samples_can_load_metadata_only(written: Written, items: list[Item]) -> None:
    with written.path.open("rb") as f:
        samples = list(iter_samples(f, load={"json"}))
    for sample, item, locations in zip(samples, items, written.locations, strict=True):
        assert set(sample.data) == {"json"}
        assert json.loads(sample.data["json"]) == item.meta
        assert list(sample.locations.values()) == locations


# --------------------------------------------------------------------------- streaming, determinism


def test_sink_receives_bytes_as_samples_are_added(tmp_path: Path) -> None:
    rng = random.Random(7)
    received: list[int] = []
    writer = SegmentWriter(lambda chunk: received.append(len(chunk)), mtime=MTIME)
    image_size = 100_000
    for i in range(40):
        key = f"item{i:03d}"
        image = rng.randbytes(image_size)
        writer.add_sample(key, sample_members(key, "jpg", image, {"i": i}, f"caption {i}"))
        # Nothing is held back: after each sample the sink has everything written so far.
        assert sum(received) == writer.bytes_written
        assert writer.sample_count == i + 1
    digest = writer.finish()
    assert digest.bytes == sum(received) > 4_000_000
    assert len(received) >= 40
    assert max(received) <= image_size + 2048


def test_multi_megabyte_segment_reads_back_at_the_recorded_offsets(tmp_path: Path) -> None:
    """Larger than the readers' read-ahead, so skipping data seeks (file) or reads (stream)."""
    rng = random.Random(11)
    items = [
        Item(f"big{i:03d}", "jpg", rng.randbytes(rng.randrange(50_000, 300_000)), {"i": i}, "c")
        for i in range(30)
    ]
    big = _write(tmp_path / "big.tar", items)
    expected = [loc for sample in big.locations for loc in sample]
    with big.path.open("rb") as f:
        assert list(scan_locations(f)) == expected
    with big.path.open("rb") as f:
        metadata_only = list(iter_samples(f, load={"json"}))
    assert [json.loads(s.data["json"])["i"] for s in metadata_only] == list(range(30))
    assert [loc for s in metadata_only for loc in s.locations.values()] == expected
    members = list(iter_members(_trickle(big.data)))
    assert [m.data for m in members] == [d for item in items for _, d in item.members]
    assert verify_stream(_trickle(big.data), big.digest.sha256).ok


def test_same_inputs_give_identical_bytes(tmp_path: Path, items: list[Item]) -> None:
    first = _write(tmp_path / "a.tar", items)
    second = _write(tmp_path / "b.tar", _items())
    assert first.data == second.data
    assert first.digest == second.digest
    other_time = _write(tmp_path / "c.tar", items, mtime=MTIME + 1)
    assert other_time.data != first.data
    assert _write(tmp_path / "d.tar", items, mtime=None).data == (
        _write(tmp_path / "e.tar", items, mtime=0).data
    )


def test_output_is_what_tarfile_writes_for_the_same_members(
    tmp_path: Path, items: list[Item]
) -> None:
    ours = _write(tmp_path / "ours.tar", items).data
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for item in items:
            for ext, data in item.members:
                info = tarfile.TarInfo(f"{item.key}.{ext}")
                info.size, info.mtime, info.mode = len(data), MTIME, 0o644
                tf.addfile(info, io.BytesIO(data))
    theirs = reference.getvalue()
    # tarfile pads the archive to a 10 KiB record; the archive itself is the same bytes.
    assert theirs[: len(ours)] == ours
    assert theirs[len(ours) :] == bytes(len(theirs) - len(ours))


def test_empty_segment_is_a_valid_tar(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty.tar", [])
    assert empty.digest.bytes == 1024
    listing = subprocess.run(["tar", "tf", str(empty.path)], capture_output=True, text=True)
    assert (listing.returncode, listing.stdout) == (0, "")
    with tarfile.open(empty.path) as tf:
        assert tf.getmembers() == []
    assert list(iter_members(io.BytesIO(empty.data))) == []
    assert (
        list(webdataset.WebDataset([str(empty.path)], shardshuffle=False, empty_check=False)) == []
    )
    assert verify_stream(io.BytesIO(empty.data), empty.digest.sha256).ok


# --------------------------------------------------------------------------- verification


def test_verify_accepts_the_intact_segment(written: Written) -> None:
    result = verify_stream(_trickle(written.data), written.digest.sha256.upper())
    assert result.ok and result.complete and result.error is None
    assert (result.sha256, result.bytes) == (written.digest.sha256, written.digest.bytes)
    assert result.member_count == sum(len(s) for s in written.locations)
    assert verify_stream(io.BytesIO(written.data), written.digest.sha256, expected_bytes=10).error


def test_verify_detects_a_flipped_byte(written: Written) -> None:
    data = bytearray(written.data)
    image = written.locations[0][0]
    data[image.data_offset + image.data_length // 2] ^= 0x01
    in_data = verify_stream(io.BytesIO(bytes(data)), written.digest.sha256)
    assert not in_data.ok
    assert in_data.complete  # still a well-formed tar; only the digest tells
    assert in_data.sha256 == hashlib.sha256(data).hexdigest() != written.digest.sha256

    data = bytearray(written.data)
    data[written.locations[1][0].data_offset - 512 + 3] ^= 0x20  # inside a header's name
    in_header = verify_stream(io.BytesIO(bytes(data)), written.digest.sha256)
    assert not in_header.ok and not in_header.complete
    assert in_header.error is not None and "header" in in_header.error


@pytest.mark.parametrize("cut", ["mid_data", "member_boundary", "mid_end_marker", "one_byte"])
def test_verify_detects_truncation(written: Written, cut: str) -> None:
    data = written.data
    last = written.locations[-1][-1]
    end_of_members = last.data_offset + last.data_length + (-last.data_length % 512)
    length = {
        "mid_data": written.locations[2][0].data_offset + 100,
        "member_boundary": end_of_members,  # what tarfile's stream mode takes for a clean end
        "mid_end_marker": end_of_members + 512,
        "one_byte": len(data) - 1,
    }[cut]
    result = verify_stream(_trickle(data[:length]), written.digest.sha256)
    assert not result.ok and not result.complete
    assert result.bytes == length
    with pytest.raises(SegmentFormatError):
        list(scan_locations(io.BytesIO(data[:length])))


# --------------------------------------------------------------------------- other writers' tars


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_reader_agrees_with_tarfile_on_foreign_archives(fmt: int) -> None:
    names = ["a.jpg", "dir/b.c.json", "ü" * 3 + ".txt", "x" * 90 + "/" + "y" * 60 + ".png"]
    if fmt != tarfile.USTAR_FORMAT:
        names.append("z" * 300 + ".jpg")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tf:
        tf.addfile(tarfile.TarInfo("somedir/"), None)
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            payload = bytes([i]) * (700 * i + 1)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    buf.seek(0)
    with tarfile.open(fileobj=buf, encoding="utf-8") as tf:
        reference = [(m.name, m.offset_data, m.size) for m in tf.getmembers() if m.isreg()]
    ours = [(m.name, m.data_offset, m.data_length) for m in iter_members(_trickle(buf.getvalue()))]
    assert ours == reference
    assert [s.key for s in iter_samples(io.BytesIO(buf.getvalue()))] == [
        "a",
        "dir/b",
        "üüü",
        "x" * 90 + "/" + "y" * 60,
        *(["z" * 300] if fmt != tarfile.USTAR_FORMAT else []),
    ]


def test_reader_rejects_a_repeated_extension_within_a_sample() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for _ in range(2):
            info = tarfile.TarInfo("k.jpg")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(SegmentFormatError, match="two 'jpg'"):
        list(iter_samples(io.BytesIO(buf.getvalue())))


# --------------------------------------------------------------------------- writer contract


@pytest.mark.parametrize("key", ["", "a.b", "a/b", "tab\there", "new\nline"])
def test_invalid_keys_are_refused(key: str) -> None:
    writer = SegmentWriter(lambda _: None)
    with pytest.raises(ValueError):
        writer.add_sample(key, [("jpg", b"x")])
    with pytest.raises(ValueError):
        sample_members(key, "jpg", b"x", {}, None)


def test_invalid_members_are_refused_and_leave_the_stream_untouched(tmp_path: Path) -> None:
    out = io.BytesIO()
    writer = SegmentWriter(out.write, mtime=MTIME)
    writer.add_sample("good", [("jpg", b"1")])
    before = writer.bytes_written
    for bad in ([], [("", b"x")], [("j/pg", b"x")], [(".jpg", b"x")], [("a", b""), ("a", b"")]):
        with pytest.raises(ValueError):
            writer.add_sample("bad", bad)
        assert writer.bytes_written == before == len(out.getvalue())
    writer.add_sample("after", [("jpg", b"2"), ("seg.png", b"3")])
    digest = writer.finish()
    samples = list(iter_samples(io.BytesIO(out.getvalue())))
    assert [(s.key, s.data) for s in samples] == [
        ("good", {"jpg": b"1"}),
        ("after", {"jpg": b"2", "seg.png": b"3"}),
    ]
    assert writer.sample_count == 2
    assert digest.bytes == len(out.getvalue())


def test_finish_closes_the_writer() -> None:
    writer = SegmentWriter(lambda _: None)
    writer.add_sample("a", [("jpg", b"1")])
    digest = writer.finish()
    assert writer.finish() == digest
    with pytest.raises(RuntimeError):
        writer.add_sample("b", [("jpg", b"2")])


def test_a_failing_sink_poisons_the_writer() -> None:
    def sink(_: bytes) -> None:
        raise OSError("upload failed")

    writer = SegmentWriter(sink)
    with pytest.raises(OSError):
        writer.add_sample("a", [("jpg", b"1")])
    with pytest.raises(RuntimeError):
        writer.add_sample("b", [("jpg", b"2")])
    with pytest.raises(RuntimeError):
        writer.finish()


def test_sample_members_layout() -> None:
    meta = {"url": "http://x/é", "b": 1, "a": None}
    members = sample_members("abc", "png", b"\x89PNG", meta, "légende")
    assert members == [
        ("png", b"\x89PNG"),
        ("json", '{"a":null,"b":1,"url":"http://x/é"}'.encode()),
        ("txt", "légende".encode()),
    ]
    assert [ext for ext, _ in sample_members("abc", "jpg", b"", meta, None)] == ["jpg", "json"]
    assert sample_members("abc", "jpg", b"", {}, "")[2] == ("txt", b"")
    with pytest.raises(ValueError):
        sample_members("abc", "json", b"", {}, None)
