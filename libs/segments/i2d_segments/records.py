"""Records and events on the bus: versioned pydantic models and their named serializers.

- `urls` values: a bare URL or a JSON object (leading `{`), as `kafka-console-producer` writes them.
- `APPEND` values: serializer `append.v1`, a small binary frame (magic, version, metadata JSON
  length, metadata JSON, payload) so image bytes travel without base64.
- `SEGMENT_CLOSED` values: serializer `segment_closed.v1`, plain JSON.
"""

from __future__ import annotations

import builtins
import json
import re
import struct
import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from i2d_segments import safejson
from i2d_segments.ids import content_id, key_id


class MalformedRecord(ValueError):
    """A record that cannot be decoded.

    It becomes a failed sample or a logged skip, never a crash.
    """


# --------------------------------------------------------------------------- urls topic


class UrlRow(BaseModel):
    """One input row, as read from a file or from the `urls` topic."""

    model_config = ConfigDict(frozen=True)

    url: str
    caption: str | None = None
    key: str | None = None
    # img2dataset's `key` of the row: its shard and position in the url list, zero-padded
    # (`000010005`). The `key` metadata column when the row carries no key of its own, so
    # users can join on it as with img2dataset; it is not the row's identity (sample_id).
    row_key: str | None = None
    # The row's identity from its place in a list (ids.row_id), set by whoever read the list
    # (`download`, `enqueue`); travels as the record's "sample_id" field. None for a bare
    # record, identified by its content.
    row_id: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("url", "caption", "key", "row_key", "row_id", "extra", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        """JSON may carry lone surrogates (`"\\ud800"`), which no UTF-8 member, manifest or
        index row can hold: replace them here, at the boundary, so every later stage can
        encode strictly. The extra columns (the row's other fields) nest at most
        `safejson.MAX_DEPTH` levels, so every later stage can serialize them."""
        if value is None or (type(value) is str and value.isascii()) or value == {}:
            return value  # the common cases, per field of every row: nothing to check
        if isinstance(value, dict) and safejson.value_too_deep(value):
            raise ValueError(safejson.TOO_DEEP)
        return _replace_surrogates(value)

    @property
    def sample_id(self) -> str:
        """Every row is a sample (docs/architecture.md, "Identities"): its own key, else its
        place in its list, else the hash of its content (the same bare line produced twice is
        one row)."""
        if self.key is not None and self.key != "":
            return key_id(self.key)
        if self.row_id:
            return key_id(self.row_id)
        return content_id(row_content(self.url, self.caption, None, self.extra, self.row_key))

    @property
    def metadata_key(self) -> str | None:
        return self.key if self.key is not None else self.row_key


class UnparsedRow(BaseModel):
    """An input record without a usable url: a bad row is reported, never dropped. It travels
    as a JSON object without a url, with its `row_key`, what it held, and `malformed` (why),
    which the fetcher records as a failed sample "malformed row: <why>" keyed by its text,
    like any malformed `urls` record."""

    model_config = ConfigDict(frozen=True)

    value: bytes

    @classmethod
    def of(
        cls, reason: str, row_key: str | None, held: dict[str, Any], row_id: str | None = None
    ) -> UnparsedRow:
        obj: dict[str, Any] = {"malformed": reason, "row_key": row_key}
        if row_id is not None:
            obj["sample_id"] = row_id
        return cls(value=json_row({**obj, **held}))

    @property
    def sample_id(self) -> str:
        return unparsed_sample_id(self.value)


def unparsed_sample_id(value: bytes) -> str:
    """A record that cannot be read as a row: the identity it carries ("sample_id", the place
    in its list a reader gave it), else the hash of its text."""
    carried = _field_of(value, "sample_id")
    return key_id(carried) if carried else content_id(value)


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        if value.isascii():  # no surrogate in ASCII text; isascii() is a flag, not a scan
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    return value


def parse_url_value(
    value: bytes | str, url_col: str = "url", caption_col: str | None = "caption"
) -> UrlRow | None:
    """Decode one `urls` record. Returns None for a blank line; raises MalformedRecord."""
    text = value.decode("utf-8", errors="strict") if isinstance(value, bytes) else value
    text = text.strip()
    if not text:
        return None
    if not text.startswith("{"):
        return UrlRow(url=text)
    plain = None
    if url_col == "url" and caption_col not in _PLAIN_ROW_FIELDS:
        plain = _PLAIN_ROW.fullmatch(text)
    if plain is not None and plain[1].strip():
        # The row `encode_url_row` writes for every row of a txt list, with no escape in its
        # strings, read as the general path below reads it without json.loads and its Python
        # layers (11.4 -> 4.2 us). Any other record, or other column names, takes that path.
        url, row_key, row_id = plain.groups()
        if row_id:
            return UrlRow(url=url.strip(), row_key=row_key, row_id=row_id)
        return UrlRow(url=url.strip(), row_key=row_key)
    try:
        obj = safejson.loads(text)
    except ValueError as e:  # bad syntax, nested too deep, a number Python cannot read
        raise MalformedRecord(f"invalid JSON row: {e}") from e
    if not isinstance(obj, dict):
        raise MalformedRecord("JSON row is not an object")
    url = obj.pop(url_col, None)
    if not isinstance(url, str) or not url.strip():
        # A producer that could not read a row of its own input says why (UnparsedRow).
        reason = obj.get("malformed")
        raise MalformedRecord(
            reason if isinstance(reason, str) else f"JSON row has no {url_col!r} string"
        )
    caption = obj.pop(caption_col, None) if caption_col else None
    key = obj.pop("key", None)
    row_key = obj.pop("row_key", None)
    row_id = obj.pop("sample_id", None)
    # Only the fields the record has: a default is not validated again (two fifths of a
    # plain row's model, which has url, row_key and sample_id only).
    fields: dict[str, Any] = {"url": url.strip()}
    if caption is not None:
        fields["caption"] = str(caption)
    if key is not None and key != "":
        fields["key"] = str(key)
    if row_key is not None:
        fields["row_key"] = str(row_key)
    if row_id is not None and row_id != "":
        fields["row_id"] = str(row_id)
    if obj:
        fields["extra"] = obj
    return UrlRow(**fields)


# `{"url":"...","row_key":"...","sample_id":"..."}` exactly, strings without `"`, `\` or
# control characters (which JSON must escape): each string's text is its value.
_JSON_PLAIN_STRING = r'"([^"\\\x00-\x1f]*)"'
# Its fields the general path would read as a caption, were they the caption column.
_PLAIN_ROW_FIELDS = ("row_key", "sample_id")
_PLAIN_ROW = re.compile(
    rf'\{{"url":{_JSON_PLAIN_STRING},"row_key":{_JSON_PLAIN_STRING},'
    rf'"sample_id":{_JSON_PLAIN_STRING}\}}'
)


def row_key_of(value: bytes) -> str | None:
    """The `row_key` of a malformed `urls` record, when it still is a JSON object with one
    (read beside the values too deep to parse, if need be)."""
    return _field_of(value, "row_key")


def _field_of(value: bytes, name: str) -> str | None:
    if not value.lstrip().startswith(b"{"):
        return None
    try:
        text = value.decode("utf-8")
        obj = safejson.loads(text)
    except safejson.JsonRejected:
        obj = safejson.scalar_members(text)
    except ValueError:  # bad syntax, UnicodeDecodeError
        return None
    found = obj.get(name) if isinstance(obj, dict) else None
    return found if isinstance(found, str) else None


def encode_url_row(row: UrlRow | UnparsedRow) -> bytes:
    """The JSON form of a row on the `urls` topic (a bare URL when it has nothing else)."""
    if isinstance(row, UnparsedRow):
        return row.value
    if (
        row.row_key is not None
        and row.row_id is not None
        and row.caption is None
        and row.key is None
        and not row.extra
    ):
        # A list's plain url row (every row of a txt list): the text json_row writes for
        # {"url", "row_key", "sample_id"}, with the same string encoder, without the dict and
        # the encoder's Python layers.
        text = (
            f'{{"url":{_json_str(row.url)},"row_key":{_json_str(row.row_key)},'
            f'"sample_id":{_json_str(row.row_id)}}}'
        )
        return text.encode("utf-8", "replace")
    return row_content(row.url, row.caption, row.key, row.extra, row.row_key, row.row_id)


def row_content(
    url: str,
    caption: str | None,
    key: str | None,
    extra: dict[str, Any],
    row_key: str | None = None,
    row_id: str | None = None,
) -> bytes:
    """A row as it travels on `urls`: a bare URL when it has nothing else, else a JSON object.
    Without `row_key` and `row_id`, the row's content (what its identity hashes)."""
    if caption is None and key is None and row_key is None and row_id is None and not extra:
        return url.encode("utf-8")
    obj: dict[str, Any] = {"url": url}
    if caption is not None:
        obj["caption"] = caption
    if key is not None:
        obj["key"] = key
    if row_key is not None:
        obj["row_key"] = row_key
    if row_id is not None:
        obj["sample_id"] = row_id
    obj.update(extra)
    return json_row(obj)


# default=str: a parquet column may hold dates or decimals, which JSON has no type for. One
# encoder for every row: `json.dumps` with options builds a new JSONEncoder at each call.
_ROW_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
# How that encoder writes a string (ensure_ascii=False): json's own function for it.
_json_str = json.encoder.encode_basestring


def json_row(obj: dict[str, Any]) -> bytes:
    # "replace": a lone surrogate a malformed row still holds becomes "?" (UrlRow's are gone).
    return _ROW_ENCODER.encode(obj).encode("utf-8", "replace")


# --------------------------------------------------------------------------- APPEND topic


class SampleStatus(StrEnum):
    SUCCESS = "success"
    FAILED_TO_DOWNLOAD = "failed_to_download"
    FAILED_TO_RESIZE = "failed_to_resize"


# Each status's text, for code that runs per row: an enum's `.value` is a Python-level lookup.
STATUS_TEXT = {s: s.value for s in SampleStatus}


class AppendMeta(BaseModel):
    """Everything about one input row's outcome except the image bytes themselves."""

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    sample_id: str
    url: str
    caption: str | None = None
    key: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    status: SampleStatus
    error_message: str | None = None
    # Successes only below.
    item_id: str | None = None  # sha256 of the original downloaded bytes
    ext: str | None = None  # jpg, png, webp: the member suffix in the segment
    mime: str | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    original_size: int | None = None  # bytes downloaded
    exif: str | None = None
    hashes: dict[str, str] = Field(default_factory=dict)  # compute_hash column -> hex digest
    staged: str | None = None  # claim check: store object holding the payload
    fetched_at: float = Field(default_factory=time.time)

    def sample_json(self) -> dict[str, Any]:
        """img2dataset's per-sample metadata (the `.json` member and the parquet row)."""
        out: dict[str, Any] = {
            "url": self.url,
            "caption": self.caption,
            "key": self.key if self.key is not None else self.sample_id,
            "status": self.status.value,
            "error_message": self.error_message,
            "width": self.width,
            "height": self.height,
            "original_width": self.original_width,
            "original_height": self.original_height,
            "exif": self.exif,
        }
        out.update(self.hashes)
        out["sample_id"] = self.sample_id
        # An extra column never replaces one of the row's own (a `urls` record may carry any
        # field, e.g. a "status" of its source): the metadata stays the truth about the row.
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


def row_identity(row: UrlRow) -> dict[str, Any]:
    """The fields of an APPEND record that come from its input row, success or failure."""
    return {
        "sample_id": row.sample_id,
        "url": row.url,
        "caption": row.caption,
        "key": row.metadata_key,
        "extra": row.extra,
    }


class AppendRecord(BaseModel):
    """One record of the APPEND topic: a success with its payload, or a failure without."""

    model_config = ConfigDict(frozen=True)

    meta: AppendMeta
    payload: bytes | None = None

    @classmethod
    def failure(
        cls,
        row: UrlRow | AppendMeta | bytes,
        error: str,
        status: SampleStatus = SampleStatus.FAILED_TO_DOWNLOAD,
    ) -> AppendRecord:
        """The failed sample of one input row, with its reason and no payload: the one way a
        failure record is made. `row` is what is known of the row: its `UrlRow`; the record of
        a row that failed after it was fetched (a success whose bytes cannot be published or
        read back: it keeps the row's columns, loses its item, and keeps its claim check so
        the appender still deletes it); or the raw `urls` value of a row that cannot be parsed
        (identified by the id it carries, else the hash of its text, which stands as its url)."""
        if isinstance(row, AppendMeta):
            meta = row.model_copy(
                update={"status": status, "error_message": error, "item_id": None}
            )
        elif isinstance(row, UrlRow):
            meta = AppendMeta(**row_identity(row), status=status, error_message=error)
        else:
            text = row.decode("utf-8", errors="replace").strip()
            meta = AppendMeta(
                sample_id=unparsed_sample_id(row),
                url=text[:4096],
                key=row_key_of(row),
                status=status,
                error_message=error,
            )
        return cls(meta=meta, payload=None)

    @property
    def key(self) -> bytes:
        """Successes are keyed by content (same bytes, same partition); failures by sample."""
        if self.meta.status is SampleStatus.SUCCESS and self.meta.item_id:
            return self.meta.item_id.encode()
        return self.meta.sample_id.encode()


APPEND_SERIALIZER = "append.v1"
_APPEND_MAGIC = b"I2DA"
_APPEND_HEADER = struct.Struct(">4sBI")  # magic, version, metadata length


def encode_append(record: AppendRecord) -> bytes:
    meta = record.meta.model_dump_json().encode("utf-8")
    payload = record.payload or b""
    return b"".join((_APPEND_HEADER.pack(_APPEND_MAGIC, 1, len(meta)), meta, payload))


# The metadata fields in the order model_dump_json writes them: `failure_value` writes the
# same JSON as long as AppendMeta has these fields, and declines (None) otherwise.
_FAILURE_FIELDS = (
    "v",
    "sample_id",
    "url",
    "caption",
    "key",
    "extra",
    "status",
    "error_message",
    "item_id",
    "ext",
    "mime",
    "width",
    "height",
    "original_width",
    "original_height",
    "original_size",
    "exif",
    "hashes",
    "staged",
    "fetched_at",
)
_FAILURE_FAST = tuple(AppendMeta.model_fields) == _FAILURE_FIELDS
_FAILURE_TAIL = (
    '"item_id":null,"ext":null,"mime":null,"width":null,"height":null,"original_width":null,'
    '"original_height":null,"original_size":null,"exif":null,"hashes":{},"staged":null,'
)


def _plain(text: str) -> bool:
    """Text JSON writes as it is between quotes (printable ASCII, no quote or backslash)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def failure_value(
    row: UrlRow,
    error: str,
    status: SampleStatus = SampleStatus.FAILED_TO_DOWNLOAD,
    fetched_at: float | None = None,
) -> bytes | None:
    """`encode_append(AppendRecord.failure(row, error, status))`, byte for byte, without
    building the pydantic models (most of what a failed row costs a fetch worker); None when
    the row is not one this shortcut writes exactly (extra columns, text JSON would escape,
    an unusual time), and the caller takes the general way. tests/segments/test_records.py
    checks it against the models."""
    sample_id, url, caption, key = row.sample_id, row.url, row.caption, row.metadata_key
    now = time.time() if fetched_at is None else fetched_at
    if (
        not _FAILURE_FAST
        or row.extra
        or not (1.0 <= now < 1e15)  # where float repr is pydantic's number exactly
        # One check of the texts put together: each is plain if and only if the whole is.
        or not _plain(f"{sample_id}{url}{error}{caption or ''}{key or ''}")
    ):
        return None
    caption_json = "null" if caption is None else '"' + caption + '"'
    key_json = "null" if key is None else '"' + key + '"'
    meta = (
        f'{{"v":1,"sample_id":"{sample_id}","url":"{url}","caption":{caption_json},'
        f'"key":{key_json},"extra":{{}},"status":"{STATUS_TEXT[status]}","error_message":'
        f'"{error}",{_FAILURE_TAIL}"fetched_at":{now!r}}}'
    ).encode("ascii")
    return _APPEND_HEADER.pack(_APPEND_MAGIC, 1, len(meta)) + meta


def decode_append(value: bytes) -> AppendRecord:
    if len(value) < _APPEND_HEADER.size:
        raise MalformedRecord("APPEND value shorter than its header")
    magic, version, meta_len = _APPEND_HEADER.unpack_from(value)
    if magic != _APPEND_MAGIC or version != 1:
        raise MalformedRecord(f"not an {APPEND_SERIALIZER} record (magic={magic!r} v={version})")
    start = _APPEND_HEADER.size
    try:
        meta = AppendMeta.model_validate_json(value[start : start + meta_len])
    except ValueError as e:
        raise MalformedRecord(f"invalid APPEND metadata: {e}") from e
    payload = value[start + meta_len :]
    return AppendRecord(meta=meta, payload=bytes(payload) if payload else None)


# --------------------------------------------------------------------------- SEGMENT_CLOSED topic


class SegmentClosed(BaseModel):
    """Announced after a segment's index transaction committed: the segment is now visible."""

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    segment_id: str
    uri: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    epoch: int
    item_count: int
    sample_count: int
    bytes: int
    sha256: str
    created_at: float

    # `bytes` is a field here (the segment's size), so the builtin is spelled out below.
    def encode(self) -> builtins.bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def decode(cls, value: builtins.bytes) -> SegmentClosed:
        try:
            return cls.model_validate_json(value)
        except ValueError as e:
            raise MalformedRecord(f"invalid SEGMENT_CLOSED event: {e}") from e
