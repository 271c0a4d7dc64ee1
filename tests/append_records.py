"""APPEND records made to order for appender tests: numbered successes (item_id = sha256 of
the "original" bytes, the stored payload different from them, as after a resize) and
numbered failures."""

from __future__ import annotations

import hashlib

from i2d_segments.records import AppendMeta, AppendRecord, SampleStatus


def success(n: int, content: bytes | None = None) -> AppendRecord:
    original = content if content is not None else f"original-{n}".encode()
    item_id = hashlib.sha256(original).hexdigest()
    return AppendRecord(
        meta=AppendMeta(
            sample_id=f"s{n}",
            url=f"http://127.0.0.1/img/{n}.jpg",
            caption=f"caption {n}",
            status=SampleStatus.SUCCESS,
            item_id=item_id,
            ext="jpg",
            mime="image/jpeg",
            width=8,
            height=8,
            original_width=16,
            original_height=16,
            hashes={"sha256": item_id},
            extra={"extra_col": n},
        ),
        # Stored bytes differ from the original, as after a resize: item_id != data_sha256.
        payload=b"\xff\xd8 resized " + original,
    )


def failure(n: int, sample_id: str | None = None) -> AppendRecord:
    return AppendRecord(
        meta=AppendMeta(
            sample_id=sample_id or f"f{n}",
            url=f"http://127.0.0.1/missing/{n}",
            status=SampleStatus.FAILED_TO_DOWNLOAD,
            error_message="404 Not Found",
        )
    )
