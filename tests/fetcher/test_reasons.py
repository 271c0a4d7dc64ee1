"""Failure reasons: every error message a real download produces folds into a named reason
(never `other`), and `img2dataset_fetcher_failures_total{reason}` counts exactly the failed
rows the index records, reason by reason."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from prometheus_client import REGISTRY

from i2d_cli.main import main
from i2d_fetcher.reasons import REASONS, reason_of
from i2d_imageserver import ImageServer
from i2d_segments.index.sqlite import SqliteIndex

# One of each fault the image server injects that ends as a failure, with the download
# options below (4 MB caps the gzip bomb, 64 MB of zeros, and lets the PNG bomb in).
FAULTS = ("missing", "error", "unavailable", "truncated", "reset", "notimage", "noai")
FAULTS_TOO = ("gzipbomb", "drip")


def failures_by_reason() -> Counter[str]:
    return Counter(
        {
            reason: REGISTRY.get_sample_value(
                "img2dataset_fetcher_failures_total", {"reason": reason}
            )
            or 0.0
            for reason in REASONS
        }
    )


def test_every_failure_of_a_real_download_has_a_named_reason(tmp_path: Path) -> None:
    with ImageServer() as images:
        urls = [images.url_for(7000 + n, 120, 90, fault=f) for n, f in enumerate(FAULTS)]
        urls += [images.url_for(7100 + n, 120, 90, fault=f) for n, f in enumerate(FAULTS_TOO)]
        urls.append(images.url_for(7150, fault="bomb"))  # its default size: 20000x20000
        urls += ["ftp://127.0.0.1/x.jpg", "http://127.0.0.2:9/blocked.jpg", "not a url"]
        urls += [images.url_for(7200 + n, 120, 90) for n in range(3)]  # and some successes
        (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
        before = failures_by_reason()
        rc = main(
            [
                "download",
                f"--url_list={tmp_path / 'urls.txt'}",
                f"--output_folder={tmp_path / 'out'}",
                "--processes_count=1",
                "--progress=False",
                "--allowed_networks=127.0.0.1/32",  # the local image server, not 127.0.0.2
                "--timeout=3",  # the dripping body takes ~20 s
                "--max_body_bytes=4000000",
            ]
        )
        after = failures_by_reason()
    assert rc == 0
    index = SqliteIndex(tmp_path / "out" / "index.sqlite")
    try:
        errors = index.error_counts()
    finally:
        index.close()
    assert sum(errors.values()) == len(urls) - 3
    recorded: Counter[str] = Counter()
    for message, n in errors.items():
        assert reason_of(message) != "other", message
        recorded[reason_of(message)] += n
    assert after - before == recorded
    assert {"http_4xx", "http_5xx", "robots", "not_an_image", "blocked_address"} <= set(recorded)
    assert {"decompression_bomb", "too_large", "timeout", "invalid_url"} <= set(recorded)


def test_reasons_are_a_fixed_set_matched_from_the_start_of_the_message() -> None:
    assert reason_of("HTTP Error 404: Not Found") == "http_4xx"
    assert reason_of("HTTP Error 429: Too Many Requests") == "http_429"
    assert reason_of("connect timed out after 5s") == reason_of("timed out after 10s")
    # Only the start counts: a reason's words later in a message do not make it that reason.
    assert reason_of("invalid bounding box [1, 2]: expected [x0, y0, x1, y1]") == "invalid_bbox"
    assert reason_of("ValueError: hash mismatch somewhere") == "other"
    assert reason_of(None) == reason_of("") == "other"
    assert len(set(REASONS)) == len(REASONS)
