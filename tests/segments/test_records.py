"""The records on the bus: what a `urls` record may carry, and the metadata it turns into."""

from __future__ import annotations

import json

from i2d_segments.records import AppendMeta, SampleStatus, parse_url_value


def test_extra_fields_of_a_urls_record_never_replace_the_rows_own_metadata() -> None:
    # kafka-console-producer may send any JSON: its fields travel as extra columns
    row = parse_url_value(
        json.dumps(
            {
                "url": "http://127.0.0.1/a.jpg",
                "status": "ok",
                "width": 1,
                "sample_id": "x",
                "sha256": "f00",
                "license": "cc0",
            }
        )
    )
    assert row is not None and row.extra["status"] == "ok"
    meta = AppendMeta(
        sample_id=row.sample_id,
        url=row.url,
        extra=row.extra,
        status=SampleStatus.SUCCESS,
        width=256,
        hashes={"sha256": "abc"},
    )
    out = meta.sample_json()
    assert (out["status"], out["width"], out["sha256"]) == ("success", 256, "abc")
    # "sample_id" is the one field that is not an extra column: the row's identity, as
    # `enqueue` writes it (its place in its list).
    assert out["sample_id"] == row.sample_id == "x" and "sample_id" not in row.extra
    assert out["license"] == "cc0"  # the other extra columns are kept
