"""librdkafka reports an unreachable broker on every reconnect attempt of every client, many
times a second: the Kafka adapter's log lets one line through per 30 s, with the count."""

from __future__ import annotations

import logging
import time

import pytest

from i2d_segments.bus import kafka


def test_a_repeated_broker_error_is_one_line_with_its_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = kafka._librdkafka_log
    caplog.set_level(logging.INFO)
    for ms in range(50):  # the same error, but for the numbers in it
        logger.error("FAIL [rdkafka#%d]: Connect to 127.0.0.1:1 failed (after %dms)", 1, ms)
    logger.error("another error")
    logger.info("assigned urls [0]")
    logger.info("assigned urls [1]")  # information is never held back
    assert [r.getMessage() for r in caplog.records] == [
        "FAIL [rdkafka#1]: Connect to 127.0.0.1:1 failed (after 0ms)",
        "another error",
        "assigned urls [0]",
        "assigned urls [1]",
    ]
    later = time.monotonic() + 31
    monkeypatch.setattr(kafka.time, "monotonic", lambda: later)
    logger.error("FAIL [rdkafka#%d]: Connect to 127.0.0.1:1 failed (after %dms)", 1, 99)
    assert caplog.records[-1].getMessage() == (
        "FAIL [rdkafka#1]: Connect to 127.0.0.1:1 failed (after 99ms) "
        "(49 more like it in the last 30s)"
    )
